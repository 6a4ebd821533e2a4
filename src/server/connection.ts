/**
 * One milter connection: bytes from the socket -> frames -> session ->
 * replies back, one write per batch of replies. Commands are handled strictly
 * in order; while an end of message waits for the policy backend, further
 * bytes stay buffered in the frame reader.
 * @module
 */
import type { Socket } from "node:net";
import type { Logger } from "@logtape/logtape";
import { decodeCommand, encodeReplies, FrameReader } from "../milter/codec.ts";
import { type Filter, MilterSession, type SessionOutput } from "../milter/session.ts";
import type { Reply } from "../milter/types.ts";

export interface ConnectionOptions {
  readonly connId: string;
  readonly filter: Filter;
  readonly maxFrame: number;
  /** Close the connection after this long without a byte from the MTA. */
  readonly idleTimeoutMs: number;
  readonly log: Logger;
  readonly onClose?: () => void;
}

export interface ConnectionHandle {
  /**
   * Closes the connection as soon as no message is in progress on it: at
   * once when idle, else right after that message's end-of-message reply.
   */
  drain(): void;
}

export function serveConnection(socket: Socket, opts: ConnectionOptions): ConnectionHandle {
  const { log } = opts;
  const reader = new FrameReader(opts.maxFrame);
  const session = new MilterSession(opts.filter);
  let busy = false;
  let closed = false;
  let draining = false;
  let pending: Reply[] = [];

  const flush = () => {
    if (pending.length === 0 || closed) return;
    const bytes = encodeReplies(pending);
    pending = [];
    // Back-pressure: stop reading until the MTA has taken our replies.
    if (!socket.write(bytes)) {
      socket.pause();
      socket.once("drain", () => socket.resume());
    }
  };

  const close = (error: boolean, reason: string) => {
    if (closed) return;
    flush();
    closed = true;
    if (error) {
      log.warn("closing connection: {reason}", { conn: opts.connId, reason });
      socket.destroy();
    } else {
      log.debug("connection closed: {reason}", { conn: opts.connId, reason });
      socket.end();
    }
  };

  const apply = (out: SessionOutput) => {
    for (const r of out.replies) pending.push(r);
    if (out.close !== undefined) close(out.close.error, out.close.reason);
    else if (draining && !session.inMessage) close(false, "shutting down");
  };

  const process = () => {
    while (!busy && !closed) {
      const frame = reader.next();
      if (frame === undefined) break;
      if (!frame.ok) return close(true, `malformed frame: ${frame.error}`);
      const cmd = decodeCommand(frame.value.code, frame.value.payload);
      if (!cmd.ok) return close(true, `malformed command: ${cmd.error}`);
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
          process();
        }, (e) => {
          log.error("bug while handling {command}: {error}", { conn: opts.connId, command: cmd.value.type, error: e });
          close(true, "internal error");
        });
        return;
      }
      apply(out);
    }
    flush();
  };

  socket.on("data", (chunk: Uint8Array) => {
    if (closed) return;
    reader.push(chunk);
    process();
  });
  socket.setTimeout(opts.idleTimeoutMs, () => close(true, `idle for ${opts.idleTimeoutMs / 1000} s`));
  socket.on("error", (e: Error) => log.debug("socket error: {error}", { conn: opts.connId, error: e.message }));
  socket.on("close", () => {
    // An MTA that hangs up in the middle of a frame is broken or not an MTA: worth a log line.
    if (!closed && !busy && reader.buffered > 0) {
      log.warn("connection closed by the MTA in the middle of a frame ({bytes} bytes pending)", { conn: opts.connId, bytes: reader.buffered });
    }
    closed = true;
    opts.onClose?.();
  });
  return {
    drain() {
      draining = true;
      if (!busy && !session.inMessage) close(false, "shutting down");
    },
  };
}
