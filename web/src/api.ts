// The console's one client: the TypeScript SDK over gRPC-Web to the page's own origin (the
// gateway). The access token lives in this module's memory only; the refresh token never
// reaches script (see session.ts).
import { createWebTransport } from "@pingvas/sdk/web";
import { PingvasClient, RetryPolicy } from "@pingvas/sdk/index";

let accessToken: string | undefined;

export function setAccessToken(token: string | undefined): void {
  accessToken = token;
}

export function hasAccessToken(): boolean {
  return accessToken !== undefined;
}

export const client = new PingvasClient(createWebTransport(), {
  bearer: () => accessToken,
  // A person waits: fewer, shorter retries than a batch job's, and a refused rate that asks
  // for more than a few seconds is shown (with when to try again) instead of waited out.
  retry: new RetryPolicy({ maxAttempts: 3, initialBackoff: 0.3, maxBackoff: 2, maxRetryAfter: 3 }),
});
