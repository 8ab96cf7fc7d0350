/** The transport for Node: native gRPC over HTTP/2 (h2c to a local gateway, TLS to https URLs). */
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

export function createNodeTransport(baseUrl = "http://127.0.0.1:8080"): Transport {
  return createGrpcTransport({ baseUrl });
}
