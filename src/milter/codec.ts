/**
 * Frame codec for the milter protocol: bytes <-> {@link Command} and
 * {@link Reply}. A frame is a 4-byte big-endian length (counting the command
 * byte), one command byte and the payload; strings are NUL-terminated.
 *
 * Pure: no I/O. Decoding never throws; malformed input is an error value.
 * @module
 */
import { Cmd, DEFAULT_MAX_FRAME, Rep } from "./protocol.ts";
import type { Command, Family, MacroCommandLetter, MacroRequest, Reply } from "./types.ts";

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

/** One frame cut from the byte stream: its code byte and payload. */
export interface Frame {
  readonly code: number;
  readonly payload: Uint8Array;
}

// A BOM is data here (a header value may start with one): never dropped.
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

const ok = <T>(value: T): Decoded<T> => ({ ok: true, value });
const fail = <T>(error: string): Decoded<T> => ({ ok: false, error });

/**
 * Cuts a byte stream into frames. Chunks may split frames anywhere and may
 * hold several frames. A length of 0 or above `maxFrame` is an error that
 * ends the stream: the caller must close the connection.
 */
export class FrameReader {
  #buf: Uint8Array = EMPTY;
  /** Whether #buf is ours to write into (else it is a chunk we were handed). */
  #owned = false;
  #start = 0;
  #end = 0;
  #failed: string | undefined;

  constructor(readonly maxFrame: number = DEFAULT_MAX_FRAME) {}

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  push(chunk: Uint8Array): void {
    const pending = this.#end - this.#start;
    if (pending === 0) {
      // Nothing pending: read frames straight out of the chunk, no copy.
      this.#buf = chunk;
      this.#owned = false;
      this.#start = 0;
      this.#end = chunk.length;
      return;
    }
    const needed = pending + chunk.length;
    if (this.#owned && this.#buf.length >= needed) {
      this.#buf.copyWithin(0, this.#start, this.#end);
    } else {
      const buf = new Uint8Array(Math.max(needed, 4096));
      buf.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = buf;
      this.#owned = true;
    }
    this.#buf.set(chunk, pending);
    this.#start = 0;
    this.#end = needed;
  }

  /**
   * The next complete frame, `undefined` when more bytes are needed, or an
   * error. The payload is a view valid until the next `push`.
   */
  next(): Decoded<Frame> | undefined {
    if (this.#failed !== undefined) return fail(this.#failed);
    const avail = this.#end - this.#start;
    if (avail < 4) return this.#keepPending();
    const b = this.#buf;
    const s = this.#start;
    const len = ((b[s]! << 24) >>> 0) + (b[s + 1]! << 16) + (b[s + 2]! << 8) + b[s + 3]!;
    if (len === 0) return fail(this.#failed = "frame length 0");
    if (len > this.maxFrame) {
      return fail(this.#failed = `frame length ${len} exceeds the limit of ${this.maxFrame} bytes`);
    }
    if (avail < 4 + len) return this.#keepPending();
    const frame = { code: b[s + 4]!, payload: b.subarray(s + 5, s + 4 + len) };
    this.#start = s + 4 + len;
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      this.#buf = EMPTY;
      this.#owned = false;
    }
    return ok(frame);
  }

  /**
   * An incomplete frame waits for more bytes: copy it out of a borrowed
   * chunk, since a runtime may reuse its read buffer after the callback.
   */
  #keepPending(): undefined {
    if (!this.#owned && this.#end > this.#start) {
      this.#buf = this.#buf.slice(this.#start, this.#end);
      this.#owned = true;
      this.#end -= this.#start;
      this.#start = 0;
    }
    return undefined;
  }
}

// ---------------------------------------------------------------- reading

/** Reads a payload field by field (u16, u32, NUL-terminated strings). */
class Cursor {
  pos = 0;
  constructor(readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.bytes.length;
  }

  cstring(): string | undefined {
    const nul = this.bytes.indexOf(0, this.pos);
    if (nul < 0) return undefined;
    const s = utf8.decode(this.bytes.subarray(this.pos, nul));
    this.pos = nul + 1;
    return s;
  }

  u16(): number | undefined {
    if (this.pos + 2 > this.bytes.length) return undefined;
    const v = (this.bytes[this.pos]! << 8) | this.bytes[this.pos + 1]!;
    this.pos += 2;
    return v;
  }

  u32(): number | undefined {
    if (this.pos + 4 > this.bytes.length) return undefined;
    const b = this.bytes;
    const p = this.pos;
    this.pos += 4;
    return ((b[p]! << 24) >>> 0) + (b[p + 1]! << 16) + (b[p + 2]! << 8) + b[p + 3]!;
  }
}

/**
 * The NUL-terminated strings of a payload after its first `skip` bytes,
 * which must be ASCII; undefined when the last string lacks its NUL. One
 * decode for the whole payload, cut at the NULs (a NUL is never part of a
 * UTF-8 sequence, so this decodes as string by string would) with indexOf
 * and slice: about half the cost of split here, and no view of the payload.
 */
function cstringList(b: Uint8Array, skip = 0): string[] | undefined {
  if (b.length <= skip) return [];
  if (b[b.length - 1] !== 0) return undefined;
  const text = utf8.decode(b);
  const list: string[] = [];
  for (let from = skip; from < text.length;) {
    const nul = text.indexOf("\0", from);
    list.push(text.slice(from, nul));
    from = nul + 1;
  }
  return list;
}

const SIMPLE_COMMANDS: Readonly<Record<number, "data" | "eoh" | "abort" | "quit" | "quit_nc">> = {
  [Cmd.DATA]: "data", [Cmd.EOH]: "eoh", [Cmd.ABORT]: "abort", [Cmd.QUIT]: "quit", [Cmd.QUIT_NC]: "quit_nc",
};
const MACRO_LETTERS = new Set<string>(["A", "B", "C", "E", "H", "L", "M", "N", "R", "T", "U"]);
const FAMILIES: Record<string, Family> = { U: "unknown", L: "unix", "4": "inet", "6": "inet6" };

const letter = (code: number) => String.fromCharCode(code);
const describe = (code: number) =>
  code >= 0x21 && code < 0x7f ? `'${letter(code)}'` : `0x${code.toString(16).padStart(2, "0")}`;

function strings(name: string, payload: Uint8Array, min: number, skip = 0): Decoded<string[]> {
  const list = cstringList(payload, skip);
  if (list === undefined) return fail(`${name}: string without NUL terminator`);
  if (list.length < min) return fail(`${name}: expected at least ${min} string(s), got ${list.length}`);
  return ok(list);
}

/** Decodes the payload of a frame from the MTA. */
export function decodeCommand(code: number, payload: Uint8Array): Decoded<Command> {
  switch (code) {
    case Cmd.OPTNEG: {
      const c = new Cursor(payload);
      const version = c.u32(), actions = c.u32(), protocol = c.u32();
      if (version === undefined || actions === undefined || protocol === undefined) {
        return fail(`optneg: payload of ${payload.length} bytes, expected 12`);
      }
      return ok({ type: "optneg", version, actions, protocol });
    }
    case Cmd.MACRO: {
      if (payload.length === 0) return fail("macro: empty payload");
      const stage = letter(payload[0]!);
      if (!MACRO_LETTERS.has(stage)) return fail(`macro: unknown stage ${describe(payload[0]!)}`);
      const list = strings("macro", payload, 0, 1);
      if (!list.ok) return list;
      if (list.value.length % 2 !== 0) return fail("macro: name without value");
      const macros: Array<readonly [string, string]> = [];
      for (let i = 0; i < list.value.length; i += 2) macros.push([list.value[i]!, list.value[i + 1]!]);
      return ok({ type: "macro", stage: stage as MacroCommandLetter, macros });
    }
    case Cmd.CONNECT: {
      const c = new Cursor(payload);
      const hostname = c.cstring();
      if (hostname === undefined || c.done) return fail("connect: truncated");
      const family = FAMILIES[letter(payload[c.pos++]!)];
      if (family === undefined) return fail(`connect: unknown family ${describe(payload[c.pos - 1]!)}`);
      if (family === "unknown") {
        return c.done ? ok({ type: "connect", hostname, family }) : fail("connect: trailing bytes");
      }
      const port = c.u16();
      const address = c.cstring();
      if (port === undefined || address === undefined) return fail("connect: truncated");
      if (!c.done) return fail("connect: trailing bytes");
      return ok({ type: "connect", hostname, family, port, address });
    }
    case Cmd.HELO: {
      const s = strings("helo", payload, 1);
      return s.ok ? ok({ type: "helo", name: s.value[0]! }) : s;
    }
    case Cmd.MAIL:
    case Cmd.RCPT: {
      const type = code === Cmd.MAIL ? "mail" : "rcpt";
      const s = strings(type, payload, 1);
      return s.ok ? ok({ type, args: s.value }) : s;
    }
    case Cmd.HEADER: {
      const s = strings("header", payload, 2);
      if (!s.ok) return s;
      if (s.value.length !== 2) return fail("header: expected name and value");
      return ok({ type: "header", name: s.value[0]!, value: s.value[1]! });
    }
    case Cmd.UNKNOWN: {
      const s = strings("unknown", payload, 1);
      return s.ok ? ok({ type: "unknown", line: s.value[0]! }) : s;
    }
    case Cmd.BODY:
      return ok({ type: "body", chunk: payload.slice() });
    case Cmd.BODYEOB:
      return ok({ type: "eom", chunk: payload.slice() });
    case Cmd.DATA:
    case Cmd.EOH:
    case Cmd.ABORT:
    case Cmd.QUIT:
    case Cmd.QUIT_NC: {
      const type = SIMPLE_COMMANDS[code]!;
      return payload.length === 0 ? ok({ type }) : fail(`${type}: unexpected payload of ${payload.length} bytes`);
    }
    default:
      return fail(`unknown command ${describe(code)}`);
  }
}

// ---------------------------------------------------------------- writing

/**
 * Writes frames into one growing buffer (length, code, payload), so a batch
 * of replies is one allocation and one write; a frame's length is filled in
 * when the next frame starts or at `finish`.
 */
class FrameWriter {
  #buf = new Uint8Array(128);
  #pos = 0;
  /** Where the open frame's length goes; -1 when none is open. */
  #start = -1;

  frame(code: number): this {
    this.#close();
    this.#reserve(5);
    this.#start = this.#pos;
    this.#buf[this.#pos + 4] = code;
    this.#pos += 5;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.#reserve(b.length);
    this.#buf.set(b, this.#pos);
    this.#pos += b.length;
    return this;
  }

  /** The string as UTF-8 and a NUL; ASCII (nearly every reply) byte by byte. */
  cstring(s: string): this {
    this.#reserve(s.length + 1);
    let buf = this.#buf;
    let p = this.#pos;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) {
        this.#pos = p;
        this.#reserve((s.length - i) * 3 + 1);
        buf = this.#buf;
        p += encoder.encodeInto(s.slice(i), buf.subarray(p)).written;
        break;
      }
      buf[p++] = c;
    }
    buf[p++] = 0;
    this.#pos = p;
    return this;
  }

  u32(n: number): this {
    this.#reserve(4);
    this.#put32(this.#pos, n);
    this.#pos += 4;
    return this;
  }

  u16(n: number): this {
    this.#reserve(2);
    this.#buf[this.#pos++] = (n >>> 8) & 0xff;
    this.#buf[this.#pos++] = n & 0xff;
    return this;
  }

  byte(n: number): this {
    this.#reserve(1);
    this.#buf[this.#pos++] = n;
    return this;
  }

  finish(): Uint8Array {
    this.#close();
    // A copy: a view of a small array costs more than copying its bytes.
    return this.#pos === this.#buf.length ? this.#buf : this.#buf.slice(0, this.#pos);
  }

  #close(): void {
    if (this.#start >= 0) this.#put32(this.#start, this.#pos - this.#start - 4);
    this.#start = -1;
  }

  #put32(at: number, n: number): void {
    const b = this.#buf;
    b[at] = n >>> 24;
    b[at + 1] = (n >>> 16) & 0xff;
    b[at + 2] = (n >>> 8) & 0xff;
    b[at + 3] = n & 0xff;
  }

  #reserve(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const grown = new Uint8Array(Math.max(this.#buf.length * 2, this.#pos + n));
    grown.set(this.#buf.subarray(0, this.#pos));
    this.#buf = grown;
  }
}

const FAMILY_BYTES: Record<Family, number> = { unknown: 0x55, unix: 0x4c, inet: 0x34, inet6: 0x36 };

/** Encodes a command as the MTA would send it (for clients and tests). */
export function encodeCommand(cmd: Command): Uint8Array {
  switch (cmd.type) {
    case "optneg":
      return new FrameWriter().frame(Cmd.OPTNEG).u32(cmd.version).u32(cmd.actions).u32(cmd.protocol).finish();
    case "macro": {
      const w = new FrameWriter().frame(Cmd.MACRO).byte(cmd.stage.charCodeAt(0));
      for (const [name, value] of cmd.macros) w.cstring(name).cstring(value);
      return w.finish();
    }
    case "connect": {
      const w = new FrameWriter().frame(Cmd.CONNECT).cstring(cmd.hostname).byte(FAMILY_BYTES[cmd.family]);
      if (cmd.family !== "unknown") w.u16(cmd.port).cstring(cmd.address);
      return w.finish();
    }
    case "helo":
      return new FrameWriter().frame(Cmd.HELO).cstring(cmd.name).finish();
    case "mail":
    case "rcpt": {
      const w = new FrameWriter().frame(cmd.type === "mail" ? Cmd.MAIL : Cmd.RCPT);
      for (const a of cmd.args) w.cstring(a);
      return w.finish();
    }
    case "header":
      return new FrameWriter().frame(Cmd.HEADER).cstring(cmd.name).cstring(cmd.value).finish();
    case "unknown":
      return new FrameWriter().frame(Cmd.UNKNOWN).cstring(cmd.line).finish();
    case "body":
      return new FrameWriter().frame(Cmd.BODY).bytes(cmd.chunk).finish();
    case "eom":
      return new FrameWriter().frame(Cmd.BODYEOB).bytes(cmd.chunk).finish();
    case "data":
      return new FrameWriter().frame(Cmd.DATA).finish();
    case "eoh":
      return new FrameWriter().frame(Cmd.EOH).finish();
    case "abort":
      return new FrameWriter().frame(Cmd.ABORT).finish();
    case "quit":
      return new FrameWriter().frame(Cmd.QUIT).finish();
    case "quit_nc":
      return new FrameWriter().frame(Cmd.QUIT_NC).finish();
  }
}

const SIMPLE_REPLIES = {
  continue: Rep.CONTINUE,
  accept: Rep.ACCEPT,
  reject: Rep.REJECT,
  tempfail: Rep.TEMPFAIL,
  discard: Rep.DISCARD,
  skip: Rep.SKIP,
  progress: Rep.PROGRESS,
} as const;

/** Encodes one reply frame. */
export function encodeReply(reply: Reply): Uint8Array {
  return writeReply(new FrameWriter(), reply).finish();
}

/** Encodes several replies into one buffer, so they go out in one write. */
export function encodeReplies(replies: readonly Reply[]): Uint8Array {
  const w = new FrameWriter();
  for (const r of replies) writeReply(w, r);
  return w.finish();
}

function writeReply(w: FrameWriter, reply: Reply): FrameWriter {
  switch (reply.type) {
    case "optneg": {
      w.frame(Cmd.OPTNEG).u32(reply.version).u32(reply.actions).u32(reply.protocol);
      for (const [stage, names] of reply.macros ?? []) w.u32(stage).cstring(names.join(" "));
      return w;
    }
    case "replycode":
      // libmilter treats the text as a format string: a literal % is %%.
      return w.frame(Rep.REPLYCODE).cstring(`${reply.code} ${reply.text.replaceAll("%", "%%")}`);
    case "addheader":
      return w.frame(Rep.ADDHEADER).cstring(reply.name).cstring(reply.value);
    case "insheader":
    case "chgheader":
      return w.frame(reply.type === "insheader" ? Rep.INSHEADER : Rep.CHGHEADER)
        .u32(reply.index).cstring(reply.name).cstring(reply.value);
    default:
      return w.frame(SIMPLE_REPLIES[reply.type]);
  }
}

const SIMPLE_BY_CODE = new Map<number, keyof typeof SIMPLE_REPLIES>(
  Object.entries(SIMPLE_REPLIES).map(([k, v]) => [v, k as keyof typeof SIMPLE_REPLIES]),
);

/** Decodes the payload of a frame from the filter (for clients and tests). */
export function decodeReply(code: number, payload: Uint8Array): Decoded<Reply> {
  const simple = SIMPLE_BY_CODE.get(code);
  if (simple !== undefined) {
    return payload.length === 0 ? ok({ type: simple }) : fail(`${simple}: unexpected payload`);
  }
  const c = new Cursor(payload);
  switch (code) {
    case Cmd.OPTNEG: {
      const version = c.u32(), actions = c.u32(), protocol = c.u32();
      if (version === undefined || actions === undefined || protocol === undefined) return fail("optneg: truncated");
      const macros = new Map<number, string[]>();
      while (!c.done) {
        const stage = c.u32();
        const names = c.cstring();
        if (stage === undefined || names === undefined) return fail("optneg: truncated macro list");
        macros.set(stage, names === "" ? [] : names.split(" "));
      }
      const reply: Reply = macros.size > 0
        ? { type: "optneg", version, actions, protocol, macros: macros as MacroRequest }
        : { type: "optneg", version, actions, protocol };
      return ok(reply);
    }
    case Rep.REPLYCODE: {
      const s = strings("replycode", payload, 1);
      if (!s.ok) return s;
      const m = /^(\d{3}) ([\s\S]*)$/.exec(s.value[0]!);
      if (m === null || s.value.length !== 1) return fail("replycode: expected 'NNN text'");
      return ok({ type: "replycode", code: Number(m[1]), text: m[2]!.replaceAll("%%", "%") });
    }
    case Rep.ADDHEADER: {
      const s = strings("addheader", payload, 2);
      if (!s.ok) return s;
      return s.value.length === 2 ? ok({ type: "addheader", name: s.value[0]!, value: s.value[1]! }) : fail("addheader: extra strings");
    }
    case Rep.INSHEADER:
    case Rep.CHGHEADER: {
      const type = code === Rep.INSHEADER ? "insheader" : "chgheader";
      const index = c.u32();
      if (index === undefined) return fail(`${type}: truncated`);
      const s = strings(type, payload.subarray(4), 2);
      if (!s.ok) return s;
      if (s.value.length !== 2) return fail(`${type}: extra strings`);
      return ok({ type, index, name: s.value[0]!, value: s.value[1]! });
    }
    default:
      return fail(`unknown reply ${describe(code)}`);
  }
}
