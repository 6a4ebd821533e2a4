/**
 * Macro values by the stage that sent them. Connection stages (CONNECT,
 * HELO) outlive messages; message stages are cleared when a message ends.
 * Braces do not matter: `{cert_subject}` and `cert_subject` are one macro,
 * as are `i` and `{i}`.
 * @module
 */
import type { MacroCommandLetter } from "./types.ts";

/** Stages in the order an SMTP session reaches them; lookups search latest first. */
const ORDER: readonly MacroCommandLetter[] = ["C", "H", "M", "R", "T", "L", "N", "B", "E", "A", "U"];
const MESSAGE_STAGES: readonly MacroCommandLetter[] = ["M", "R", "T", "L", "N", "B", "E", "A"];

const bare = (name: string) => (name.length > 2 && name[0] === "{" && name[name.length - 1] === "}" ? name.slice(1, -1) : name);

const RANK = new Map(ORDER.map((stage, i) => [stage, i]));
const MESSAGE_RANKS = MESSAGE_STAGES.map((s) => RANK.get(s)!);

type MacroList = ReadonlyArray<readonly [string, string]>;

export class MacroStore {
  /**
   * The list each stage last sent, by rank in {@link ORDER}, kept as it came:
   * a message brings ~20 macro frames and the filter reads three macros, so
   * storing a reference beats filling a map.
   */
  #stages: Array<MacroList | undefined> = [];

  /** Replaces the macros of a stage, as libmilter does. */
  set(stage: MacroCommandLetter, macros: MacroList): void {
    this.#stages[RANK.get(stage)!] = macros;
  }

  /** The value from the latest stage that has it; within a stage the last one sent. */
  get(name: string): string | undefined {
    const key = bare(name);
    const braced = `{${key}}`;
    for (let s = ORDER.length - 1; s >= 0; s--) {
      const list = this.#stages[s];
      if (list === undefined) continue;
      for (let i = list.length - 1; i >= 0; i--) {
        const [n, value] = list[i]!;
        if (n === key || n === braced) return value;
      }
    }
    return undefined;
  }

  /** Forgets the stages after `stage` (a new MAIL keeps its own macros). */
  clearAfter(stage: MacroCommandLetter): void {
    this.#stages.length = Math.min(this.#stages.length, RANK.get(stage)! + 1);
  }

  /** Forgets every message stage; CONNECT and HELO macros stay. */
  clearMessage(): void {
    for (const r of MESSAGE_RANKS) this.#stages[r] = undefined;
  }

  clearAll(): void {
    this.#stages.length = 0;
  }
}
