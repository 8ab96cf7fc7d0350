// The TypeScript SDK against the real mesh, over native gRPC (connect-node, HTTP/2 h2c to Envoy).
// Run by tests/sdk/test_typescript_sdk.py, which starts the mesh and passes, in the environment:
// PINGVAS_GATEWAY_URL, PINGVAS_CUT_STREAM_URL (a hop that cuts the next WatchGeneration after two
// events), PINGVAS_BROKE_TOKEN (a user whose credits were all taken back) and PINGVAS_INIT_PNG (a
// 64x64 PNG file to upload).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  InsufficientCredits,
  InvalidArgument,
  NotFound,
  PingvasClient,
  RetryPolicy,
  Unauthenticated,
} from "../dist/index.js";
import { GenerationMode } from "../dist/gen/pingvas/generation/v1/generation_resources_pb.js";
import { createNodeTransport } from "../dist/node.js";

const gatewayUrl = process.env.PINGVAS_GATEWAY_URL;
const quickRetries = new RetryPolicy({ maxAttempts: 5, initialBackoff: 0.05, maxBackoff: 0.2 });

async function signedIn(baseUrl = gatewayUrl) {
  const anonymous = new PingvasClient(createNodeTransport(gatewayUrl));
  const session = await anonymous.call((call) =>
    anonymous.userService.devLogin({ email: `ts-sdk-${randomUUID().slice(0, 8)}@example.com` }, call),
  );
  return new PingvasClient(createNodeTransport(baseUrl), { bearer: session.accessToken, retry: quickRetries });
}

async function collect(iterator) {
  const events = [];
  for await (const event of iterator) events.push(event);
  return events;
}

// What a watch promises, resumed or not: each event once, in order, `queued`, `started` and the
// terminal event never lost, each step under its own number (a slow reader may see only the
// newest progress of several).
function assertWholeAndInOrder(events, steps) {
  const distinct = events.filter((e, n) => n === 0 || e.sequence !== events[n - 1].sequence);
  const sequences = distinct.map((e) => e.sequence);
  assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => (a < b ? -1 : 1)));
  assert.deepEqual(
    distinct.filter((e) => e.kind !== "progress").map((e) => e.kind),
    ["queued", "started", "succeeded"],
  );
  assert.equal(distinct.at(-1).sequence, BigInt(3 + steps));
  const progress = distinct.filter((e) => e.kind === "progress");
  assert.ok(progress.length > 0);
  for (const e of progress) assert.equal(e.sequence, BigInt(2 + e.step));
}

test("generate() yields every event through the succeeded one, with JPEG previews", async () => {
  const client = await signedIn();
  const events = await collect(client.generate({ prompt: "a heron", width: 64, height: 64, steps: 3, seed: 7 }));
  assertWholeAndInOrder(events, 3);
  for (const e of events.filter((e) => e.kind === "progress")) {
    assert.equal(e.previewMimeType, "image/jpeg");
    assert.deepEqual([...e.preview.slice(0, 2)], [0xff, 0xd8]);
  }
  const done = events.at(-1);
  assert.equal(done.seed, 7n);
  const image = await fetch(new URL(done.imageUrl, gatewayUrl));
  assert.equal(image.status, 200);
  assert.deepEqual([...new Uint8Array(await image.arrayBuffer()).slice(1, 4)], [0x50, 0x4e, 0x47]); // PNG
  const stored = await client.getGeneration(done.generationId);
  assert.equal(stored.prompt, "a heron");
});

test("errors are typed from the server's rich status", async () => {
  const client = await signedIn();
  const invalid = await client.createGeneration({ prompt: "a fox", width: 60, height: 64, steps: 1 }).catch((e) => e);
  assert.ok(invalid instanceof InvalidArgument, String(invalid));
  assert.equal(invalid.code, "INVALID_ARGUMENT");
  assert.deepEqual(invalid.fieldViolations.map((v) => v.field), ["generation.width"]);

  const missing = await client.getGeneration(randomUUID()).catch((e) => e);
  assert.ok(missing instanceof NotFound, String(missing));
  assert.equal(missing.reason, "NOT_FOUND");

  const broke = new PingvasClient(createNodeTransport(gatewayUrl), { bearer: process.env.PINGVAS_BROKE_TOKEN });
  const short = await collect(broke.generate({ prompt: "a fox", width: 64, height: 64, steps: 1 })).catch((e) => e);
  assert.ok(short instanceof InsufficientCredits, String(short));
  assert.equal(short.code, "FAILED_PRECONDITION");
  assert.equal(short.available, 0);
  assert.ok(short.needed > 0);

  const stranger = new PingvasClient(createNodeTransport(gatewayUrl), { bearer: "not-a-token" });
  const refused = await stranger.getGeneration(randomUUID()).catch((e) => e);
  assert.ok(refused instanceof Unauthenticated, String(refused));
});

test("a watch whose stream is cut resumes after the last event it saw", async () => {
  const client = await signedIn(process.env.PINGVAS_CUT_STREAM_URL);
  const generation = await client.createGeneration({ prompt: "a kestrel", width: 64, height: 64, steps: 4 });
  const events = await collect(client.watch(generation.id));
  assertWholeAndInOrder(events, 4);
});

test("an uploaded PNG is the init image of an img2img generation", async () => {
  const client = await signedIn();
  const uploadId = await client.createUpload(readFileSync(process.env.PINGVAS_INIT_PNG), "image/png");
  const created = await client.createGeneration({
    prompt: "a fox, oil painting",
    initImageId: uploadId,
    strength: 0.6,
    steps: 2,
    sampler: "euler",
  });
  const stored = await client.getGeneration(created.id);
  assert.deepEqual(
    [stored.initImageId, stored.mode, stored.sampler, stored.width, stored.height],
    [uploadId, GenerationMode.IMAGE_TO_IMAGE, "euler", 64, 64],
  );
  assert.ok(Math.abs(stored.strength - 0.6) < 1e-6, String(stored.strength));
});

test("a batch from a template gets consecutive seeds", async () => {
  const client = await signedIn();
  const batch = await client.batchCreateGenerations({ prompt: "a lighthouse", width: 64, height: 64, steps: 1, seed: 11 }, 3);
  assert.deepEqual(batch.map((g) => g.seed), [11n, 12n, 13n]);
  const stored = await Promise.all(batch.map((g) => client.getGeneration(g.id)));
  assert.deepEqual(stored.map((g) => [g.id, g.seed, g.prompt]), batch.map((g) => [g.id, g.seed, "a lighthouse"]));
});

test("a bad upload and an unaffordable batch throw typed errors", async () => {
  const client = await signedIn();
  const wrongType = await client.createUpload(readFileSync(process.env.PINGVAS_INIT_PNG), "image/gif").catch((e) => e);
  assert.ok(wrongType instanceof InvalidArgument, String(wrongType));
  assert.deepEqual(wrongType.fieldViolations.map((v) => v.field), ["content_type"]);

  const broke = new PingvasClient(createNodeTransport(gatewayUrl), { bearer: process.env.PINGVAS_BROKE_TOKEN });
  const short = await broke
    .batchCreateGenerations([1, 2].map((n) => ({ prompt: `a fox ${n}`, width: 64, height: 64, steps: 1 })))
    .catch((e) => e);
  assert.ok(short instanceof InsufficientCredits, String(short));
  assert.equal(short.available, 0);
});
