/**
 * A generation's events as a discriminated union on `kind`, one per `WatchGenerationResponse`
 * case. The contract's order: `queued` (again when the position changes, same `sequence`),
 * `started`, one `progress` per step, then exactly one terminal event (`succeeded`, `failed`
 * or `cancelled`).
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { WatchGenerationResponse } from "./gen/pingvas/generation/v1/generation_service_pb.js";

interface EventBase {
  /** The event's place in the generation's log, from 1. */
  sequence: bigint;
  generationId: string;
  time: Date | undefined;
}

export type GenerationEvent = EventBase &
  (
    | { kind: "queued"; position: bigint }
    | { kind: "started"; attempt: number }
    | { kind: "progress"; step: number; totalSteps: number; preview: Uint8Array; previewMimeType: string }
    | { kind: "succeeded"; imageUrl: string; thumbnailUrl: string; seed: bigint; gpuSeconds: number; creditsCharged: bigint }
    | { kind: "failed"; reason: string; code: string; incidentId: string }
    | { kind: "cancelled"; wasRunning: boolean }
    // A kind added to the contract after this SDK was built: still ordered, never terminal.
    | { kind: "unknown" }
  );

export function isTerminal(event: GenerationEvent): boolean {
  return event.kind === "succeeded" || event.kind === "failed" || event.kind === "cancelled";
}

export function eventFromResponse(response: WatchGenerationResponse): GenerationEvent {
  const base: EventBase = {
    sequence: response.sequence,
    generationId: response.generationId,
    time: response.time ? timestampDate(response.time) : undefined,
  };
  const event = response.event;
  switch (event.case) {
    case "queued":
      return { ...base, kind: "queued", position: event.value.position };
    case "started":
      return { ...base, kind: "started", attempt: event.value.attempt };
    case "progress":
      return {
        ...base,
        kind: "progress",
        step: event.value.step,
        totalSteps: event.value.totalSteps,
        preview: event.value.preview,
        previewMimeType: event.value.previewMimeType,
      };
    case "succeeded":
      return {
        ...base,
        kind: "succeeded",
        imageUrl: event.value.imageUrl,
        thumbnailUrl: event.value.thumbnailUrl,
        seed: event.value.seed,
        gpuSeconds: event.value.gpuSeconds,
        creditsCharged: event.value.creditsCharged,
      };
    case "failed":
      return { ...base, kind: "failed", reason: event.value.reason, code: event.value.code, incidentId: event.value.incidentId };
    case "cancelled":
      return { ...base, kind: "cancelled", wasRunning: event.value.wasRunning };
    default:
      return { ...base, kind: "unknown" };
  }
}
