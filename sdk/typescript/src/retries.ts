/**
 * Retries, by the Python SDK's rules: exponential backoff with full jitter on UNAVAILABLE and
 * RESOURCE_EXHAUSTED, waiting at least what the server asks for in a RetryInfo. Reads, cancels
 * and deletes are idempotent by the contract, and a create carries an idempotency key
 * (`requestId`) made once per create; a batch create has none and is not retried after
 * UNAVAILABLE.
 */
import { fromConnectError, PingvasError, ResourceExhausted, Unavailable } from "./errors.js";

/**
 * How often and how long a failed call is retried. Attempt n (from 1) failing with UNAVAILABLE
 * or RESOURCE_EXHAUSTED is followed by a random wait up to `initialBackoff * multiplier^(n-1)`
 * seconds, at most `maxBackoff`; a RetryInfo is waited for (plus up to a tenth) unless longer
 * than `maxRetryAfter`. After `maxAttempts` the last error is thrown.
 */
export class RetryPolicy {
  readonly maxAttempts: number;
  readonly initialBackoff: number;
  readonly maxBackoff: number;
  readonly multiplier: number;
  readonly maxRetryAfter: number;

  constructor(options: Partial<Pick<RetryPolicy, "maxAttempts" | "initialBackoff" | "maxBackoff" | "multiplier" | "maxRetryAfter">> = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.initialBackoff = options.initialBackoff ?? 0.5;
    this.maxBackoff = options.maxBackoff ?? 20;
    this.multiplier = options.multiplier ?? 2;
    this.maxRetryAfter = options.maxRetryAfter ?? 60;
  }

  /** Seconds to wait before attempt `attempt + 1` after `error`; undefined to give up. */
  delay(error: PingvasError, attempt: number): number | undefined {
    if (attempt >= this.maxAttempts || !(error instanceof Unavailable || error instanceof ResourceExhausted)) {
      return undefined;
    }
    if (error instanceof ResourceExhausted && error.retryAfter !== undefined) {
      if (error.retryAfter > this.maxRetryAfter) return undefined;
      return error.retryAfter * (1 + Math.random() / 10);
    }
    const ceiling = Math.min(this.maxBackoff, this.initialBackoff * this.multiplier ** (attempt - 1));
    return Math.random() * ceiling;
  }
}

export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}

/**
 * `attemptCall()`'s result, retried under `policy`; a failure throws a typed PingvasError. A call
 * that is not `repeatable` (a batch create, which has no idempotency key) is not retried after
 * UNAVAILABLE, since its first attempt may have been made; a RESOURCE_EXHAUSTED made nothing.
 */
export async function callWithRetries<T>(
  policy: RetryPolicy,
  attemptCall: () => Promise<T>,
  options: { repeatable?: boolean } = {},
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    let error: PingvasError;
    try {
      return await attemptCall();
    } catch (raw) {
      error = fromConnectError(raw);
    }
    const repeatable = options.repeatable ?? true;
    const wait = !repeatable && error instanceof Unavailable ? undefined : policy.delay(error, attempt);
    if (wait === undefined) throw error;
    await sleep(wait);
  }
}
