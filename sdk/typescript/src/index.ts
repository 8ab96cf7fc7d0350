export * from "./errors.js";
export * from "./events.js";
export * from "./retries.js";
export * from "./client.js";
