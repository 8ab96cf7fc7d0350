// How an API error reads to a person: the field it names, out of credits with the way to more,
// or when to try again.
import { InsufficientCredits, InvalidArgument, PingvasError, ResourceExhausted } from "@pingvas/sdk/index";

export function fieldErrors(error: unknown): Record<string, string> {
  if (!(error instanceof InvalidArgument)) return {};
  return Object.fromEntries(error.fieldViolations.map((v) => [v.field.replace(/^generation\./, ""), v.description]));
}

export function ErrorNotice({ error, navigate }: { error: unknown; navigate: (path: string) => void }) {
  if (!error) return null;
  if (error instanceof InsufficientCredits) {
    return (
      <div className="notice error" role="alert" data-error="out-of-credits">
        <strong>Out of credits.</strong> This needs {error.needed ?? "more"} credits and {error.available ?? 0} are
        available.{" "}
        <a href="/account" onClick={(e) => (e.preventDefault(), navigate("/account"))}>
          Upgrade your plan
        </a>
      </div>
    );
  }
  if (error instanceof ResourceExhausted) {
    const after = error.retryAfter;
    return (
      <div className="notice error" role="alert" data-error="rate-limited">
        Too many requests. {after !== undefined ? `Try again in ${Math.ceil(after)} s.` : "Try again shortly."}
      </div>
    );
  }
  if (error instanceof InvalidArgument) {
    return (
      <div className="notice error" role="alert" data-error="invalid">
        {error.fieldViolations.length
          ? error.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ")
          : error.message}
      </div>
    );
  }
  const message = error instanceof PingvasError || error instanceof Error ? error.message : String(error);
  return (
    <div className="notice error" role="alert">
      {message}
    </div>
  );
}
