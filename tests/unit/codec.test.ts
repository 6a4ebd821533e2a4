/**
 * The milter frame codec: exact bytes, round trips of every command and
 * reply, the frame reader's stream cutting and its error values, and
 * property tests (fast-check) for round trips and hostile bytes.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  decodeCommand,
  decodeReply,
  type Decoded,
  encodeCommand,
  encodeReplies,
  encodeReply,
  type Frame,
  FrameReader,
} from "../../src/milter/codec.ts";
import { DEFAULT_MAX_FRAME } from "../../src/milter/protocol.ts";
import type { Command, MacroCommandLetter, Reply } from "../../src/milter/types.ts";

const te = new TextEncoder();
const bytes = (...parts: Array<string | number[] | Uint8Array>): Uint8Array => {
  const chunks = parts.map((p) => (typeof p === "string" ? te.encode(p) : p instanceof Uint8Array ? p : Uint8Array.from(p)));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
};
const concat = (frames: readonly Uint8Array[]) => bytes(...frames);

/** Splits one encoded frame into its code and payload, checking the length prefix. */
function unframe(frame: Uint8Array): Frame {
  assert.ok(frame.length >= 5, "a frame has at least 5 bytes");
  const len = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(0);
  assert.equal(len, frame.length - 4, "length prefix counts the code byte and payload");
  return { code: frame[4]!, payload: frame.subarray(5) };
}

function value<T>(d: Decoded<T> | undefined): T {
  assert.ok(d !== undefined, "expected a frame, got 'need more bytes'");
  if (!d.ok) assert.fail(`expected a value, got error: ${d.error}`);
  return d.value;
}

function errorOf<T>(d: Decoded<T> | undefined): string {
  assert.ok(d !== undefined, "expected an error, got 'need more bytes'");
  if (d.ok) assert.fail(`expected an error, got ${JSON.stringify(d.value)}`);
  return d.error;
}

const roundTripCommand = (cmd: Command): Command => {
  const f = unframe(encodeCommand(cmd));
  return value(decodeCommand(f.code, f.payload));
};
const roundTripReply = (reply: Reply): Reply => {
  const f = unframe(encodeReply(reply));
  return value(decodeReply(f.code, f.payload));
};

/** Reads every frame currently complete in the reader and decodes it at once. */
function drain(reader: FrameReader): Command[] {
  const out: Command[] = [];
  for (;;) {
    const f = reader.next();
    if (f === undefined) return out;
    const frame = value(f);
    out.push(value(decodeCommand(frame.code, frame.payload)));
  }
}

const OPTNEG: Command = { type: "optneg", version: 6, actions: 0x1ff, protocol: 0x1fffff };
const SAMPLE_COMMANDS: Command[] = [
  OPTNEG,
  { type: "macro", stage: "C", macros: [["j", "mx.example.net"], ["{daemon_name}", "smtpd"], ["v", "Postfix 3.8"]] },
  { type: "connect", hostname: "mail-db5eur01.outbound.protection.outlook.com", family: "inet", port: 25190, address: "40.107.1.2" },
  { type: "connect", hostname: "[2a01:111::1]", family: "inet6", port: 49152, address: "2a01:111::1" },
  { type: "connect", hostname: "localhost", family: "unix", port: 0, address: "/var/run/sock" },
  { type: "connect", hostname: "unknown", family: "unknown" },
  { type: "helo", name: "EUR01-DB5-obe.outbound.protection.outlook.com" },
  { type: "macro", stage: "M", macros: [["i", "4ABC123"], ["{mail_addr}", "ceo@tenant.example"]] },
  { type: "mail", args: ["<ceo@tenant.example>", "SIZE=12345", "BODY=8BITMIME", "SMTPUTF8"] },
  { type: "rcpt", args: ["<bob@partner.example>", "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@partner.example"] },
  { type: "data" },
  { type: "header", name: "From", value: " \"Doe, John\" <john@tenant.example>" },
  { type: "header", name: "X-Empty", value: "" },
  { type: "header", name: "Subject", value: "Grüße\n\tfolded" },
  { type: "eoh" },
  { type: "body", chunk: bytes("Hello\r\n", [0, 1, 2, 0xff, 0x80], "\r\n.\r\n") },
  { type: "body", chunk: new Uint8Array(0) },
  { type: "eom", chunk: bytes("tail", [0]) },
  { type: "eom", chunk: new Uint8Array(0) },
  { type: "unknown", line: "XCLIENT NAME=foo" },
  { type: "abort" },
  { type: "quit_nc" },
  { type: "quit" },
];

describe("encodeCommand / decodeCommand", () => {
  for (const cmd of SAMPLE_COMMANDS) {
    const label = cmd.type === "connect" ? `connect (${cmd.family})` : cmd.type === "macro" ? `macro (${cmd.stage})` : cmd.type;
    it(`round trip: ${label} ${JSON.stringify(cmd).slice(0, 60)}`, () => {
      assert.deepEqual(roundTripCommand(cmd), cmd);
    });
  }

  it("optneg: exact bytes, big-endian u32s", () => {
    const f = encodeCommand({ type: "optneg", version: 6, actions: 0x1ff, protocol: 0x001fffff });
    assert.deepEqual(f, bytes([0, 0, 0, 13, 0x4f, 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]));
  });

  it("optneg with the high bit set in each word", () => {
    const cmd: Command = { type: "optneg", version: 0xffffffff, actions: 0x80000000, protocol: 0x80000001 };
    assert.deepEqual(roundTripCommand(cmd), cmd);
  });

  it("optneg with more than 12 bytes reads the first 12", () => {
    const r = decodeCommand(0x4f, bytes([0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9]));
    assert.deepEqual(value(r), { type: "optneg", version: 6, actions: 1, protocol: 2 });
  });

  it("macro: exact bytes (stage letter, then name\\0value\\0 pairs)", () => {
    const f = encodeCommand({ type: "macro", stage: "H", macros: [["{cert_subject}", "x"], ["j", ""]] });
    assert.deepEqual(f, bytes([0, 0, 0, 22, 0x44, 0x48], "{cert_subject}", [0], "x", [0], "j", [0, 0]));
  });

  it("macro with no pairs (Postfix sends empty macro sets)", () => {
    const cmd: Command = { type: "macro", stage: "T", macros: [] };
    assert.deepEqual(roundTripCommand(cmd), cmd);
    assert.deepEqual(encodeCommand(cmd), bytes([0, 0, 0, 2, 0x44, 0x54]));
  });

  it("macro: every stage letter round-trips", () => {
    for (const stage of ["A", "B", "C", "E", "H", "L", "M", "N", "R", "T", "U"] as MacroCommandLetter[]) {
      const cmd: Command = { type: "macro", stage, macros: [["i", stage]] };
      assert.deepEqual(roundTripCommand(cmd), cmd);
    }
  });

  it("connect: exact bytes for inet (family '4', u16 port)", () => {
    const f = encodeCommand({ type: "connect", hostname: "h", family: "inet", port: 0x1234, address: "1.2.3.4" });
    assert.deepEqual(f, bytes([0, 0, 0, 14, 0x43], "h", [0], "4", [0x12, 0x34], "1.2.3.4", [0]));
  });

  it("connect: family bytes 4, 6, L, U", () => {
    const fam = (c: Command) => {
      const f = unframe(encodeCommand(c));
      return String.fromCharCode(f.payload[2]!);
    };
    assert.equal(fam({ type: "connect", hostname: "h", family: "inet", port: 1, address: "a" }), "4");
    assert.equal(fam({ type: "connect", hostname: "h", family: "inet6", port: 1, address: "a" }), "6");
    assert.equal(fam({ type: "connect", hostname: "h", family: "unix", port: 1, address: "a" }), "L");
    assert.equal(fam({ type: "connect", hostname: "h", family: "unknown" }), "U");
    // unknown family: nothing after the family byte
    assert.deepEqual(encodeCommand({ type: "connect", hostname: "h", family: "unknown" }), bytes([0, 0, 0, 4, 0x43], "h", [0], "U"));
  });

  it("mail/rcpt: ESMTP args after the address", () => {
    const f = encodeCommand({ type: "mail", args: ["<a@b.example>", "SIZE=1"] });
    assert.deepEqual(f, bytes([0, 0, 0, 22, 0x4d], "<a@b.example>", [0], "SIZE=1", [0]));
    assert.deepEqual(roundTripCommand({ type: "rcpt", args: ["<>"] }), { type: "rcpt", args: ["<>"] });
  });

  it("header: UTF-8 name and value", () => {
    const cmd: Command = { type: "header", name: "X-Ünïcode", value: "日本語 ✓" };
    assert.deepEqual(roundTripCommand(cmd), cmd);
  });

  it("header: a byte order mark is data, kept at the start of name and value", () => {
    const cmd: Command = { type: "header", name: "\uFEFFX-A", value: "\uFEFFv" };
    assert.deepEqual(roundTripCommand(cmd), cmd);
    const mac: Command = { type: "macro", stage: "H", macros: [["{cert_subject}", "\uFEFFrelay"]] };
    assert.deepEqual(roundTripCommand(mac), mac);
  });

  it("body/eom: the decoded chunk is a copy, not a view into the frame", () => {
    const frame = encodeCommand({ type: "body", chunk: bytes("abc") });
    const f = unframe(frame);
    const cmd = value(decodeCommand(f.code, f.payload));
    frame.fill(0);
    assert.deepEqual(cmd, { type: "body", chunk: bytes("abc") });
  });

  it("data/eoh/abort/quit/quit_nc are one code byte", () => {
    const codes: Array<[Command, number]> = [
      [{ type: "data" }, 0x54],
      [{ type: "eoh" }, 0x4e],
      [{ type: "abort" }, 0x41],
      [{ type: "quit" }, 0x51],
      [{ type: "quit_nc" }, 0x4b],
    ];
    for (const [cmd, code] of codes) assert.deepEqual(encodeCommand(cmd), bytes([0, 0, 0, 1, code]));
  });
});

describe("decodeCommand errors (values, never exceptions)", () => {
  const cases: Array<[string, number, Uint8Array, string]> = [
    ["unknown command byte (printable)", 0x5a, bytes(""), "unknown command 'Z'"],
    ["unknown command byte (not printable)", 0x00, bytes(""), "unknown command 0x00"],
    ["unknown command byte (lower case)", 0x63, bytes(""), "unknown command 'c'"],
    ["truncated optneg", 0x4f, bytes([0, 0, 0, 6, 0, 0, 1, 0xff]), "optneg: payload of 8 bytes, expected 12"],
    ["empty optneg", 0x4f, bytes(""), "optneg: payload of 0 bytes, expected 12"],
    ["helo string without NUL", 0x48, bytes("mx.example"), "helo: string without NUL terminator"],
    ["helo without any string", 0x48, bytes(""), "helo: expected at least 1 string(s), got 0"],
    ["mail, second arg without NUL", 0x4d, bytes("<a@b>", [0], "SIZE=1"), "mail: string without NUL terminator"],
    ["rcpt without args", 0x52, bytes(""), "rcpt: expected at least 1 string(s), got 0"],
    ["header with one string", 0x4c, bytes("From", [0]), "header: expected at least 2 string(s), got 1"],
    ["header with three strings", 0x4c, bytes("a", [0], "b", [0], "c", [0]), "header: expected name and value"],
    ["header value without NUL", 0x4c, bytes("From", [0], "x@y"), "header: string without NUL terminator"],
    ["macro with odd string count", 0x44, bytes("C", "j", [0], "mx", [0], "v", [0]), "macro: name without value"],
    ["macro with empty payload", 0x44, bytes(""), "macro: empty payload"],
    ["macro with unknown stage", 0x44, bytes("Z", "i", [0], "q", [0]), "macro: unknown stage 'Z'"],
    ["macro value without NUL", 0x44, bytes("M", "i", [0], "q"), "macro: string without NUL terminator"],
    ["connect with bad family", 0x43, bytes("h", [0], "X", [0, 25], "1.2.3.4", [0]), "connect: unknown family 'X'"],
    ["connect with family byte 0", 0x43, bytes("h", [0], [0]), "connect: unknown family 0x00"],
    ["connect without family", 0x43, bytes("h", [0]), "connect: truncated"],
    ["connect without hostname NUL", 0x43, bytes("h"), "connect: truncated"],
    ["connect with short port", 0x43, bytes("h", [0], "4", [0]), "connect: truncated"],
    ["connect without address", 0x43, bytes("h", [0], "4", [0, 25]), "connect: truncated"],
    ["connect with trailing bytes", 0x43, bytes("h", [0], "4", [0, 25], "a", [0], "x"), "connect: trailing bytes"],
    ["connect unknown family with trailing bytes", 0x43, bytes("h", [0], "U", [0, 25]), "connect: trailing bytes"],
    ["data with payload", 0x54, bytes("x"), "data: unexpected payload of 1 bytes"],
    ["eoh with payload", 0x4e, bytes([0, 0]), "eoh: unexpected payload of 2 bytes"],
    ["abort with payload", 0x41, bytes([0]), "abort: unexpected payload of 1 bytes"],
    ["quit with payload", 0x51, bytes("q"), "quit: unexpected payload of 1 bytes"],
    ["quit_nc with payload", 0x4b, bytes("q"), "quit_nc: unexpected payload of 1 bytes"],
    ["unknown (U) without NUL", 0x55, bytes("XFOO"), "unknown: string without NUL terminator"],
  ];
  for (const [name, code, payload, error] of cases) {
    it(name, () => {
      assert.equal(errorOf(decodeCommand(code, payload)), error);
    });
  }
});

describe("encodeReply / decodeReply", () => {
  const samples: Reply[] = [
    { type: "continue" },
    { type: "accept" },
    { type: "reject" },
    { type: "tempfail" },
    { type: "discard" },
    { type: "skip" },
    { type: "progress" },
    { type: "optneg", version: 6, actions: 0x111, protocol: 0x1ff6fa },
    {
      type: "optneg",
      version: 6,
      actions: 0x111,
      protocol: 0,
      macros: new Map([[1, ["{cert_subject}", "{cert_issuer}"]], [2, ["i"]], [5, ["i"]]]),
    },
    { type: "optneg", version: 2, actions: 0, protocol: 0, macros: new Map([[0, []]]) },
    { type: "replycode", code: 550, text: "5.7.1 queue_id: 4ABC - Security policy violation! - reason: x" },
    { type: "replycode", code: 450, text: "4.7.1 100% sure, %s %% %" },
    { type: "replycode", code: 421, text: "" },
    { type: "addheader", name: "X-ExOTA-Authentication-Results", value: "relay.example;\n  auth=pass" },
    { type: "addheader", name: "X-Empty", value: "" },
    { type: "chgheader", index: 3, name: "X-ExOTA-Authentication-Results", value: "" },
    { type: "chgheader", index: 0xffffffff, name: "Subject", value: "new" },
    { type: "insheader", index: 0, name: "X-First", value: "v" },
  ];
  for (const r of samples) {
    it(`round trip: ${r.type} ${JSON.stringify(r, (_k, v) => (v instanceof Map ? [...v] : v)).slice(0, 70)}`, () => {
      assert.deepEqual(roundTripReply(r), r);
    });
  }

  it("simple replies: exact bytes", () => {
    const table: Array<[Reply, string]> = [
      [{ type: "continue" }, "c"],
      [{ type: "accept" }, "a"],
      [{ type: "reject" }, "r"],
      [{ type: "tempfail" }, "t"],
      [{ type: "discard" }, "d"],
      [{ type: "skip" }, "s"],
      [{ type: "progress" }, "p"],
    ];
    for (const [r, ch] of table) assert.deepEqual(encodeReply(r), bytes([0, 0, 0, 1], ch), r.type);
  });

  it("replycode: % in the text is written as %%", () => {
    const f = encodeReply({ type: "replycode", code: 550, text: "5.7.1 100% sure" });
    assert.deepEqual(f, bytes([0, 0, 0, 22, 0x79], "550 5.7.1 100%% sure", [0]));
    const dec = value(decodeReply(0x79, unframe(f).payload));
    assert.deepEqual(dec, { type: "replycode", code: 550, text: "5.7.1 100% sure" });
  });

  it("optneg reply with macro list: stage u32 then space-separated names", () => {
    const f = encodeReply({ type: "optneg", version: 6, actions: 0x110, protocol: 0, macros: new Map([[1, ["{a}", "b"]]]) });
    assert.deepEqual(
      f,
      bytes([0, 0, 0, 23, 0x4f, 0, 0, 0, 6, 0, 0, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 1], "{a} b", [0]),
    );
  });

  it("optneg reply with an empty macro map decodes without macros", () => {
    const r = roundTripReply({ type: "optneg", version: 6, actions: 1, protocol: 2, macros: new Map() });
    assert.deepEqual(r, { type: "optneg", version: 6, actions: 1, protocol: 2 });
  });

  it("chgheader: exact bytes (u32 index, name, value)", () => {
    const f = encodeReply({ type: "chgheader", index: 2, name: "X-A", value: "" });
    assert.deepEqual(f, bytes([0, 0, 0, 10, 0x6d, 0, 0, 0, 2], "X-A", [0, 0]));
  });

  it("insheader and addheader codes", () => {
    assert.equal(encodeReply({ type: "insheader", index: 1, name: "a", value: "b" })[4], 0x69);
    assert.equal(encodeReply({ type: "addheader", name: "a", value: "b" })[4], 0x68);
  });

  it("encodeReplies concatenates frames in order", () => {
    const replies: Reply[] = [
      { type: "chgheader", index: 1, name: "X-A", value: "" },
      { type: "addheader", name: "X-A", value: "v" },
      { type: "continue" },
    ];
    assert.deepEqual(encodeReplies(replies), concat(replies.map(encodeReply)));
    assert.deepEqual(encodeReplies([{ type: "continue" }]), encodeReply({ type: "continue" }));
    assert.deepEqual(encodeReplies([]), new Uint8Array(0));
  });

  it("encodeReplies: non-ASCII after ASCII, values beyond the first buffer, frames split right", () => {
    const replies: Reply[] = [
      { type: "addheader", name: "X-Ü", value: "a".repeat(300) + "日本語 ✓" + "b".repeat(5000) },
      { type: "chgheader", index: 1, name: "X-B", value: "😀" },
      { type: "replycode", code: 550, text: "5.7.1 no" },
    ];
    const reader = new FrameReader();
    reader.push(encodeReplies(replies));
    assert.deepEqual(replies.map(() => { const f = value(reader.next()); return value(decodeReply(f.code, f.payload)); }), replies);
    assert.equal(reader.next(), undefined);
  });

  it("decodeReply errors", () => {
    assert.equal(errorOf(decodeReply(0x63, bytes("x"))), "continue: unexpected payload");
    assert.equal(errorOf(decodeReply(0x4f, bytes([0, 0, 0, 6]))), "optneg: truncated");
    assert.equal(errorOf(decodeReply(0x4f, bytes([0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))), "optneg: truncated macro list");
    assert.equal(errorOf(decodeReply(0x79, bytes("55 x", [0]))), "replycode: expected 'NNN text'");
    assert.equal(errorOf(decodeReply(0x79, bytes("550 x"))), "replycode: string without NUL terminator");
    assert.equal(errorOf(decodeReply(0x68, bytes("a", [0]))), "addheader: expected at least 2 string(s), got 1");
    assert.equal(errorOf(decodeReply(0x6d, bytes([0, 0]))), "chgheader: truncated");
    assert.equal(errorOf(decodeReply(0x69, bytes([0, 0, 0, 1], "a", [0], "b", [0], "c", [0]))), "insheader: extra strings");
    assert.equal(errorOf(decodeReply(0x7a, bytes(""))), "unknown reply 'z'");
  });
});

describe("FrameReader", () => {
  it("an incomplete frame survives the runtime reusing its read buffer", () => {
    const frame = encodeCommand({ type: "header", name: "From", value: "a@tenant.example" });
    const readBuffer = new Uint8Array(64);
    const r = new FrameReader();
    readBuffer.set(frame.subarray(0, 7));
    r.push(readBuffer.subarray(0, 7));
    assert.equal(r.next(), undefined);
    readBuffer.fill(0xee); // the runtime writes the next read into the same memory
    readBuffer.set(frame.subarray(7));
    r.push(readBuffer.subarray(0, frame.length - 7));
    const f = r.next();
    assert.ok(f?.ok);
    assert.deepEqual(decodeCommand(f.value.code, f.value.payload), { ok: true, value: { type: "header", name: "From", value: "a@tenant.example" } });
  });

  const stream = concat(SAMPLE_COMMANDS.map(encodeCommand));

  it("several frames in one push", () => {
    const r = new FrameReader();
    r.push(stream);
    assert.deepEqual(drain(r), SAMPLE_COMMANDS);
    assert.equal(r.buffered, 0);
    assert.equal(r.next(), undefined);
  });

  it("a frame split at every possible byte position across two pushes", () => {
    const frame = encodeCommand({ type: "header", name: "From", value: "ceo@tenant.example" });
    for (let i = 0; i <= frame.length; i++) {
      const r = new FrameReader();
      r.push(frame.subarray(0, i));
      const first = drain(r);
      assert.deepEqual(first, i === frame.length ? [{ type: "header", name: "From", value: "ceo@tenant.example" }] : [], `split at ${i}`);
      r.push(frame.subarray(i));
      const second = drain(r);
      assert.deepEqual([...first, ...second], [{ type: "header", name: "From", value: "ceo@tenant.example" }], `split at ${i}`);
      assert.equal(r.buffered, 0);
    }
  });

  it("a stream of many frames split at every position across two pushes", () => {
    for (let i = 0; i <= stream.length; i++) {
      const r = new FrameReader();
      r.push(stream.slice(0, i));
      const first = drain(r);
      r.push(stream.slice(i));
      assert.deepEqual([...first, ...drain(r)], SAMPLE_COMMANDS, `split at ${i}`);
    }
  });

  it("one byte per push", () => {
    const r = new FrameReader();
    const got: Command[] = [];
    for (let i = 0; i < stream.length; i++) {
      r.push(stream.subarray(i, i + 1));
      got.push(...drain(r));
    }
    assert.deepEqual(got, SAMPLE_COMMANDS);
  });

  it("empty pushes change nothing", () => {
    const r = new FrameReader();
    r.push(new Uint8Array(0));
    assert.equal(r.next(), undefined);
    const f = encodeCommand({ type: "helo", name: "x" });
    r.push(f.subarray(0, 3));
    r.push(new Uint8Array(0));
    assert.equal(r.next(), undefined);
    assert.equal(r.buffered, 3);
    r.push(f.subarray(3));
    assert.deepEqual(drain(r), [{ type: "helo", name: "x" }]);
  });

  it("returns undefined until the whole frame is there", () => {
    const f = encodeCommand({ type: "body", chunk: new Uint8Array(1000).fill(7) });
    const r = new FrameReader();
    r.push(f.subarray(0, 500));
    assert.equal(r.next(), undefined);
    assert.equal(r.buffered, 500);
    r.push(f.subarray(500));
    assert.equal(r.buffered, f.length);
    const cmd = drain(r);
    assert.deepEqual(cmd, [{ type: "body", chunk: new Uint8Array(1000).fill(7) }]);
  });

  it("a frame of length 0 is an error value, and the error is sticky", () => {
    const r = new FrameReader();
    r.push(bytes([0, 0, 0, 0]));
    assert.equal(errorOf(r.next()), "frame length 0");
    assert.equal(errorOf(r.next()), "frame length 0");
    r.push(encodeCommand({ type: "abort" }));
    assert.equal(errorOf(r.next()), "frame length 0");
  });

  it("a length of 2 GiB is an error value at once (no waiting for the bytes), sticky", () => {
    const r = new FrameReader();
    r.push(bytes([0x7f, 0xff, 0xff, 0xff]));
    const e = errorOf(r.next());
    assert.equal(e, `frame length 2147483647 exceeds the limit of ${DEFAULT_MAX_FRAME} bytes`);
    r.push(encodeCommand({ type: "abort" }));
    assert.equal(errorOf(r.next()), e);
  });

  it("a length of 0xffffffff is an error value", () => {
    const r = new FrameReader();
    r.push(bytes([0xff, 0xff, 0xff, 0xff, 0x41]));
    assert.equal(errorOf(r.next()), `frame length 4294967295 exceeds the limit of ${DEFAULT_MAX_FRAME} bytes`);
  });

  it("an oversized length after valid frames: the valid ones come first", () => {
    const r = new FrameReader();
    r.push(concat([encodeCommand({ type: "abort" }), bytes([0x7f, 0xff, 0xff, 0xff])]));
    assert.deepEqual(value(r.next()), { code: 0x41, payload: new Uint8Array(0) });
    assert.match(errorOf(r.next()), /^frame length 2147483647 exceeds/);
  });

  it("maxFrame is inclusive", () => {
    const r = new FrameReader(16);
    assert.equal(r.maxFrame, 16);
    const ok = encodeCommand({ type: "body", chunk: new Uint8Array(15) }); // length 16
    r.push(ok);
    assert.deepEqual(drain(r), [{ type: "body", chunk: new Uint8Array(15) }]);
    r.push(encodeCommand({ type: "body", chunk: new Uint8Array(16) })); // length 17
    assert.equal(errorOf(r.next()), "frame length 17 exceeds the limit of 16 bytes");
  });

  it("payload views stay valid until the next push", () => {
    const a = encodeCommand({ type: "header", name: "A", value: "one" });
    const b = encodeCommand({ type: "header", name: "B", value: "two" });
    const c = encodeCommand({ type: "header", name: "C", value: "three" });
    const r = new FrameReader();
    // Make the reader own a buffer (partial frame, then the rest with more).
    r.push(concat([a, b, c]).subarray(0, 3));
    r.push(concat([a, b, c]).subarray(3));
    const fa = value(r.next());
    const fb = value(r.next());
    const fc2 = value(r.next());
    assert.equal(r.next(), undefined);
    assert.deepEqual(fa.payload, bytes("A", [0], "one", [0]));
    assert.deepEqual(fb.payload, bytes("B", [0], "two", [0]));
    assert.deepEqual(fc2.payload, bytes("C", [0], "three", [0]));
    assert.equal(fa.code, 0x4c);
  });

  it("decoded commands stay valid across later pushes that reuse the buffer", () => {
    const body = encodeCommand({ type: "body", chunk: bytes("first-chunk") });
    const other = encodeCommand({ type: "body", chunk: bytes("XXXXXXXXXXX") });
    const r = new FrameReader();
    const s = concat([body, other, other]);
    r.push(s.subarray(0, 2));
    r.push(s.subarray(2, body.length + 3)); // owned buffer, a partial second frame pending
    const first = drain(r);
    r.push(s.subarray(body.length + 3)); // overwrites the owned buffer in place
    const rest = drain(r);
    assert.deepEqual(first, [{ type: "body", chunk: bytes("first-chunk") }]);
    assert.deepEqual(rest, [{ type: "body", chunk: bytes("XXXXXXXXXXX") }, { type: "body", chunk: bytes("XXXXXXXXXXX") }]);
  });
});

// ------------------------------------------------------------------ properties

/** One character: printable ASCII, controls (no NUL), %, or any Unicode grapheme. */
const charArb = fc.oneof(
  fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 1 }),
  fc.integer({ min: 1, max: 0x7f }).map((c) => String.fromCharCode(c)),
  fc.constant("%"),
  fc.string({ unit: "grapheme", minLength: 1, maxLength: 1 }),
);
const str = fc.string({ unit: charArb, maxLength: 40 }).map((s) => s.replaceAll("\0", ""));
/** For replycode text: no control characters. */
// deno-lint-ignore no-control-regex
const textNoCtl = str.map((s) => s.replace(/[\x00-\x1f\x7f]/g, ""));
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const stageArb = fc.constantFrom<MacroCommandLetter>("A", "B", "C", "E", "H", "L", "M", "N", "R", "T", "U");
const chunkArb = fc.uint8Array({ maxLength: 300 });
/** fc.record builds null-prototype objects; decoded values are plain objects. */
// deno-lint-ignore no-explicit-any
const rec = <T extends Record<string, fc.Arbitrary<any>>>(model: T) =>
  fc.record(model).map((o) => ({ ...o }) as { [K in keyof T]: T[K] extends fc.Arbitrary<infer U> ? U : never });

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  rec({ type: fc.constant("optneg" as const), version: u32, actions: u32, protocol: u32 }),
  rec({ type: fc.constant("macro" as const), stage: stageArb, macros: fc.array(fc.tuple(str, str), { maxLength: 6 }) }),
  rec({ type: fc.constant("connect" as const), hostname: str, family: fc.constant("unknown" as const) }),
  rec({
    type: fc.constant("connect" as const),
    hostname: str,
    family: fc.constantFrom("unix" as const, "inet" as const, "inet6" as const),
    port: fc.integer({ min: 0, max: 0xffff }),
    address: str,
  }),
  rec({ type: fc.constant("helo" as const), name: str }),
  rec({ type: fc.constantFrom("mail" as const, "rcpt" as const), args: fc.array(str, { minLength: 1, maxLength: 5 }) }),
  rec({ type: fc.constant("header" as const), name: str, value: str }),
  rec({ type: fc.constantFrom("body" as const, "eom" as const), chunk: chunkArb }),
  rec({ type: fc.constant("unknown" as const), line: str }),
  fc.constantFrom<Command>({ type: "data" }, { type: "eoh" }, { type: "abort" }, { type: "quit" }, { type: "quit_nc" }),
);

const macroName = fc.string({ unit: charArb, minLength: 1, maxLength: 15 }).map((s) => s.replace(/[\0 ]/g, "x"));
const replyArb: fc.Arbitrary<Reply> = fc.oneof(
  fc.constantFrom<Reply>(
    { type: "continue" },
    { type: "accept" },
    { type: "reject" },
    { type: "tempfail" },
    { type: "discard" },
    { type: "skip" },
    { type: "progress" },
  ),
  rec({ type: fc.constant("optneg" as const), version: u32, actions: u32, protocol: u32 }),
  rec({
    type: fc.constant("optneg" as const),
    version: u32,
    actions: u32,
    protocol: u32,
    macros: fc.uniqueArray(fc.tuple(u32, fc.array(macroName, { maxLength: 5 })), { minLength: 1, maxLength: 7, selector: (t) => t[0] })
      .map((entries) => new Map(entries)),
  }),
  rec({ type: fc.constant("replycode" as const), code: fc.integer({ min: 100, max: 999 }), text: textNoCtl }),
  rec({ type: fc.constant("addheader" as const), name: str, value: str }),
  rec({ type: fc.constantFrom("insheader" as const, "chgheader" as const), index: u32, name: str, value: str }),
);

describe("properties (fast-check, seed 42)", () => {
  it("decodeCommand(encodeCommand(x)) deep-equals x (1000 runs)", () => {
    fc.assert(
      fc.property(commandArb, (cmd) => {
        assert.deepEqual(roundTripCommand(cmd), cmd);
      }),
      { seed: 42, numRuns: 1000 },
    );
  });

  it("decodeReply(encodeReply(x)) deep-equals x (1000 runs)", () => {
    fc.assert(
      fc.property(replyArb, (reply) => {
        assert.deepEqual(roundTripReply(reply), reply);
      }),
      { seed: 42, numRuns: 1000 },
    );
  });

  it("any command sequence, cut into arbitrary chunks, reads back the same (300 runs)", () => {
    fc.assert(
      fc.property(
        fc.array(commandArb, { maxLength: 12 }),
        fc.array(fc.integer({ min: 0, max: 400 }), { maxLength: 20 }),
        (cmds, cuts) => {
          const s = concat(cmds.map(encodeCommand));
          const points = [...new Set(cuts.map((c) => Math.min(c, s.length)))].sort((x, y) => x - y);
          const r = new FrameReader();
          const got: Command[] = [];
          let prev = 0;
          for (const p of [...points, s.length]) {
            r.push(s.slice(prev, p));
            got.push(...drain(r));
            prev = p;
          }
          assert.deepEqual(got, cmds);
          assert.equal(r.buffered, 0);
        },
      ),
      { seed: 42, numRuns: 300 },
    );
  });

  it("arbitrary bytes through FrameReader + decodeCommand never throw (2000 runs)", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), fc.integer({ min: 16, max: 128 }), (chunks, max) => {
        const r = new FrameReader(max);
        let errors = 0;
        for (const chunk of chunks) {
          r.push(chunk);
          for (let n = 0; n < 100; n++) {
            const f = r.next();
            if (f === undefined) break;
            if (!f.ok) {
              errors++;
              break;
            }
            const d = decodeCommand(f.value.code, f.value.payload);
            assert.equal(typeof d.ok, "boolean");
          }
        }
        assert.ok(errors <= chunks.length);
      }),
      { seed: 42, numRuns: 2000 },
    );
  });

  it("arbitrary code bytes and payloads: decodeCommand and decodeReply never throw (2000 runs)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 64 }), (code, payload) => {
        const c = decodeCommand(code, payload);
        const r = decodeReply(code, payload);
        assert.equal(typeof c.ok, "boolean");
        assert.equal(typeof r.ok, "boolean");
      }),
      { seed: 42, numRuns: 2000 },
    );
  });
});
