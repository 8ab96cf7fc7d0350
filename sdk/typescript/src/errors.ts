/**
 * Typed errors for what the Pingvas API answers, in place of a raw ConnectError: the same
 * classes as the Python SDK's `pingvas.errors`. Every error the server sends is a
 * `google.rpc.Status` with one `ErrorInfo` (a stable UPPER_SNAKE `reason`), a `BadRequest` for
 * invalid input and a `RetryInfo` for a refused request rate, in `grpc-status-details-bin`;
 * `fromConnectError` reads them into the class that names the case:
 *
 *     try { await client.generations.create({ prompt: "a fox", width: 60 }); }
 *     catch (error) {
 *       if (error instanceof InvalidArgument) for (const v of error.fieldViolations) console.log(v.field);
 *     }
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** One invalid field of a request: its path (e.g. `generation.width`) and what is wrong. */
export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * Base of every error the SDK throws for an API call. `code` is the gRPC status code name
 * ("NOT_FOUND"), or GENERATION_FAILED / GENERATION_CANCELLED for a generation that ended without
 * an image; `reason` is the ErrorInfo's reason ("INSUFFICIENT_CREDITS"; empty when the server
 * sent none) and `metadata` its metadata.
 */
export class PingvasError extends Error {
  static readonly defaultCode: string = "UNKNOWN";
  readonly code: string;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;

  constructor(
    message: string,
    options: { code?: string; reason?: string; domain?: string; metadata?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = new.target.name;
    this.code = options.code ?? (new.target as typeof PingvasError).defaultCode;
    this.reason = options.reason ?? "";
    this.domain = options.domain ?? "";
    this.metadata = { ...(options.metadata ?? {}) };
  }
}

/** The request is invalid; `fieldViolations` names each field to fix. */
export class InvalidArgument extends PingvasError {
  static override readonly defaultCode = "INVALID_ARGUMENT";
  fieldViolations: FieldViolation[] = [];
}

/** The resource does not exist, or is not the caller's. */
export class NotFound extends PingvasError {
  static override readonly defaultCode = "NOT_FOUND";
}

/** The API key or access token is missing, invalid, revoked or expired. */
export class Unauthenticated extends PingvasError {
  static override readonly defaultCode = "UNAUTHENTICATED";
}

/** The caller may not do this (e.g. an API key without the method's scope). */
export class PermissionDenied extends PingvasError {
  static override readonly defaultCode = "PERMISSION_DENIED";
}

/** The request cannot be done in the resource's current state. */
export class FailedPrecondition extends PingvasError {
  static override readonly defaultCode = "FAILED_PRECONDITION";
}

/** The account's available credits do not cover the generation (HTTP 402 over REST). */
export class InsufficientCredits extends FailedPrecondition {
  /** The credits the generation would hold, when the server said so. */
  get needed(): number | undefined {
    return asInt(this.metadata["needed"]);
  }
  /** The credits left, when the server said so. */
  get available(): number | undefined {
    return asInt(this.metadata["available"]);
  }
}

/** A limit was reached; `retryAfter` is the seconds the server asks to wait (its RetryInfo). */
export class ResourceExhausted extends PingvasError {
  static override readonly defaultCode = "RESOURCE_EXHAUSTED";
  retryAfter: number | undefined = undefined;
}

/** More requests than the plan's rate allows; `retryAfter` says when the window ends. */
export class RateLimited extends ResourceExhausted {}

/** The service could not be reached or is restarting; the call may be retried. */
export class Unavailable extends PingvasError {
  static override readonly defaultCode = "UNAVAILABLE";
}

/** The call did not finish within its deadline. */
export class DeadlineExceeded extends PingvasError {
  static override readonly defaultCode = "DEADLINE_EXCEEDED";
}

/** An unexpected server failure; the message carries the incident id for support. */
export class Internal extends PingvasError {
  static override readonly defaultCode = "INTERNAL";
}

/** `generate()`'s generation ended FAILED; nothing was charged. */
export class GenerationFailed extends PingvasError {
  constructor(
    message: string,
    readonly generationId: string,
    readonly failureCode: string,
    readonly incidentId: string,
  ) {
    super(message, { code: "GENERATION_FAILED", reason: failureCode });
  }
}

/** `generate()`'s generation was cancelled before its image was made. */
export class GenerationCancelled extends PingvasError {
  constructor(
    message: string,
    readonly generationId: string,
  ) {
    super(message, { code: "GENERATION_CANCELLED" });
  }
}

type ErrorClass = new (message: string, options: ConstructorParameters<typeof PingvasError>[1]) => PingvasError;

const BY_CODE = new Map<Code, ErrorClass>([
  [Code.InvalidArgument, InvalidArgument],
  [Code.OutOfRange, InvalidArgument],
  [Code.NotFound, NotFound],
  [Code.Unauthenticated, Unauthenticated],
  [Code.PermissionDenied, PermissionDenied],
  [Code.FailedPrecondition, FailedPrecondition],
  [Code.ResourceExhausted, ResourceExhausted],
  [Code.Unavailable, Unavailable],
  [Code.DeadlineExceeded, DeadlineExceeded],
  [Code.Internal, Internal],
]);
const BY_REASON = new Map<string, ErrorClass>([
  ["INSUFFICIENT_CREDITS", InsufficientCredits],
  ["RATE_LIMITED", RateLimited],
]);

/** gRPC's status code names, as the Python SDK and the server spell them. */
function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The typed error for anything a call threw (a ConnectError, or a transport failure). */
export function fromConnectError(raw: unknown): PingvasError {
  if (raw instanceof PingvasError) return raw;
  const error = ConnectError.from(raw);
  const info = error.findDetails(ErrorInfoSchema)[0];
  const kind = (info && BY_REASON.get(info.reason)) ?? BY_CODE.get(error.code) ?? PingvasError;
  const typed = new kind(error.rawMessage, {
    code: codeName(error.code),
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: info?.metadata ?? {},
  });
  if (typed instanceof InvalidArgument) {
    typed.fieldViolations = (error.findDetails(BadRequestSchema)[0]?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    }));
  }
  if (typed instanceof ResourceExhausted) {
    const delay = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
    if (delay) typed.retryAfter = Number(delay.seconds) + delay.nanos / 1e9;
  }
  return typed;
}

function asInt(value: string | undefined): number | undefined {
  if (value === undefined || !/^-?\d+$/.test(value)) return undefined;
  return Number(value);
}
