/**
 * One milter connection: bytes from the socket -> frames -> session ->
 * replies back, one write per batch of replies. Commands are handled strictly
 * in order; while an end of message waits for the policy backend, further
 * bytes stay buffered in the frame reader.
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { decodeCommand, encodeReplies, FrameReader } from "../milter/codec.ts";
import { type Filter, MilterSession, type SessionOutput } from "../milter/session.ts";
import type { Reply } from "../milter/types.ts";
import type { MilterSocket, SocketEvents } from "./runtime-api.ts";

export interface ConnectionOptions {
  readonly connId: string;
  readonly filter: Filter;
  readonly maxFrame: number;
  /**
   * Close the connection after this long without a byte from the MTA, or
   * when a frame is not complete this long after its first byte.
   */
  readonly idleTimeoutMs: number;
  /** Close the connection when a message is not finished this long after MAIL. */
  readonly messageTimeoutMs: number;
  readonly log: Logger;
  readonly onClose?: () => void;
  /** The connection was closed for a timeout (logged once already). */
  readonly onTimeout?: (kind: TimeoutKind) => void;
}

/** Why a connection timed out: silence, a frame sent too slowly, a message taking too long. */
export type TimeoutKind = "idle" | "frame" | "message";

export interface ConnectionHandle {
  /**
   * Closes the connection at the next message boundary: right after the
   * end-of-message reply of the message in progress, or once no byte has
   * come for DRAIN_QUIET_MS between messages (bytes of a next message
   * already sent make it a message in progress, served to its end).
   */
  drain(): void;
}

/** A connection: the receiver of its socket's events, and the handle to drain it. */
export interface Connection extends ConnectionHandle, SocketEvents {}

/**
 * Between messages, how long a draining connection waits for the MTA's next
 * message before it closes: an MTA that got our reply may be sending the
 * next one, and closing under it would cut that message. Long enough for a
 * client starved of CPU on a loaded host; a connection silent for longer
 * before the signal closes after DRAIN_POLL_MS, once pending bytes are read.
 */
const DRAIN_QUIET_MS = 1000;
const DRAIN_POLL_MS = 50;

/** How long a connection we closed may wait for the MTA to close its side. */
const CLOSE_GRACE_MS = 5000;

/** Per connection, what the idle sweep looks at. */
interface Watched {
  check(now: number): void;
}

/**
 * One timer checks every connection for idleness (a timer per connection,
 * re-armed on every read, would cost more than the reads).
 */
class IdleSweep {
  readonly #watched = new Set<Watched>();
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(readonly everyMs: number) {}

  add(w: Watched): void {
    this.#watched.add(w);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => {
        const now = performance.now();
        for (const x of this.#watched) x.check(now);
      }, this.everyMs);
      this.#timer.unref?.();
    }
  }

  delete(w: Watched): void {
    this.#watched.delete(w);
    if (this.#watched.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}

const sweeps = new Map<number, IdleSweep>();

/** The sweep for a timeout: it closes an idle connection at most 1/8 of the timeout (or 1 s) late. */
function sweepFor(idleTimeoutMs: number): IdleSweep {
  const every = Math.max(25, Math.min(1000, Math.floor(idleTimeoutMs / 8)));
  let sweep = sweeps.get(every);
  if (sweep === undefined) sweeps.set(every, sweep = new IdleSweep(every));
  return sweep;
}

export function serveConnection(socket: MilterSocket, opts: ConnectionOptions): Connection {
  const { log } = opts;
  const reader = new FrameReader(opts.maxFrame);
  const session = new MilterSession(opts.filter);
  let busy = false;
  let closed = false;
  let gone = false;
  let draining = false;
  let drainTimer: ReturnType<typeof setTimeout> | undefined;
  let drainStart = 0;
  /** The last command taken was an end of message (its reply is out or pending). */
  let ended = false;
  /** The MAIL-stage macros of a next message came; MAIL itself not yet. */
  let mailMacros = false;
  let pending: Reply[] = [];
  /** Reply bytes the kernel did not take yet; reading is paused meanwhile. */
  let unsent: Uint8Array | undefined;
  let lastRead = performance.now();
  /** When the first byte of the incomplete frame in the reader arrived. */
  let frameStart: number | undefined;
  /** When the message in progress began (MAIL, or its first header). */
  let messageStart: number | undefined;
  /** Frames taken from the reader so far. */
  let frames = 0;
  let closedAt = 0;
  const sweep = sweepFor(opts.idleTimeoutMs);

  const send = (bytes: Uint8Array) => {
    if (unsent !== undefined) {
      const all = new Uint8Array(unsent.length + bytes.length);
      all.set(unsent);
      all.set(bytes, unsent.length);
      unsent = all;
      return;
    }
    const n = socket.write(bytes);
    if (n >= 0 && n < bytes.length) {
      // Back-pressure: read no more until the MTA has taken our replies.
      unsent = bytes.subarray(n);
      socket.pause();
    }
  };

  const flush = () => {
    if (pending.length === 0 || closed) return;
    const bytes = encodeReplies(pending);
    pending = [];
    send(bytes);
  };

  const close = (error: boolean, reason: string) => {
    if (closed) return;
    flush();
    closed = true;
    closedAt = performance.now();
    if (error) log.warn("closing connection: {reason}", { conn: opts.connId, reason });
    else log.debug("connection closed: {reason}", { conn: opts.connId, reason });
    // FIN once the replies are out (see writable); the MTA closes its side in turn.
    if (unsent === undefined) socket.end();
  };

  const apply = (out: SessionOutput) => {
    for (const r of out.replies) pending.push(r);
    if (out.close !== undefined) close(out.close.error, out.close.reason);
  };

  const process = () => {
    while (!busy && !closed) {
      const frame = reader.next();
      if (frame === undefined) break;
      frames++;
      if (!frame.ok) return close(true, `malformed frame: ${frame.error}`);
      const cmd = decodeCommand(frame.value.code, frame.value.payload);
      if (!cmd.ok) return close(true, `malformed command: ${cmd.error}`);
      ended = cmd.value.type === "eom";
      mailMacros = cmd.value.type === "macro" ? cmd.value.stage === "M" || mailMacros : false;
      let out: SessionOutput | Promise<SessionOutput>;
      try {
        out = session.handle(cmd.value);
      } catch (e) {
        log.error("bug while handling {command}: {error}", { conn: opts.connId, command: cmd.value.type, error: e });
        return close(true, "internal error");
      }
      if (out instanceof Promise) {
        busy = true;
        flush();
        out.then((o) => {
          busy = false;
          apply(o);
          const before = frames;
          process();
          // A frame left incomplete began with a read before this moment: lastRead is a lenient start.
          clocks(lastRead, frames !== before);
        }, (e) => {
          log.error("bug while handling {command}: {error}", { conn: opts.connId, command: cmd.value.type, error: e });
          close(true, "internal error");
        });
        return;
      }
      apply(out);
    }
    flush();
    if (draining) closeIfDrained();
  };

  /** While draining: closes at a message boundary (see ConnectionHandle.drain). */
  const closeIfDrained = () => {
    if (closed || busy || session.inMessage || mailMacros || reader.buffered > 0) return;
    // The MTA waits for nothing after our end-of-message reply: the FIN goes out with it.
    if (ended) return close(false, "shutting down");
    // Never at once after the signal: bytes the kernel holds for us are read first.
    const wait = Math.max(lastRead + DRAIN_QUIET_MS, drainStart + DRAIN_POLL_MS) - performance.now();
    if (wait <= 0) return close(false, "shutting down");
    // setImmediate: look once more after the I/O poll that follows the timer.
    drainTimer ??= setTimeout(() => setImmediate(() => {
      drainTimer = undefined;
      closeIfDrained();
    }), wait);
  };

  /** Starts or stops the frame and message clocks after frames were taken from the reader. */
  const clocks = (now: number, tookFrames: boolean) => {
    if (reader.buffered === 0) frameStart = undefined;
    else if (frameStart === undefined || tookFrames) frameStart = now;
    if (!session.inMessage) messageStart = undefined;
    else messageStart ??= now;
  };

  /** Logs once (close does), counts, closes. */
  const timeout = (kind: TimeoutKind, reason: string) => {
    close(true, reason);
    opts.onTimeout?.(kind);
  };

  const watched: Watched = {
    check(now) {
      if (gone) return;
      if (closed) {
        // We closed, the MTA does not: do not keep the socket forever.
        if (now - closedAt > CLOSE_GRACE_MS) socket.terminate();
      } else if (busy) {
        // Waiting for our policy backend: not the MTA's delay.
      } else if (now - lastRead >= opts.idleTimeoutMs) {
        // Also while reading is paused: an MTA that does not read our replies for so long is gone.
        timeout("idle", `idle for ${opts.idleTimeoutMs / 1000} s`);
      } else if (unsent === undefined && frameStart !== undefined && now - frameStart >= opts.idleTimeoutMs) {
        // A byte now and then restarts the idle clock: a trickling client would hold its slot forever.
        timeout("frame", `frame not complete ${opts.idleTimeoutMs / 1000} s after its first byte`);
      } else if (messageStart !== undefined && now - messageStart >= opts.messageTimeoutMs) {
        timeout("message", `message not finished ${opts.messageTimeoutMs / 1000} s after MAIL (MILTER_MESSAGE_TIMEOUT)`);
      }
    },
  };
  sweep.add(watched);

  return {
    data(chunk: Uint8Array) {
      if (closed) return;
      const now = lastRead = performance.now();
      const before = frames;
      reader.push(chunk);
      process();
      clocks(now, frames !== before);
    },
    writable() {
      const rest = unsent;
      if (rest === undefined) return;
      unsent = undefined;
      const n = socket.write(rest);
      if (n >= 0 && n < rest.length) {
        unsent = rest.subarray(n);
        return;
      }
      if (closed) socket.end();
      else socket.resume();
    },
    error(e: Error) {
      log.debug("socket error: {error}", { conn: opts.connId, error: e.message });
    },
    close() {
      if (gone) return;
      gone = true;
      sweep.delete(watched);
      // An MTA that hangs up in the middle of a frame is broken or not an MTA: worth a log line.
      if (!closed && !busy && reader.buffered > 0) {
        log.warn("connection closed by the MTA in the middle of a frame ({bytes} bytes pending)", { conn: opts.connId, bytes: reader.buffered });
      }
      closed = true;
      opts.onClose?.();
    },
    drain() {
      draining = true;
      drainStart = performance.now();
      // An end of message answered before the signal: the MTA may be sending the next one now.
      if (!busy) ended = false;
      closeIfDrained();
    },
  };
}
