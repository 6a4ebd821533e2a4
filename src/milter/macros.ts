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
    const m = new Map<string, string>();
    for (const [name, value] of macros) m.set(bare(name), value);
    this.#stages.set(stage, m);
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
    for (const s of ORDER.slice(ORDER.indexOf(stage) + 1)) this.#stages.delete(s);
  }

  /** Forgets every message stage; CONNECT and HELO macros stay. */
  clearMessage(): void {
    for (const s of MESSAGE_STAGES) this.#stages.delete(s);
  }

  clearAll(): void {
    this.#stages.clear();
  }
}
