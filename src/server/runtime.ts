/**
 * The runtime seam (contract in runtime-api.ts): the runtime is detected
 * once, here, and its adapter serves the rest of src/server/. Nothing
 * outside src/server/ knows which runtime runs.
 * @module
 */
import type { Runtime } from "./runtime-api.ts";

// Each adapter loads only under its own runtime (in the Bun executable the
// Deno adapter stays an unloaded chunk).
export const runtime: Runtime = "Bun" in globalThis
  ? (await import("./runtime-bun.ts")).bunRuntime
  : "Deno" in globalThis
  ? (await import("./runtime-deno.ts")).denoRuntime
  : unsupported();

function unsupported(): never {
  throw new Error("exota-milter runs under Bun or Deno");
}
