/**
 * Macro values by the stage that sent them. Connection stages (CONNECT,
 * HELO) outlive messages; message stages are cleared when a message ends.
 * Names are stored without braces: `{cert_subject}` and `cert_subject` are
 * one macro, as are `i` and `{i}`.
 * @module
 */
import type { MacroCommandLetter } from "./types.ts";

/** Stages in the order an SMTP session reaches them; lookups search latest first. */
const ORDER: readonly MacroCommandLetter[] = ["C", "H", "M", "R", "T", "L", "N", "B", "E", "A", "U"];
const MESSAGE_STAGES: readonly MacroCommandLetter[] = ["M", "R", "T", "L", "N", "B", "E", "A"];

const bare = (name: string) => (name.length > 2 && name[0] === "{" && name[name.length - 1] === "}" ? name.slice(1, -1) : name);

export class MacroStore {
  #stages = new Map<MacroCommandLetter, Map<string, string>>();

  /** Replaces the macros of a stage, as libmilter does. */
  set(stage: MacroCommandLetter, macros: ReadonlyArray<readonly [string, string]>): void {
    // Maps are kept and cleared, not replaced: a message brings ~20 macro frames.
    let m = this.#stages.get(stage);
    if (m === undefined) this.#stages.set(stage, m = new Map<string, string>());
    else m.clear();
    for (let i = 0; i < macros.length; i++) {
      const [name, value] = macros[i]!;
      m.set(bare(name), value);
    }
  }

  get(name: string): string | undefined {
    const key = bare(name);
    for (let i = ORDER.length - 1; i >= 0; i--) {
      const v = this.#stages.get(ORDER[i]!)?.get(key);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** Forgets the stages after `stage` (a new MAIL keeps its own macros). */
  clearAfter(stage: MacroCommandLetter): void {
    for (let i = ORDER.indexOf(stage) + 1; i < ORDER.length; i++) this.#stages.get(ORDER[i]!)?.clear();
  }

  /** Forgets every message stage; CONNECT and HELO macros stay. */
  clearMessage(): void {
    for (const s of MESSAGE_STAGES) this.#stages.get(s)?.clear();
  }

  clearAll(): void {
    this.#stages.clear();
  }
}
