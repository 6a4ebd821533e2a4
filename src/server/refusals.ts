/**
 * Refused connections, logged at most once per interval: under a flood at
 * the connection limit a line per connection (thousands a second) would
 * bury everything else. The first refusal is logged at once, the rest of
 * the interval as one line with the count; the metrics count every one.
 * @module
 */
import type { Logger } from "@logtape/logtape";

const INTERVAL_MS = 10_000;

export class RefusalLog {
  /** Refusals since the last line; undefined outside an interval. */
  #unlogged: number | undefined;
  #reason = "";

  constructor(readonly log: Logger) {}

  refused(conn: string, listener: string, reason: string): void {
    this.#reason = reason;
    if (this.#unlogged !== undefined) {
      this.#unlogged++;
      return;
    }
    this.log.warn("refusing connection on {listener}", { conn, listener, reason });
    this.#open();
  }

  #open(): void {
    this.#unlogged = 0;
    setTimeout(() => {
      const n = this.#unlogged!;
      this.#unlogged = undefined;
      if (n === 0) return;
      this.log.warn("refused {count} more connection(s) in the last {seconds} s", {
        count: n,
        seconds: INTERVAL_MS / 1000,
        reason: this.#reason,
      });
      // A flood that goes on gets one line per interval.
      this.#open();
    }, INTERVAL_MS).unref?.();
  }
}
