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
  PermissionDenied,
  type PingvasError,
  ResourceExhausted,
  Unavailable,
} from "./errors.js";
import { eventFromResponse, type GenerationEvent, isTerminal } from "./events.js";
import { ApiKeyService } from "./gen/pingvas/user/v1/api_key_service_pb.js";
import { BillingService } from "./gen/pingvas/billing/v1/billing_service_pb.js";
import { GalleryService } from "./gen/pingvas/gallery/v1/gallery_service_pb.js";
import {
  type Generation,
  GenerationSchema,
  LoraWeightSchema,
} from "./gen/pingvas/generation/v1/generation_resources_pb.js";
import {
  type CreateGenerationRequest,
  CreateGenerationRequestSchema,
  GenerationService,
} from "./gen/pingvas/generation/v1/generation_service_pb.js";
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
  /** A sampler by its InvokeAI name (`euler`, `dpmpp_2m`, ...), one the model allows. */
  sampler?: string;
  /** How far an init image is repainted, 0 to 1 (img2img and inpainting). */
  strength?: number;
  /** The init image: an upload id (`createUpload`) or one of the caller's gallery image ids. */
  initImageId?: string;
  /** The inpainting mask (white is repainted), the init image's size: an upload or image id. */
  maskImageId?: string;
  /** Up to 5 LoRAs of the model's family, by catalog id, each with its weight. */
  loras?: { name: string; weight: number }[];
  /** Start from a gallery image's parameters ("use again"); the options given override them. */
  fromImageId?: string;
  /**
   * The idempotency key; a new one per create unless the caller brings its own. A batch's items
   * must have none.
   */
  requestId?: string;
}

/** The request of one generation; unset options are left to the server's documented defaults. */
function generationRequest(options: CreateGenerationOptions, requestId: string): CreateGenerationRequest {
  const generation = create(GenerationSchema, {
    prompt: options.prompt,
    negativePrompt: options.negativePrompt ?? "",
    model: options.model ?? "",
    width: options.width,
    height: options.height,
    steps: options.steps,
    seed: options.seed === undefined ? undefined : BigInt(options.seed),
    guidance: options.guidance,
    sampler: options.sampler ?? "",
    strength: options.strength,
    initImageId: options.initImageId ?? "",
    maskImageId: options.maskImageId ?? "",
    loras: (options.loras ?? []).map(({ name, weight }) => create(LoraWeightSchema, { name, weight })),
  });
  return create(CreateGenerationRequestSchema, { generation, requestId, fromImageId: options.fromImageId ?? "" });
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

  /**
   * Any unary call of the generated clients, with the bearer, deadline, retries and typed errors.
   * A call that is not `repeatable` (one without an idempotency key that creates something) is
   * not retried after UNAVAILABLE, which it may have been made despite.
   */
  call<T>(attempt: (options: CallOptions) => Promise<T>, options: { repeatable?: boolean } = {}): Promise<T> {
    return callWithRetries(this.retry, () => attempt(this.callOptions()), options);
  }

  createGeneration(options: CreateGenerationOptions): Promise<Generation> {
    const request = generationRequest(options, options.requestId ?? crypto.randomUUID());
    return this.call((call) => this.generationService.createGeneration(request, call));
  }

  /**
   * Creates 1 to 4 generations at once, all or none, in order: a list of options, or one and a
   * `count` of copies of it with consecutive seeds (its seed, or the server's choice, then +1,
   * ...). Throws InsufficientCredits when the credits do not cover them all (nothing is held). A
   * batch has no idempotency key, so a call whose reply is lost (UNAVAILABLE) is not retried.
   */
  async batchCreateGenerations(
    requests: CreateGenerationOptions | CreateGenerationOptions[],
    count?: number,
  ): Promise<Generation[]> {
    let items: CreateGenerationOptions[];
    if (Array.isArray(requests)) {
      if (count !== undefined) throw new TypeError("count applies to one template, not to a list of requests");
      items = requests;
    } else {
      // Only the first copy names the seed: the server gives each item without one the first
      // item's seed plus its index.
      const copies = count ?? 1;
      items = copies > 0 ? [requests, ...Array<CreateGenerationOptions>(copies - 1).fill({ ...requests, seed: undefined })] : [];
    }
    const batch = { requests: items.map((item) => generationRequest(item, item.requestId ?? "")) };
    const response = await this.call((call) => this.generationService.batchCreateGenerations(batch, call), {
      repeatable: false,
    });
    return response.generations;
  }

  /**
   * Uploads an input image (`image/png`, `image/jpeg` or `image/webp`, at most 10 MB) and returns
   * its upload id, for `initImageId` or `maskImageId`: CreateUpload, then a PUT of the bytes to
   * the presigned URL it hands out, with the declared content type. A type or size the API does
   * not take throws InvalidArgument naming `content_type` or `size_bytes`.
   */
  async createUpload(data: Uint8Array | Blob, contentType: string): Promise<string> {
    const body = data instanceof Blob ? data : new Blob([new Uint8Array(data)]);
    const upload = await this.call((call) =>
      this.generationService.createUpload({ contentType, sizeBytes: BigInt(body.size) }, call),
    );
    let response: Response;
    try {
      // A presigned URL authorizes itself: no bearer.
      response = await fetch(upload.uploadUrl, { method: "PUT", body, headers: { "content-type": contentType } });
    } catch (error) {
      throw new Unavailable(`could not upload the image: ${String(error)}`);
    }
    if (!response.ok) {
      // S3 answers 403 to an expired URL or to bytes that are not what was declared.
      const kind = response.status === 403 ? PermissionDenied : Unavailable;
      throw new kind(`could not upload the image: HTTP ${response.status}`, {
        metadata: { http_status: String(response.status) },
      });
    }
    return upload.id;
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


