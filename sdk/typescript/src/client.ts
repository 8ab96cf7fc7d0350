/**
 * `PingvasClient`: the contract's Connect clients behind one transport and one bearer, with the
 * Python SDK's behaviour: typed errors, the same retry rules on every unary call, and
 * `generate()` / `generations.watch()` as async iterators of events that resume by themselves
 * after a dropped stream (with `afterSequence`, so nothing is repeated or lost).
 *
 * The transport says how calls travel: `createNodeTransport` (./node.ts, native gRPC over HTTP/2)
 * or `createWebTransport` (./web.ts, gRPC-Web from a browser).
 */
import { create } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type Transport } from "@connectrpc/connect";
import {
  DeadlineExceeded,

  fromConnectError,
  GenerationCancelled,
  GenerationFailed,
  type PingvasError,
  ResourceExhausted,
  Unavailable,
} from "./errors.js";
import { eventFromResponse, type GenerationEvent, isTerminal } from "./events.js";
import { ApiKeyService } from "./gen/pingvas/user/v1/api_key_service_pb.js";
import { BillingService } from "./gen/pingvas/billing/v1/billing_service_pb.js";
import { GalleryService } from "./gen/pingvas/gallery/v1/gallery_service_pb.js";
import { type Generation, GenerationSchema } from "./gen/pingvas/generation/v1/generation_resources_pb.js";
import { GenerationService } from "./gen/pingvas/generation/v1/generation_service_pb.js";
import { UserService } from "./gen/pingvas/user/v1/user_service_pb.js";
import { callWithRetries, RetryPolicy, sleep } from "./retries.js";

/** A unary call's deadline; the gateway caps a longer one at its own (30 s by default). */
export const DEFAULT_TIMEOUT_SECONDS = 30;
/** One watch stream's deadline; when it passes the watch resumes on a new stream. */
export const DEFAULT_WATCH_TIMEOUT_SECONDS = 300;

export interface ClientOptions {
  /** An API key or an access token, sent as a bearer; or a function asked before each call. */
  bearer?: string | (() => string | undefined);
  timeoutSeconds?: number;
  watchTimeoutSeconds?: number;
  retry?: RetryPolicy;
}

export interface CreateGenerationOptions {
  prompt: string;
  negativePrompt?: string;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  seed?: bigint | number;
  guidance?: number;
  /** The idempotency key; a new one per create unless the caller brings its own. */
  requestId?: string;
}

export class PingvasClient {
  readonly retry: RetryPolicy;
  readonly generationService: Client<typeof GenerationService>;
  readonly galleryService: Client<typeof GalleryService>;
  readonly userService: Client<typeof UserService>;
  readonly billingService: Client<typeof BillingService>;
  readonly apiKeyService: Client<typeof ApiKeyService>;
  private readonly bearer: () => string | undefined;
  private readonly timeoutMs: number;
  private readonly watchTimeoutMs: number;

  constructor(transport: Transport, options: ClientOptions = {}) {
    const bearer = options.bearer;
    this.bearer = typeof bearer === "function" ? bearer : () => bearer;
    this.timeoutMs = (options.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS) * 1000;
    this.watchTimeoutMs = (options.watchTimeoutSeconds ?? DEFAULT_WATCH_TIMEOUT_SECONDS) * 1000;
    if (this.timeoutMs <= 0 || this.watchTimeoutMs <= 0) {
      throw new RangeError("timeouts must be positive (every call has a deadline)");
    }
    this.retry = options.retry ?? new RetryPolicy();
    this.generationService = createClient(GenerationService, transport);
    this.galleryService = createClient(GalleryService, transport);
    this.userService = createClient(UserService, transport);
    this.billingService = createClient(BillingService, transport);
    this.apiKeyService = createClient(ApiKeyService, transport);
  }

  /** Options of one call: the bearer and a deadline. */
  callOptions(timeoutMs = this.timeoutMs, signal?: AbortSignal): CallOptions {
    const bearer = this.bearer();
    return { headers: bearer ? { authorization: `Bearer ${bearer}` } : {}, timeoutMs, signal };
  }

  /** Any unary call of the generated clients, with the bearer, deadline, retries and typed errors. */
  call<T>(attempt: (options: CallOptions) => Promise<T>): Promise<T> {
    return callWithRetries(this.retry, () => attempt(this.callOptions()));
  }

  createGeneration(options: CreateGenerationOptions): Promise<Generation> {
    const generation = create(GenerationSchema, {
      prompt: options.prompt,
      negativePrompt: options.negativePrompt ?? "",
      model: options.model ?? "",
      width: options.width,
      height: options.height,
      steps: options.steps,
      seed: options.seed === undefined ? undefined : BigInt(options.seed),
      guidance: options.guidance,
    });
    const requestId = options.requestId ?? crypto.randomUUID();
    return this.call((call) => this.generationService.createGeneration({ generation, requestId }, call));
  }

  getGeneration(generationId: string): Promise<Generation> {
    return this.call((call) => this.generationService.getGeneration({ generationId }, call));
  }

  cancelGeneration(generationId: string): Promise<Generation> {
    return this.call((call) => this.generationService.cancelGeneration({ generationId }, call));
  }

  /**
   * The generation's events after `afterSequence` through its terminal one. A stream that
   * drops (UNAVAILABLE), passes its deadline or is refused for a moment (RESOURCE_EXHAUSTED) is
   * reopened after the last sequence seen, under the retry policy; other errors are thrown.
   */
  async *watch(generationId: string, options: { afterSequence?: bigint; signal?: AbortSignal } = {}): AsyncGenerator<GenerationEvent> {
    let lastSequence = options.afterSequence ?? 0n;
    let failures = 0;
    for (;;) {
      let error: PingvasError;
      try {
        const stream = this.generationService.watchGeneration(
          { generationId, afterSequence: lastSequence },
          this.callOptions(this.watchTimeoutMs, options.signal),
        );
        for await (const response of stream) {
          failures = 0;
          if (response.sequence > lastSequence) lastSequence = response.sequence;
          const event = eventFromResponse(response);
          yield event;
          if (isTerminal(event)) return;
        }
        error = new Unavailable("the event stream ended before the generation did");
      } catch (raw) {
        if (options.signal?.aborted) throw raw;
        error = fromConnectError(raw);
        if (!(error instanceof Unavailable || error instanceof DeadlineExceeded || error instanceof ResourceExhausted)) {
          throw error;
        }
      }
      failures += 1;
      const retriedAs = error instanceof DeadlineExceeded ? new Unavailable(error.message) : error;
      const wait = this.retry.delay(retriedAs, failures);
      if (wait === undefined) throw error;
      await sleep(wait, options.signal);
    }
  }

  /**
   * Creates a generation and yields its events through the terminal one, resuming by itself;
   * ends normally after `succeeded`, throws GenerationFailed or GenerationCancelled otherwise.
   */
  async *generate(options: CreateGenerationOptions, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    const generation = await this.createGeneration(options);
    let terminal: GenerationEvent | undefined;
    for await (const event of this.watch(generation.id, { signal })) {
      terminal = event;
      yield event;
    }
    if (terminal?.kind === "failed") {
      throw new GenerationFailed(`generation ${generation.id} failed: ${terminal.reason}`, generation.id, terminal.code, terminal.incidentId);
    }
    if (terminal?.kind === "cancelled") {
      throw new GenerationCancelled(`generation ${generation.id} was cancelled`, generation.id);
    }
    if (terminal?.kind !== "succeeded") {
      throw new Unavailable(`the events of generation ${generation.id} ended without a result`);
    }
  }
}


