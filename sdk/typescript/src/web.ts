/** The transport for browsers: gRPC-Web through the gateway (same origin unless told otherwise). */
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

export function createWebTransport(baseUrl = globalThis.location?.origin ?? "http://127.0.0.1:8080"): Transport {
  return createGrpcWebTransport({ baseUrl });
}
