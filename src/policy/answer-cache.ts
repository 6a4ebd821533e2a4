/**
 * A small cache of policy answers with a lifetime, so a burst of mail for
 * one domain makes one backend query. Backend errors are never cached, and
 * an entry is never served after its lifetime, whatever the backend's state.
 *
 * Pure: the clock is passed in.
 * @module
 */
import type { PolicyResult } from "./types.ts";

export class AnswerCache {
  #entries = new Map<string, { result: PolicyResult; expires: number }>();

  constructor(
    readonly ttlMs: number,
    readonly maxEntries: number,
    readonly now: () => number,
  ) {}

  get(domain: string): PolicyResult | undefined {
    const e = this.#entries.get(domain);
    if (e === undefined) return undefined;
    if (this.now() >= e.expires) {
      this.#entries.delete(domain);
      return undefined;
    }
    return e.result;
  }

  set(domain: string, result: PolicyResult): void {
    if (this.ttlMs <= 0 || result.kind === "backend_error") return;
    this.#entries.delete(domain);
    if (this.#entries.size >= this.maxEntries) {
      // Oldest first: Map keeps insertion order.
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(domain, { result, expires: this.now() + this.ttlMs });
  }

  clear(): void {
    this.#entries.clear();
  }
}
