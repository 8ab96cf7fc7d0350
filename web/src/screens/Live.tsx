// A generation, live: queue position, progress bar and the preview of each step, cancel, then
// the result. The last event seen is kept in this tab's sessionStorage, so a reload resumes the
// watch with `after_sequence` instead of replaying the log.
import { useEffect, useState } from "react";
import type { GenerationEvent } from "@pingvas/sdk/index";
import { GenerationState } from "@pingvas/sdk/gen/pingvas/generation/v1/generation_resources_pb.js";
import { client } from "../api";
import type { Navigate } from "../App";
import { ErrorNotice } from "../errors";

const STRIP_LENGTH = 8;
const lastSeenKey = (id: string) => `pingvas.watch.${id}`;

interface View {
  state: "waiting" | "queued" | "running" | "succeeded" | "failed" | "cancelled";
  position?: bigint;
  step?: number;
  totalSteps?: number;
  preview?: string;
  previews: number;
  // The latest steps' previews, a strip under the current one (object URLs, revoked when dropped).
  strip: { step: number; url: string }[];
  imageUrl?: string;
  message?: string;
}

export function Live({ generationId, navigate }: { generationId: string; navigate: Navigate }) {
  const [view, setView] = useState<View>({ state: "waiting", previews: 0, strip: [] });
  const [error, setError] = useState<unknown>();
  // Whether the watch stream has been asked for: the page first asks whether the generation has
  // already ended, and a generation that ends meanwhile is shown without a stream.
  const [watching, setWatching] = useState(false);
  const [resumedAfter] = useState(() => BigInt(sessionStorage.getItem(lastSeenKey(generationId)) ?? "0"));

  useEffect(() => {
    const abort = new AbortController();
    const urls = new Set<string>();
    const show = (event: GenerationEvent) => {
      sessionStorage.setItem(lastSeenKey(generationId), String(event.sequence));
      setView((before) => {
        switch (event.kind) {
          case "queued":
            return { ...before, state: "queued", position: event.position };
          case "started":
            return { ...before, state: "running" };
          case "progress": {
            const preview = URL.createObjectURL(new Blob([event.preview as BlobPart], { type: event.previewMimeType }));
            urls.add(preview);
            const strip = [...before.strip, { step: event.step, url: preview }];
            for (const dropped of strip.splice(0, Math.max(0, strip.length - STRIP_LENGTH))) {
              URL.revokeObjectURL(dropped.url);
              urls.delete(dropped.url);
            }
            return { ...before, state: "running", step: event.step, totalSteps: event.totalSteps, preview, strip, previews: before.previews + 1 };
          }
          case "succeeded":
            return { ...before, state: "succeeded", imageUrl: event.imageUrl };
          case "failed":
            return { ...before, state: "failed", message: `${event.reason}` };
          case "cancelled":
            return { ...before, state: "cancelled" };
          default:
            return before;
        }
      });
    };
    (async () => {
      // A finished generation's page shows how it ended without a stream.
      const generation = await client.getGeneration(generationId);
      switch (generation.state) {
        case GenerationState.SUCCEEDED:
          return setView((before) => ({ ...before, state: "succeeded", imageUrl: generation.imageUrl }));
        case GenerationState.FAILED:
          return setView((before) => ({ ...before, state: "failed", message: generation.failureReason }));
        case GenerationState.CANCELLED:
          return setView((before) => ({ ...before, state: "cancelled" }));
      }
      setWatching(true);
      for await (const event of client.watch(generationId, { afterSequence: resumedAfter, signal: abort.signal })) {
        show(event);
      }
    })().catch((e) => abort.signal.aborted || setError(e));
    return () => {
      abort.abort();
      for (const url of urls) URL.revokeObjectURL(url);
    };
  }, [generationId, resumedAfter]);

  const cancel = () => void client.cancelGeneration(generationId).catch(setError);
  const percent = view.totalSteps ? Math.round(((view.step ?? 0) / view.totalSteps) * 100) : 0;
  const live = view.state === "waiting" || view.state === "queued" || view.state === "running";
  return (
    <div className="stack" data-state={view.state} data-resumed-after={String(resumedAfter)} data-watching={String(watching)} data-previews={view.previews}>
      <h1>Generation</h1>
      {view.state === "queued" && <p data-testid="queue-position">Position in queue: {String(view.position)}</p>}
      {(view.state === "running" || view.step !== undefined) && (
        <>
          <div className="progress" role="progressbar" aria-valuenow={percent} aria-valuemin={0} aria-valuemax={100}>
            <div style={{ width: `${percent}%` }} />
          </div>
          <p data-testid="step">
            Step {view.step ?? 0} of {view.totalSteps ?? "?"}
          </p>
        </>
      )}
      {view.state !== "succeeded" && view.preview && <img className="preview" alt="preview" src={view.preview} />}
      {view.strip.length > 0 && (
        <div className="strip" aria-label="Previews by step">
          {view.strip.map((frame) => (
            <img key={frame.url} alt={`step ${frame.step}`} data-step={frame.step} src={frame.url} />
          ))}
        </div>
      )}
      {view.state === "succeeded" && view.imageUrl && <img className="result" alt="result" src={view.imageUrl} />}
      {view.state === "succeeded" && <p data-testid="done">Done.</p>}
      {view.state === "failed" && <p className="notice error">Failed: {view.message}</p>}
      {view.state === "cancelled" && <p className="notice">Cancelled.</p>}
      {live && (
        <button className="danger" onClick={cancel}>
          Cancel
        </button>
      )}
      {!live && (
        <button className="secondary" onClick={() => navigate("/create")}>
          Create another
        </button>
      )}
      <ErrorNotice error={error} navigate={navigate} />
    </div>
  );
}
