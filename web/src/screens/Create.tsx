import { useState } from "react";
import { client } from "../api";
import type { Navigate } from "../App";
import { ErrorNotice, fieldErrors } from "../errors";

const SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024"];

export function Create({ navigate }: { navigate: Navigate }) {
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const fields = fieldErrors(error);
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
          <input name="model" placeholder="the default model" />
          {fieldError("model")}
        </label>
        <label>
          Size
          <select name="size" defaultValue="64x64">
            {SIZES.map((size) => (
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
