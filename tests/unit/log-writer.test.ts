/**
 * The log writer's EAGAIN backlog, with a stand-in for write(2): a full
 * non-blocking standard error cannot be had on demand from a real peer.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FdWriter } from "../../src/log.ts";

/** A non-blocking fd: takes at most `room` bytes (then EAGAIN), at most `perCall` a call. */
class FullFd {
  room = 0;
  perCall = Infinity;
  failure: string | undefined;
  readonly received: number[] = [];
  /** The most bytes one call was offered while the fd was full. */
  largestOfferWhenFull = 0;
  readonly write = (bytes: Uint8Array, offset: number): number => {
    if (this.failure !== undefined) throw Object.assign(new Error(this.failure), { code: this.failure });
    if (this.room === 0) {
      this.largestOfferWhenFull = Math.max(this.largestOfferWhenFull, bytes.length - offset);
      throw Object.assign(new Error("EAGAIN"), { code: "EAGAIN" });
    }
    const n = Math.min(this.room, this.perCall, bytes.length - offset);
    this.received.push(...bytes.subarray(offset, offset + n));
    this.room -= n;
    return n;
  };
  text(): string {
    return new TextDecoder().decode(new Uint8Array(this.received));
  }
}

function writer(fd: FullFd, max: number): { w: FdWriter; retries: Array<() => void> } {
  const retries: Array<() => void> = [];
  return { w: new FdWriter(fd.write, (r) => retries.push(r), max), retries };
}

const line = (i: number) => `line ${String(i).padStart(3, "0")}\n`; // 9 bytes

describe("log writer: EAGAIN backlog", () => {
  it("partial writes and EAGAIN: every byte arrives once, in order; the backlog keeps its bound and drops whole texts past it", () => {
    const fd = new FullFd();
    const { w, retries } = writer(fd, 100);
    fd.room = 13; // the first line and part of the second
    fd.perCall = 4;
    const sent: string[] = [];
    for (let i = 0; i < 20; i++) {
      w.write(line(i));
      sent.push(line(i));
    }
    // 13 bytes went; the backlog holds the rest of line 1 (5 bytes) and whole lines while they fit in 100 bytes.
    const kept = 2 + Math.floor((100 - 5) / 9);
    assert.equal(w.dropped, 20 - kept);
    assert.equal(retries.length, 1, "one retry at a time");
    // A text or a retry while the fd stays full offers it one line at the most: the backlog is not copied together again.
    retries.shift()!();
    assert.ok(fd.largestOfferWhenFull > 0 && fd.largestOfferWhenFull <= 9, String(fd.largestOfferWhenFull));
    assert.equal(retries.length, 1);
    // The fd drains a little at each retry, 4 bytes a call.
    while (retries.length > 0) {
      fd.room = 7;
      retries.shift()!();
    }
    assert.equal(fd.text(), sent.slice(0, kept).join(""));
    // Drained: the next text goes at once and is kept again.
    fd.room = Infinity;
    w.write(line(99));
    assert.equal(fd.text(), sent.slice(0, kept).join("") + line(99));
    assert.equal(w.dropped, 20 - kept);
  });

  it("a text that waits goes out with the next text, ahead of it", () => {
    const fd = new FullFd();
    const { w, retries } = writer(fd, 100);
    w.write(line(1));
    assert.equal(fd.text(), "");
    fd.room = Infinity;
    w.write(line(2));
    assert.equal(fd.text(), line(1) + line(2));
    retries.shift()!();
    assert.equal(fd.text(), line(1) + line(2), "the retry finds nothing left");
  });

  it("another error (EPIPE) drops what is refused and counts its lines; nothing waits", () => {
    const fd = new FullFd();
    const { w, retries } = writer(fd, 100);
    fd.room = 4;
    w.write(line(1) + line(2));
    fd.failure = "EPIPE";
    retries.shift()!();
    assert.equal(fd.text(), "line");
    assert.equal(w.dropped, 2);
    assert.equal(retries.length, 0);
    fd.failure = undefined;
    fd.room = Infinity;
    w.write(line(3));
    assert.equal(fd.text(), "line" + line(3));
  });
});
