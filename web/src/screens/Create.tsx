import { useEffect, useState } from "react";
import type { Model } from "@pingvas/sdk/gen/pingvas/generation/v1/generation_resources_pb.js";
import { client } from "../api";
import type { Navigate } from "../App";
import { ErrorNotice, fieldErrors } from "../errors";

const SIDES = [32, 64, 128, 256, 512, 768, 1024, 1536, 2048];

/** Square sizes the model accepts, its native one among them. */
function sizesOf(model: Model | undefined): string[] {
  if (!model) return ["64x64"];
  const sides = new Set([...SIDES.filter((side) => side >= model.minSize && side <= model.maxSize), model.nativeSize]);
  return [...sides].sort((a, b) => a - b).map((side) => `${side}x${side}`);
}

export function Create({ navigate }: { navigate: Navigate }) {
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const [models, setModels] = useState<Model[]>([]);
  const [modelId, setModelId] = useState("");
  const fields = fieldErrors(error);
  useEffect(() => {
    client.call((o) => client.generationService.listModels({ pageSize: 100 }, o)).then((reply) => {
      setModels(reply.models);
      setModelId(reply.models.find((m) => m.default)?.id ?? reply.models[0]?.id ?? "");
    }, setError);
  }, []);
  const model = models.find((m) => m.id === modelId);
  const fieldError = (name: string) =>
    fields[name] && (
      <span className="field-error" data-field={name}>
        {fields[name]}
      </span>
    );

  const submit = (form: HTMLFormElement) => {
    const data = new FormData(form);
    const text = (name: string) => String(data.get(name) ?? "").trim();
    const number = (name: string) => (text(name) === "" ? undefined : Number(text(name)));
    const [width, height] = text("size").split("x").map(Number);
    setBusy(true);
    setError(undefined);
    client
      .createGeneration({
        prompt: text("prompt"),
        negativePrompt: text("negativePrompt"),
        model: text("model"),
        width,
        height,
        steps: number("steps"),
        seed: text("seed") === "" ? undefined : BigInt(text("seed")),
        guidance: number("guidance"),
      })
      .then(
        (generation) => navigate(`/generations/${generation.id}`),
        (e) => (setError(e), setBusy(false)),
      );
  };

  return (
    <form className="stack" aria-label="Create" onSubmit={(e) => (e.preventDefault(), submit(e.currentTarget))}>
      <h1>Create</h1>
      <label>
        Prompt
        <textarea name="prompt" rows={3} required />
      </label>
      {fieldError("prompt")}
      <label>
        Negative prompt
        <textarea name="negativePrompt" rows={2} />
      </label>
      {fieldError("negative_prompt")}
      <div className="row">
        <label>
          Model
          <select name="model" value={modelId} onChange={(e) => setModelId(e.target.value)}>
            {models.map((m) => (
              <option key={m.id} value={m.id}>
                {m.id}
              </option>
            ))}
          </select>
          {fieldError("model")}
        </label>
        <label>
          Size
          <select name="size" key={modelId} defaultValue={model ? `${model.nativeSize}x${model.nativeSize}` : "64x64"}>
            {sizesOf(model).map((size) => (
              <option key={size}>{size}</option>
            ))}
          </select>
          {fieldError("width")}
          {fieldError("height")}
        </label>
        <label>
          Steps
          <input name="steps" type="number" defaultValue={20} />
          {fieldError("steps")}
        </label>
        <label>
          Seed
          <input name="seed" type="number" placeholder="random" />
          {fieldError("seed")}
        </label>
        <label>
          Guidance
          <input name="guidance" type="number" step="0.5" placeholder="default" />
          {fieldError("guidance")}
        </label>
      </div>
      <button type="submit" disabled={busy}>
        Generate
      </button>
      <ErrorNotice error={error} navigate={navigate} />
    </form>
  );
}
