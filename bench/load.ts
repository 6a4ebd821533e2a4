/**
 * milter-load: the MTA side of milter protocol 6, driven the way Postfix 3.x
 * drives a filter, as a load generator that checks every verdict.
 *
 *   bun bench/load.ts -s unix:/run/exota.sock -c 8 -d 3 -r 0.1 --pid 1234 \
 *       --expect policy --expect-header X-ExOTA-Authentication-Results
 *   bun bench/load.ts --print-policy > policy.json
 *   bun bench/load.ts --help
 *
 * Per milter connection (what Postfix's milter8.c does):
 * - OPTNEG: offers version 6, actions 0x1ff, protocol 0x1fffff; honours the
 *   filter's NO* (do not send) and NR_* (no reply) bits, HDR_LEADSPC and the
 *   per-stage macro lists of SETSYMLIST (Postfix's defaults elsewhere).
 * - Macros before every event, also before events the filter skips:
 *   D C + C, D H + H ({cert_subject} with the HELO macros), then per message
 *   D M + M (i from MAIL on), D R + R, D T + T, (D L + L) per header, D N + N,
 *   D B + B (one 2 KB body chunk), D E + E; ABORT after every message
 *   (Postfix's mail_reset), ABORT + QUIT at the end of the session.
 * - Frames that need no reply are buffered with the next one that does and
 *   go out in one write, as Postfix's VSTREAM does (flushed before each read);
 *   but the envelope (written by smtpd) and the content (written by the
 *   cleanup server from the headers on) are separate writes, even when no
 *   reply comes in between. No TCP_NODELAY, as Postfix. `--frame-writes`
 *   writes every frame on its own (the worst case for Nagle), `--one-write`
 *   a message in one, `--nodelay` sets TCP_NODELAY.
 * - Messages: ~17 Exchange Online headers: an Authentication-Results header of
 *   the trusted authserv-id on top, Received, DKIM-Signature, From, the tenant
 *   id header, and a forged X-ExOTA-Authentication-Results the filter must
 *   remove. `-r` mixes in messages from a domain without a policy.
 *
 * Checks: every accepted-by-design message must be continued/accepted (with the
 * expected added header and removal, if asked), every reject-by-design one
 * rejected with a 5xx naming its queue id; any protocol error fails the run.
 *
 * Measures: messages/s, latency p50/p90/p99/max (first byte of MAIL to the
 * final reply), and with `--pid` the filter process's CPU per message (utime +
 * stime from /proc/PID/stat) and peak RSS (VmHWM from /proc/PID/status).
 * @module
 */
import { readFileSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import { decodeReply, encodeCommand, FrameReader } from "../src/milter/codec.ts";
import { Action, MacroStage, Proto } from "../src/milter/protocol.ts";
import type { Command, MacroCommandLetter, Reply } from "../src/milter/types.ts";
import { parseSocketSpec, type SocketSpec } from "../src/server/socket-spec.ts";
import type { Socket } from "bun";

// ------------------------------------------------------------------ options

export interface LoadOptions {
  readonly socket: string;
  /** Parallel milter connections. */
  readonly concurrency: number;
  /** Messages per connection (ABORT between them); 0 = unlimited. */
  readonly perConn: number;
  /** Messages to measure; 0 = until `duration`. */
  readonly messages: number;
  /** Seconds of measuring at most. */
  readonly duration: number;
  /** Seconds of load before measuring starts (JIT, caches). */
  readonly warmup: number;
  /** Connections opened per second at most, over all slots (0: no limit); with perConn 1, the pace of a relay. */
  readonly rate: number;
  readonly rejectRatio: number;
  readonly domains: readonly string[];
  readonly badDomain: string;
  readonly authservId: string;
  readonly expect: "policy" | "continue" | "none";
  /** Every continued message must get this header added. */
  readonly expectHeader: string | undefined;
  /** Every continued message must get its (forged) header of this name deleted. */
  readonly expectRemoval: string | undefined;
  readonly bodySize: number;
  readonly timeoutMs: number;
  /** The filter process, for CPU and RSS. */
  readonly pid: number | undefined;
  readonly nodelay: boolean;
  readonly frameWrites: boolean;
  /** Envelope and content in one write, unlike Postfix (smtpd, then cleanup). */
  readonly oneWrite: boolean;
  /** Send SIGHUP to `pid` this many seconds into the measurement. */
  readonly hupAt: number | undefined;
  /** Open this many connections, one message each, keep them idle, report the filter's RSS. */
  readonly idle: number;
  /** Seconds to hold idle connections open before reading RSS. */
  readonly idleHold: number;
  /** Messages each idle connection sends before it goes idle (0: only negotiation, CONNECT, HELO). */
  readonly idleMessages: number;
  readonly label: string;
  readonly quiet: boolean;
  readonly verbose: boolean;
}

export const DEFAULT_DOMAINS = ["contoso.example", "fabrikam.example", "northwind.example", "tailspin.example"];

export const DEFAULTS: LoadOptions = {
  socket: "",
  concurrency: 1,
  perConn: 10,
  messages: 0,
  duration: 3,
  warmup: 0.5,
  rate: 0,
  rejectRatio: 0,
  domains: DEFAULT_DOMAINS,
  badDomain: "unlisted-tenant.example",
  authservId: "relay.bench.example",
  expect: "policy",
  expectHeader: undefined,
  expectRemoval: undefined,
  bodySize: 2048,
  timeoutMs: 10000,
  pid: undefined,
  nodelay: false,
  frameWrites: false,
  oneWrite: false,
  hupAt: undefined,
  idle: 0,
  idleHold: 1,
  idleMessages: 1,
  label: "-",
  quiet: false,
  verbose: false,
};

export interface LoadResult {
  readonly label: string;
  readonly socket: string;
  readonly concurrency: number;
  readonly negotiated: string;
  /** Messages completed while measuring. */
  readonly messages: number;
  readonly seconds: number;
  readonly rate: number;
  /** Latencies in milliseconds. */
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
  readonly verdicts: Readonly<Record<string, number>>;
  readonly rejectDesigned: number;
  readonly headersAdded: number;
  readonly headersRemoved: number;
  readonly verifyFailures: number;
  readonly protocolErrors: number;
  readonly connections: number;
  /** Filter CPU (user + system) per message in ms, when `pid` is known. */
  readonly filterCpuMs: number | undefined;
  /** Filter peak RSS (VmHWM) in KiB at the end, when `pid` is known. */
  readonly filterHwmKb: number | undefined;
  readonly filterRssKb: number | undefined;
  /** Generator CPU per message in microseconds. */
  readonly generatorCpuUs: number;
  /** Largest latency of a message in flight after the SIGHUP (ms). */
  readonly maxAfterHup: number | undefined;
  readonly idleConnections: number | undefined;
  readonly ok: boolean;
  readonly errors: readonly string[];
}

// ------------------------------------------------------------- /proc reading

const CLK_TCK = 100;

/** utime + stime of a process (all threads) in ms, from /proc/PID/stat. */
export function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
}

/** VmHWM and VmRSS of a process in KiB. */
export function procMemKb(pid: number): { hwm: number; rss: number } {
  const status = readFileSync(`/proc/${pid}/status`, "latin1");
  const num = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
  return { hwm: num("VmHWM"), rss: num("VmRSS") };
}

// ------------------------------------------------------------ message data

/** FNV-1a of a domain, as the C miltload computes its tenant ids. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i) & 0xff;
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h >>> 0;
}

/** The tenant id of a domain (same as `miltload --print-policy`). */
export function tenantId(domain: string): string {
  const h = fnv1a(domain);
  const low = Math.imul(h, 2654435761) >>> 0;
  return `${h.toString(16).padStart(8, "0")}-18c5-45e8-88de-${low.toString(16).padStart(12, "0")}`;
}

/** A JSON policy matching `domains`, in the layout of `miltload --print-policy`. */
export function policyJson(domains: readonly string[]): string {
  const body = domains.map((d) =>
    `  "${d}": {\n    "tenant_id": "${tenantId(d)}",\n    "dkim_enabled": true,\n    "dkim_alignment_required": true\n  }`
  );
  return `{\n${body.join(",\n")}\n}\n`;
}

const QID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";

/** A Postfix long queue id (12 characters), as miltload makes them. */
export function queueId(idx: number): string {
  let v = idx + 0x2f1c0ffee;
  let s = "";
  do {
    s = QID_ALPHABET[v % 52]! + s;
    v = Math.floor(v / 52);
  } while (v > 0 && s.length < 20);
  return "4" + s.padStart(11, "0");
}

/** Placeholders patched per message: same length as a queue id / a sequence number. */
const QID_LEN = 12;
const SEQ_LEN = 12;
const QID_MARK = "\x01".repeat(QID_LEN);
const SEQ_MARK = "\x02".repeat(SEQ_LEN);

const DKIM_B = "Zk3jxhQ1mT0yqk3bWm8mB2vYp7HcYQ5kGXw3d3Cz1yTB7f0uXJ2r1qkP1xq8z0B8u8wFQZ8vn2y7cR1m5TqZpK3b9Hq1yVJw0bX2tq3mZ8pX3l5cW0sQh2Tj8uYH1fZk3e4bLJ1gq9nXo6wC" +
  "2cXb7m0uJqYH3l8vR5sT1fKq2bNn9yW4pZ3x0dB6hUe1kG7aMiL5oQ8rS2tV4wX6yZ0aB3cD5eF7gH9iJ1kL3mN5oP7qR9sT1uV3wX5yZ7aB9cD1eF3gH5iJ7kL9mN1oP3qR5sT7uV9wX1y";

/** The header fields of an outbound Exchange Online message, as the relay's milters see it. */
function messageHeaders(domain: string, authservId: string): Array<[string, string]> {
  const b = [0, 1, 2, 3].map((i) => DKIM_B.slice(i * 64, i * 64 + 64));
  return [
    // Added on top by the relay's DKIM verifier (an earlier milter).
    ["Authentication-Results", `${authservId};\n\tdkim=pass (2048-bit key; unprotected) header.d=${domain} header.i=@${domain} header.a=rsa-sha256 header.s=selector1 header.b=Zk3jxhQ1`],
    ["Received", "from DB9PR07MB1234.eurprd07.prod.outlook.com ([fe80::1c4a:9f00:2b1d:7e21]) by DB9PR07MB1234.eurprd07.prod.outlook.com ([fe80::1c4a:9f00:2b1d:7e21%7]) with mapi id 15.20.8207.017; Sat, 28 Nov 2026 06:31:05 +0000"],
    ["DKIM-Signature", `v=1; a=rsa-sha256; c=relaxed/relaxed; d=${domain}; s=selector1;\n\th=From:Date:Subject:Message-ID:Content-Type:MIME-Version:X-MS-Exchange-SenderADCheck;\n\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n\tb=${b[0]}\n\t ${b[1]}\n\t ${b[2]}\n\t ${b[3]}`],
    ["From", `"Alice Example" <alice@${domain}>`],
    ["To", `"Bob Receiver" <bob@example.net>`],
    ["Subject", `Quarterly report ${SEQ_MARK}`],
    ["Date", "Sat, 28 Nov 2026 06:31:05 +0000"],
    ["Message-ID", `<DB9PR07MB1234${SEQ_MARK}${QID_MARK}@DB9PR07MB1234.eurprd07.prod.outlook.com>`],
    ["MIME-Version", "1.0"],
    ["Content-Type", `text/plain; charset="us-ascii"`],
    ["X-MS-Has-Attach", ""],
    ["X-OriginatorOrg", domain],
    ["X-MS-Exchange-CrossTenant-Network-Message-Id", `5f0c2a9e-7b1d-4c3e-9a8f-${SEQ_MARK}`],
    ["X-MS-Exchange-CrossTenant-originalarrivaltime", "28 Nov 2026 06:31:04.8310 (UTC)"],
    ["X-MS-Exchange-CrossTenant-Id", tenantId(domain)],
    ["X-MS-Exchange-Transport-CrossTenantHeadersStamped", "AM0PR07MB5678"],
    // Forged by the sender: the filter must remove it.
    ["X-ExOTA-Authentication-Results", `${authservId};\n  auth=pass 5322_from_domain=${domain} dkim=True dkim_aligned=True x509_client_trust=True forwarded=False`],
  ];
}

function textBody(size: number): Uint8Array {
  let s = "";
  for (let line = 1; s.length < size; line++) {
    s += `Line ${String(line).padStart(3, "0")} of the quarterly report: revenue, costs and forecast figures =\r\n`;
  }
  return new TextEncoder().encode(s.slice(0, size));
}

// --------------------------------------------------------------- protocol

/** What the generator waits for. */
const Step = { NONE: -1, OPTNEG: 0, CONNECT: 1, HELO: 2, MAIL: 3, RCPT: 4, DATA: 5, HEADER: 6, EOH: 7, BODY: 8, EOM: 9 } as const;
type Step = typeof Step[keyof typeof Step];
const STEP_NAMES = ["OPTNEG", "CONNECT", "HELO", "MAIL", "RCPT", "DATA", "HEADER", "EOH", "BODY", "EOM"];

const OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff } as const;

/** Postfix 3.x default macro lists (milter_*_macros), by set-macro-list stage. */
const POSTFIX_MACROS: Record<number, readonly string[]> = {
  [MacroStage.CONNECT]: ["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
  [MacroStage.HELO]: ["{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"],
  [MacroStage.ENVFROM]: ["i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"],
  [MacroStage.ENVRCPT]: ["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
  [MacroStage.DATA]: ["i"],
  [MacroStage.EOH]: ["i"],
  [MacroStage.EOM]: ["i"],
};

/** Chronological rank of a stage: which macros are defined yet. */
const Rank = { CONNECT: 0, HELO: 1, MAIL: 2, RCPT: 3, DATA: 4, EOH: 5, EOM: 6 } as const;

const CLIENT = { name: "mail-db5eur03on2053.outbound.protection.outlook.com", ip: "40.107.22.53", port: 41234 };
const HELO_NAME = "EUR03-DB5-obe.outbound.protection.outlook.com";
const MY_HOSTNAME = "relay.bench.example";

/** The value Postfix would send for a macro at a stage; undefined ones are not sent. */
function macroValue(name: string, rank: number, domain: string | undefined): string | undefined {
  const n = name.length > 2 && name.startsWith("{") && name.endsWith("}") ? name.slice(1, -1) : name;
  switch (n) {
    case "j":
    case "daemon_name":
      return MY_HOSTNAME;
    case "daemon_addr":
      return "192.0.2.25";
    case "v":
      return "Postfix 3.7.11";
    case "_":
      return `${CLIENT.name} [${CLIENT.ip}]`;
    case "client_addr":
      return CLIENT.ip;
    case "client_name":
      return CLIENT.name;
  }
  if (rank >= Rank.HELO) {
    switch (n) {
      case "tls_version":
        return "TLSv1.3";
      case "cipher":
        return "TLS_AES_256_GCM_SHA384";
      case "cipher_bits":
        return "256";
      case "cert_subject":
        return "mail.protection.outlook.com";
      case "cert_issuer":
        return "DigiCert Cloud Services CA-1";
    }
  }
  if (domain === undefined) return undefined;
  if (n === "i" && rank >= Rank.MAIL) return QID_MARK;
  if (rank >= Rank.MAIL) {
    if (n === "mail_addr") return `alice@${domain}`;
    if (n === "mail_host") return domain;
    if (n === "mail_mailer") return "smtp";
  }
  if (rank >= Rank.RCPT) {
    if (n === "rcpt_addr") return "bob@example.net";
    if (n === "rcpt_host") return "example.net";
    if (n === "rcpt_mailer") return "smtp";
  }
  return undefined;
}

interface Negotiated {
  readonly version: number;
  readonly actions: number;
  readonly protocol: number;
  /** Macro names per set-macro-list stage. */
  readonly macros: ReadonlyMap<number, readonly string[]>;
  readonly key: string;
}

/** Bytes to write, ending with a frame that waits for `wait` (or none). */
interface Segment {
  readonly bytes: Uint8Array;
  readonly wait: Step;
  /** Written at once even without a reply to wait for (see `flush()`). */
  readonly flush: boolean;
  readonly qidAt: readonly number[];
  readonly seqAt: readonly number[];
}

function findAll(bytes: Uint8Array, mark: number, len: number): number[] {
  const out: number[] = [];
  for (let i = 0; i + len <= bytes.length; i++) {
    if (bytes[i] !== mark) continue;
    let j = 1;
    while (j < len && bytes[i + j] === mark) j++;
    if (j === len) {
      out.push(i);
      i += len - 1;
    }
  }
  return out;
}

/** Collects frames into segments: frames without a reply join the next one that has one. */
class SegmentBuilder {
  readonly segments: Segment[] = [];
  #pending: Uint8Array[] = [];

  constructor(readonly frameWrites: boolean) {}

  add(cmd: Command, wait: Step = Step.NONE): void {
    this.#pending.push(encodeCommand(cmd));
    if (wait !== Step.NONE || this.frameWrites) this.cut(wait);
  }

  /**
   * Writes what is buffered even though no reply is due: Postfix's smtpd
   * sends the envelope (MAIL, RCPT, DATA stages) and its cleanup process the
   * content (headers to end of message) through separate buffers.
   */
  flush(): void {
    this.cut(Step.NONE, true);
  }

  /** Ends the current segment (it may wait for nothing). */
  cut(wait: Step = Step.NONE, flush = false): void {
    if (this.#pending.length === 0) return;
    const size = this.#pending.reduce((n, b) => n + b.length, 0);
    const bytes = new Uint8Array(size);
    let p = 0;
    for (const b of this.#pending) {
      bytes.set(b, p);
      p += b.length;
    }
    this.#pending = [];
    this.segments.push({ bytes, wait, flush, qidAt: findAll(bytes, 1, QID_LEN), seqAt: findAll(bytes, 2, SEQ_LEN) });
  }
}

interface Setup {
  readonly neg: Negotiated;
  /** Segments of the connection setup (CONNECT, HELO stages). */
  readonly connect: readonly Segment[];
}

/** Builds the frames of one stage: macros, then the command unless skipped. */
function stage(
  b: SegmentBuilder,
  neg: Negotiated,
  macroStage: number,
  letter: MacroCommandLetter,
  rank: number,
  domain: string | undefined,
  cmd: Command | undefined,
  skipFlag: number,
  noReplyFlag: number,
  step: Step,
  sendMacros = true,
): void {
  if (sendMacros) {
    const names = neg.macros.get(macroStage) ?? POSTFIX_MACROS[macroStage]!;
    const macros: Array<[string, string]> = [];
    for (const name of names) {
      const v = macroValue(name, rank, domain);
      if (v !== undefined) macros.push([name, v]);
    }
    b.add({ type: "macro", stage: letter, macros });
  }
  if (cmd === undefined || (neg.protocol & skipFlag) !== 0) return;
  b.add(cmd, (neg.protocol & noReplyFlag) !== 0 ? Step.NONE : step);
}

function buildSetup(neg: Negotiated, frameWrites: boolean): Setup {
  const b = new SegmentBuilder(frameWrites);
  stage(b, neg, MacroStage.CONNECT, "C", Rank.CONNECT, undefined,
    { type: "connect", hostname: CLIENT.name, family: "inet", port: CLIENT.port, address: CLIENT.ip },
    Proto.NOCONNECT, Proto.NR_CONN, Step.CONNECT);
  stage(b, neg, MacroStage.HELO, "H", Rank.HELO, undefined, { type: "helo", name: HELO_NAME }, Proto.NOHELO, Proto.NR_HELO, Step.HELO);
  b.cut();
  return { neg, connect: b.segments };
}

/** The segments of one message; the last waits for the end-of-message reply. */
function buildMessage(neg: Negotiated, domain: string, opts: LoadOptions, body: Uint8Array, withAbort: boolean): Segment[] {
  const b = new SegmentBuilder(opts.frameWrites);
  if (withAbort) b.add({ type: "abort" });
  const p = neg.protocol;
  stage(b, neg, MacroStage.ENVFROM, "M", Rank.MAIL, domain, { type: "mail", args: [`<alice@${domain}>`, `SIZE=${body.length + 4096}`] },
    Proto.NOMAIL, Proto.NR_MAIL, Step.MAIL);
  stage(b, neg, MacroStage.ENVRCPT, "R", Rank.RCPT, domain, { type: "rcpt", args: ["<bob@example.net>"] }, Proto.NORCPT, Proto.NR_RCPT, Step.RCPT);
  stage(b, neg, MacroStage.DATA, "T", Rank.DATA, domain, { type: "data" }, Proto.NODATA, Proto.NR_DATA, Step.DATA);
  if (!opts.oneWrite) b.flush();
  if ((p & Proto.NOHDRS) === 0) {
    const lead = (p & Proto.HDR_LEADSPC) !== 0 ? " " : "";
    for (const [name, value] of messageHeaders(domain, opts.authservId)) {
      stage(b, neg, MacroStage.EOH, "L", Rank.EOH, domain, { type: "header", name, value: lead + value }, 0, Proto.NR_HDR, Step.HEADER);
    }
  }
  if ((p & Proto.NOEOH) === 0) {
    stage(b, neg, MacroStage.EOH, "N", Rank.EOH, domain, { type: "eoh" }, 0, Proto.NR_EOH, Step.EOH);
  }
  if ((p & Proto.NOBODY) === 0 && body.length > 0) {
    stage(b, neg, MacroStage.EOM, "B", Rank.EOM, domain, { type: "body", chunk: body }, 0, Proto.NR_BODY, Step.BODY);
  }
  stage(b, neg, MacroStage.EOM, "E", Rank.EOM, domain, { type: "eom", chunk: new Uint8Array(0) }, 0, 0, Step.EOM);
  return b.segments;
}

const ACTION_NAMES: Record<string, number> = Action;
const PROTO_NAMES: Record<string, number> = Proto;
const bitNames = (bits: number, table: Record<string, number>) =>
  Object.entries(table).filter(([, b]) => (bits & b) !== 0).map(([n]) => n).join(",");

function describeNegotiation(n: Negotiated): string {
  let s = `version=${n.version} actions=0x${n.actions.toString(16)}[${bitNames(n.actions, ACTION_NAMES)}] ` +
    `protocol=0x${n.protocol.toString(16)}[${bitNames(n.protocol, PROTO_NAMES)}]`;
  for (const [stageNo, names] of n.macros) s += ` macros[${stageNo}]=${names.join(",")}`;
  return s;
}

// ------------------------------------------------------------------ the run

const ABORT = encodeCommand({ type: "abort" });
const QUIT = encodeCommand({ type: "quit" });
/** End of an SMTP session: Postfix's final mail_reset (ABORT), then QUIT. */
const ABORT_QUIT = concat(ABORT, QUIT);
/** The same after a message, whose own ABORT is still buffered. */
const ABORT_ABORT_QUIT = concat(ABORT, ABORT_QUIT);
const CONTINUE: Reply = { type: "continue" };
const OPTNEG = encodeCommand({ type: "optneg", ...OFFER });

type Verdict = "continue" | "accept" | "reject" | "tempfail" | "discard" | "shutdown";

interface Conn {
  id: number;
  /** Index among the parallel connections (kept across reconnects). */
  slot: number;
  sock: Socket<undefined> | undefined;
  reader: FrameReader;
  /** The reply awaited, and since when. */
  wait: Step;
  tWait: number;
  neg: Negotiated | undefined;
  /** Frames without a reply, written with the next frame that has one. */
  pending: Uint8Array | undefined;
  /** Bytes a partial write left for `drain`. */
  backlog: Uint8Array | undefined;
  msgsOnConn: number;
  closing: boolean;
  // the message in flight
  inMsg: boolean;
  /** Started while measuring. */
  counted: boolean;
  segs: readonly Segment[];
  segIdx: number;
  kind: 0 | 1;
  qid: string;
  tStart: number;
  added: number;
  removed: number;
  reply: string;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length));
  return sorted[i]!;
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const parsed = parseSocketSpec(opts.socket);
  if (!parsed.ok) throw new Error(`--socket: ${parsed.error}`);
  const spec: SocketSpec = parsed.value;
  if (spec.kind === "tcp" && !/^(127\.\d+\.\d+\.\d+|::1)$/.test(spec.host)) {
    throw new Error(`refusing ${spec.host}: only loopback addresses (127.x.x.x, ::1)`);
  }
  const idleMode = opts.idle > 0;
  const body = textBody(opts.bodySize);
  const errors: string[] = [];
  const note = (e: string) => {
    if (errors.length >= 20) return;
    errors.push(e);
    if (!opts.quiet) process.stderr.write(`milter-load: ${e}\n`);
  };

  // Templates per negotiation and domain; each connection slot patches its own copy per message.
  const setups = new Map<string, Setup>();
  const templates = new Map<string, Segment[]>();
  /** Per slot: negotiation key, and copies by domain index * 2 + withAbort. */
  const slotTemplates: Array<{ key: string; copies: Array<Segment[] | undefined> }> = [];
  const messageSegments = (slot: number, neg: Negotiated, domainIdx: number, withAbort: boolean): Segment[] => {
    let mine = slotTemplates[slot];
    if (mine === undefined || mine.key !== neg.key) mine = slotTemplates[slot] = { key: neg.key, copies: [] };
    const i = domainIdx * 2 + (withAbort ? 1 : 0);
    let t = mine.copies[i];
    if (t === undefined) {
      const domain = domainIdx < opts.domains.length ? opts.domains[domainIdx]! : opts.badDomain;
      const key = `${neg.key}|${domain}|${withAbort}`;
      let shared = templates.get(key);
      if (shared === undefined) {
        shared = buildMessage(neg, domain, opts, body, withAbort);
        templates.set(key, shared);
      }
      t = mine.copies[i] = shared.map((s) => ({ ...s, bytes: s.bytes.slice() }));
    }
    return t;
  };

  // Statistics of the measured messages.
  let latencies = new Float64Array(1 << 16);
  let nLat = 0;
  const verdicts: Record<Verdict, number> = { continue: 0, accept: 0, reject: 0, tempfail: 0, discard: 0, shutdown: 0 };
  let rejectDesigned = 0, headersAdded = 0, headersRemoved = 0, verifyFailures = 0, protocolErrors = 0, connections = 0;
  let negotiated = "(never)";
  let hupSentAt: number | undefined;
  let maxAfterHup: number | undefined;

  const tStart0 = performance.now();
  let measuring = false;
  let tMeasure = 0;
  let tEnd = 0;
  let cpu0 = 0;
  let gen0 = process.cpuUsage();
  let stopStarting = false;
  let nextMsg = 0;
  let measuredStarted = 0;
  const mixPpm = Math.round(opts.rejectRatio * 1e6);

  const startMeasuring = () => {
    measuring = true;
    tMeasure = performance.now();
    if (opts.pid !== undefined) cpu0 = procCpuMs(opts.pid);
    gen0 = process.cpuUsage();
    if (opts.hupAt !== undefined && opts.pid !== undefined) {
      const pid = opts.pid;
      setTimeout(() => {
        hupSentAt = performance.now();
        process.kill(pid, "SIGHUP");
      }, opts.hupAt * 1000);
    }
  };
  if (opts.warmup <= 0 || idleMode) startMeasuring();

  let finished: () => void = () => {};
  let done = new Promise<void>((r) => (finished = r));
  const conns: Array<Conn | undefined> = [];
  let open = 0;
  let idleReady = 0;
  let idleLost = 0;
  /** Idle mode ends when every connection is idle or lost (a lost one fails the run). */
  const checkIdle = () => {
    if (idleMode && idleReady + idleLost >= opts.idle) finished();
  };

  const fail = (c: Conn, what: string) => {
    protocolErrors++;
    note(`protocol error on connection ${c.id} (waiting for ${STEP_NAMES[c.wait] ?? "-"}${c.inMsg ? `, message ${c.qid}` : ""}): ${what}`);
    if (c.inMsg) verifyFailures++;
    c.inMsg = false;
    c.closing = true;
    c.wait = Step.NONE;
    c.sock?.terminate();
  };

  /** Writes now; what the kernel does not take waits for `drain`. */
  const write = (c: Conn, bytes: Uint8Array) => {
    if (c.pending !== undefined) {
      bytes = concat(c.pending, bytes);
      c.pending = undefined;
    }
    if (c.backlog !== undefined) {
      c.backlog = concat(c.backlog, bytes);
      return;
    }
    const n = c.sock!.write(bytes);
    if (n >= 0 && n < bytes.length) c.backlog = bytes.slice(n);
  };

  /** Buffers frames that need no reply until the next write, as Postfix's VSTREAM does. */
  const buffer = (c: Conn, bytes: Uint8Array) => {
    if (opts.frameWrites) write(c, bytes);
    else c.pending = c.pending === undefined ? bytes.slice() : concat(c.pending, bytes);
  };

  /** Sends segments from the current one on until one waits for a reply. */
  const advance = (c: Conn) => {
    while (c.segIdx < c.segs.length) {
      const seg = c.segs[c.segIdx++]!;
      if (seg.wait === Step.NONE) {
        if (seg.flush) write(c, seg.bytes);
        else buffer(c, seg.bytes);
        continue;
      }
      write(c, seg.bytes);
      c.wait = seg.wait;
      c.tWait = performance.now();
      return;
    }
    // The connection setup needed no reply: the first message follows in the same write.
    if (!c.inMsg) startMessage(c);
  };

  const claim = (): number | undefined => {
    if (stopStarting) return undefined;
    if (idleMode) return nextMsg < opts.idle * opts.idleMessages ? nextMsg++ : undefined;
    const now = performance.now();
    if (!measuring && now - tStart0 >= opts.warmup * 1000) startMeasuring();
    if (measuring) {
      if ((opts.messages > 0 && measuredStarted >= opts.messages) || (opts.messages === 0 && now - tMeasure >= opts.duration * 1000)) {
        stopStarting = true;
        return undefined;
      }
      measuredStarted++;
    }
    return nextMsg++;
  };

  const startMessage = (c: Conn) => {
    if (idleMode && c.msgsOnConn >= opts.idleMessages) {
      // Idle from now on (its ABORT goes out with the QUIT at the end). What
      // waits in the buffer (CONNECT and HELO when no message was sent) goes
      // out now, as Postfix sends it when the SMTP client gets that far.
      if (c.pending !== undefined) write(c, new Uint8Array(0));
      c.wait = Step.NONE;
      idleReady++;
      checkIdle();
      return;
    }
    const idx = opts.perConn > 0 && c.msgsOnConn >= opts.perConn ? undefined : claim();
    if (idx === undefined) return endSession(c);
    const bad = Math.floor(((idx + 1) * mixPpm) / 1e6) !== Math.floor((idx * mixPpm) / 1e6);
    c.kind = bad ? 1 : 0;
    c.qid = queueId(idx);
    const segs = messageSegments(c.slot, c.neg!, bad ? opts.domains.length : idx % opts.domains.length, c.msgsOnConn > 0);
    // Queue id and sequence number into the template (ASCII, fixed width).
    const seq = String(idx).padStart(SEQ_LEN, "0");
    for (const s of segs) {
      for (const at of s.qidAt) putAscii(s.bytes, at, c.qid);
      for (const at of s.seqAt) putAscii(s.bytes, at, seq);
    }
    c.segs = segs;
    c.segIdx = 0;
    c.inMsg = true;
    c.counted = measuring;
    if (bad && measuring) rejectDesigned++;
    c.added = c.removed = 0;
    c.reply = "";
    c.tStart = performance.now();
    advance(c);
  };

  const endSession = (c: Conn) => {
    c.closing = true;
    c.wait = Step.NONE;
    write(c, c.msgsOnConn > 0 ? ABORT_ABORT_QUIT : ABORT_QUIT);
    c.sock?.end();
  };

  const finishMessage = (c: Conn, verdict: Verdict, atEom: boolean) => {
    const now = performance.now();
    const lat = now - c.tStart;
    c.inMsg = false;
    c.msgsOnConn++;
    const accepted = verdict === "continue" || verdict === "accept";
    if (c.counted) {
      if (nLat === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      latencies[nLat++] = lat;
      verdicts[verdict]++;
      tEnd = now;
      if (hupSentAt !== undefined) maxAfterHup = Math.max(maxAfterHup ?? 0, lat);
      if (accepted) {
        headersAdded += c.added;
        headersRemoved += c.removed;
      }
    }
    let bad = false;
    if (opts.expect === "policy") bad = c.kind === 0 ? !accepted : verdict !== "reject";
    else if (opts.expect === "continue") bad = !accepted;
    if (accepted && opts.expect !== "none") {
      if (opts.expectHeader !== undefined && c.added !== 1) bad = true;
      if (opts.expectRemoval !== undefined && c.removed !== 1) bad = true;
    }
    if (c.reply !== "" && atEom) {
      const m = /queue_id: (\S+)/.exec(c.reply);
      if (m !== null && m[1] !== c.qid) bad = true;
    }
    if (bad) {
      verifyFailures++;
      note(`verify mismatch: message ${c.qid} (${c.kind === 1 ? "reject" : "accept"}-designed) got ${verdict}` +
        ` added=${c.added} removed=${c.removed}${c.reply ? ` reply="${c.reply}"` : ""}`);
    }
  };

  const onReply = (c: Conn, reply: Reply) => {
    const w = c.wait;
    if (w === Step.NONE) return fail(c, `unsolicited reply '${reply.type}'`);
    if (w === Step.OPTNEG) {
      if (reply.type !== "optneg") return fail(c, `expected the OPTNEG reply, got '${reply.type}'`);
      if (reply.version > 6 || reply.version < 2) return fail(c, `filter protocol version ${reply.version}`);
      if ((reply.actions & ~OFFER.actions) !== 0) return fail(c, `filter requests actions 0x${reply.actions.toString(16)}, not offered`);
      const macros = new Map<number, readonly string[]>();
      if (reply.macros !== undefined) {
        if ((reply.actions & Action.SETSYMLIST) === 0) return fail(c, "macro list without the SETSYMLIST action");
        for (const [k, v] of reply.macros) macros.set(k, v);
      }
      const protocol = reply.protocol & OFFER.protocol;
      const key = `${reply.version}/${reply.actions}/${protocol}/${[...macros].map(([k, v]) => `${k}=${v.join(" ")}`).join(";")}`;
      let setup = setups.get(key);
      if (setup === undefined) {
        const neg: Negotiated = { version: reply.version, actions: reply.actions, protocol, macros, key };
        setup = buildSetup(neg, opts.frameWrites);
        setups.set(key, setup);
        negotiated = describeNegotiation(neg);
        if (opts.verbose) process.stderr.write(`milter-load: negotiated ${negotiated}\n`);
      }
      c.neg = setup.neg;
      c.wait = Step.NONE;
      c.segs = setup.connect;
      c.segIdx = 0;
      return advance(c);
    }
    switch (reply.type) {
      case "progress":
        c.tWait = performance.now();
        return;
      case "continue":
        c.wait = Step.NONE;
        if (w === Step.EOM) {
          finishMessage(c, "continue", true);
          return startMessage(c);
        }
        return advance(c);
      case "skip":
        if (w === Step.EOM) return fail(c, "SKIP is no end-of-message reply");
        if ((c.neg!.protocol & Proto.SKIP) === 0) return fail(c, "SKIP without SMFIP_SKIP");
        c.wait = Step.NONE;
        return advance(c);
      case "accept":
      case "reject":
      case "tempfail":
      case "discard":
      case "replycode": {
        if (w === Step.CONNECT || w === Step.HELO) return fail(c, `connection-level verdict '${reply.type}'`);
        let verdict: Verdict;
        if (reply.type === "replycode") {
          if (!(reply.code >= 400 && reply.code < 600)) return fail(c, `malformed reply code ${reply.code}`);
          c.reply = `${reply.code} ${reply.text}`;
          verdict = reply.code >= 500 ? "reject" : "tempfail";
        } else verdict = reply.type;
        c.wait = Step.NONE;
        finishMessage(c, verdict, w === Step.EOM);
        return startMessage(c);
      }
      case "addheader":
      case "insheader":
      case "chgheader": {
        if (w !== Step.EOM) return fail(c, `${reply.type} outside end of message`);
        const need = reply.type === "chgheader" ? Action.CHGHDRS : Action.ADDHDRS;
        if ((c.neg!.actions & need) === 0) return fail(c, `${reply.type} without the negotiated action`);
        if (reply.name === "") return fail(c, `${reply.type} with an empty name`);
        const name = reply.name.toLowerCase();
        if (reply.type === "chgheader") {
          if (reply.value === "" && opts.expectRemoval?.toLowerCase() === name) c.removed++;
        } else if (opts.expectHeader?.toLowerCase() === name) {
          c.added++;
        }
        return;
      }
      default:
        return fail(c, `unexpected reply '${reply.type}' at ${STEP_NAMES[w]}`);
    }
  };

  const onData = (c: Conn, chunk: Uint8Array) => {
    // The most common reply alone in a read: a bare CONTINUE frame (00 00 00 01 'c').
    if (chunk.length === 5 && c.reader.buffered === 0 && chunk[4] === 0x63 && chunk[3] === 1 && chunk[2] === 0 && chunk[1] === 0 && chunk[0] === 0) {
      if (!c.closing) onReply(c, CONTINUE);
      return;
    }
    c.reader.push(chunk);
    for (;;) {
      if (c.closing) return;
      const f = c.reader.next();
      if (f === undefined) return;
      if (!f.ok) return fail(c, f.error);
      const r = decodeReply(f.value.code, f.value.payload);
      if (!r.ok) return fail(c, r.error);
      onReply(c, r.value);
    }
  };

  let nextId = 0;
  const openConn = (slot: number, attempt = 0) => {
    const c: Conn = {
      id: nextId++, slot, sock: undefined, reader: new FrameReader(16 * 1024 * 1024), wait: Step.OPTNEG, tWait: performance.now(),
      neg: undefined, pending: undefined, backlog: undefined, msgsOnConn: 0, closing: false, inMsg: false, counted: false,
      segs: [], segIdx: 0, kind: 0, qid: "", tStart: 0, added: 0, removed: 0, reply: "",
    };
    conns[slot] = c;
    open++;
    connections++;
    const handlers = {
      open(s: Socket<undefined>) {
        if (spec.kind === "tcp") s.setNoDelay(opts.nodelay);
        c.sock = s;
        c.tWait = performance.now();
        write(c, OPTNEG);
      },
      data(_s: Socket<undefined>, d: Uint8Array) {
        onData(c, d);
      },
      drain(s: Socket<undefined>) {
        const b = c.backlog;
        if (b === undefined) return;
        c.backlog = undefined;
        const n = s.write(b);
        if (n >= 0 && n < b.length) c.backlog = b.slice(n);
      },
      close() {
        closed(c, slot);
      },
      error(_s: Socket<undefined>, e: Error) {
        if (!c.closing) note(`connection ${c.id}: ${e.message}`);
      },
    };
    const connecting = spec.kind === "unix"
      ? Bun.connect({ unix: spec.path, socket: handlers })
      : Bun.connect({ hostname: spec.host, port: spec.port, socket: handlers });
    connecting.catch((e: Error) => {
      // Opening 1,000 idle connections may overrun a filter's listen backlog
      // (libmilter's is small): try again a little later, as an MTA would.
      if (idleMode && attempt < 100 && conns[slot] === c) {
        conns[slot] = undefined;
        open--;
        connections--;
        setTimeout(() => openConn(slot, attempt + 1), 10);
        return;
      }
      protocolErrors++;
      note(`connect ${opts.socket}: ${e.message}`);
      c.closing = true;
      closed(c, slot);
    });
  };

  /** --rate: each new connection waits for its slot in the schedule. */
  let nextOpenAt = 0;
  /** Connections waiting for their slot: the run is not over while one waits. */
  let waiting = 0;
  const paced = (start: () => void) => {
    if (opts.rate <= 0) return start();
    const now = performance.now();
    const at = Math.max(now, nextOpenAt);
    nextOpenAt = at + 1000 / opts.rate;
    if (at <= now) return start();
    waiting++;
    setTimeout(() => {
      waiting--;
      start();
    }, at - now);
  };

  const closed = (c: Conn, slot: number) => {
    if (conns[slot] !== c) return;
    if (!c.closing) {
      protocolErrors++;
      note(`connection ${c.id} closed by the filter (waiting for ${STEP_NAMES[c.wait] ?? "-"})`);
    }
    if (c.inMsg) verifyFailures++;
    c.inMsg = false;
    conns[slot] = undefined;
    open--;
    if (protocolErrors >= 100) stopStarting = true;
    if (!idleMode && !stopStarting) paced(() => openConn(slot));
    if (idleMode && idleReady + idleLost < opts.idle) {
      idleLost++;
      checkIdle();
    }
    if (open === 0 && waiting === 0) finished();
  };

  // A filter that does not answer fails the run instead of hanging it.
  const timer = setInterval(() => {
    const now = performance.now();
    for (const c of conns) {
      if (c !== undefined && c.wait !== Step.NONE && now - c.tWait > opts.timeoutMs) fail(c, `no reply within ${opts.timeoutMs} ms`);
    }
  }, 100);

  if (idleMode) {
    // In waves, so that the listen backlog never overflows.
    for (let i = 0; i < opts.idle; i++) {
      openConn(i);
      if (i % 100 === 99) await Bun.sleep(20);
    }
  } else {
    for (let i = 0; i < opts.concurrency; i++) paced(() => openConn(i));
  }
  await done;

  let idleConnections: number | undefined;
  let mem: { hwm: number; rss: number } | undefined;
  if (idleMode) {
    tEnd = performance.now();
    idleConnections = conns.filter((c) => c !== undefined && c.sock?.readyState === 1).length;
    await Bun.sleep(opts.idleHold * 1000);
    if (opts.pid !== undefined) mem = procMemKb(opts.pid);
    stopStarting = true;
    done = new Promise<void>((r) => (finished = r));
    for (const c of conns) if (c !== undefined) endSession(c);
    await Promise.race([done, Bun.sleep(5000)]);
  }
  clearInterval(timer);
  const cpuMs = opts.pid !== undefined ? procCpuMs(opts.pid) - cpu0 : undefined;
  if (opts.pid !== undefined && mem === undefined) mem = procMemKb(opts.pid);
  const gen = process.cpuUsage(gen0);
  const sorted = latencies.subarray(0, nLat).sort();
  const seconds = (tEnd - tMeasure) / 1000;
  let sum = 0;
  for (const l of sorted) sum += l;
  if (opts.expect === "policy" && verdicts.reject !== rejectDesigned) {
    note(`${verdicts.reject} messages rejected, ${rejectDesigned} designed to be`);
  }
  if (idleMode && idleConnections !== opts.idle) note(`only ${idleConnections} of ${opts.idle} connections open`);
  const ok = protocolErrors === 0 && verifyFailures === 0 && (nLat > 0 || (idleMode && opts.idleMessages === 0)) &&
    (opts.expect !== "policy" || verdicts.reject === rejectDesigned) && (!idleMode || idleConnections === opts.idle);
  return {
    label: opts.label,
    socket: opts.socket,
    concurrency: idleMode ? opts.idle : opts.concurrency,
    negotiated,
    messages: nLat,
    seconds,
    rate: seconds > 0 ? nLat / seconds : 0,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: nLat > 0 ? sorted[nLat - 1]! : 0,
    mean: nLat > 0 ? sum / nLat : 0,
    verdicts,
    rejectDesigned,
    headersAdded,
    headersRemoved,
    verifyFailures,
    protocolErrors,
    connections,
    filterCpuMs: cpuMs !== undefined && nLat > 0 ? cpuMs / nLat : undefined,
    filterHwmKb: mem?.hwm,
    filterRssKb: mem?.rss,
    generatorCpuUs: nLat > 0 ? (gen.user + gen.system) / nLat : 0,
    maxAfterHup: hupSentAt !== undefined ? (maxAfterHup ?? 0) : undefined,
    idleConnections,
    ok,
    errors,
  };
}

function putAscii(bytes: Uint8Array, at: number, text: string): void {
  for (let i = 0; i < text.length; i++) bytes[at + i] = text.charCodeAt(i);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// ---------------------------------------------------------- command line

const HELP = `usage: bun bench/load.ts -s SOCKET [options]
  -s, --socket SPEC        unix:/path | inet:PORT@127.0.0.1 | inet6:PORT@::1 (loopback only)
  -c, --concurrency N      parallel milter connections (default 1)
  -m, --per-conn N         messages per connection, ABORT between them; 0 = unlimited (default 10)
  -n, --messages N         messages to measure (default 0: for --duration seconds)
  -d, --duration SEC       seconds to measure (default 3)
  -w, --warmup SEC         seconds of load before measuring (default 0.5)
      --rate N             open at most N connections per second (default 0: no limit); with -m 1
                           a relay's pace, where per-connection and per-wake-up costs dominate
  -r, --reject-ratio F     share of messages from a domain without a policy (default 0)
      --domains a,b,...    From domains that have a policy (default: 4 *.example domains)
      --bad-domain D       From domain of reject-designed messages (default unlisted-tenant.example)
      --authserv-id ID     authserv-id of the Authentication-Results header (default relay.bench.example)
      --expect MODE        policy (default): accept-designed -> continue, reject-designed -> 5xx;
                           continue: everything continued; none: no verdict check
      --expect-header NAME every continued message must get header NAME added
      --expect-removal NAME every continued message must get its header NAME deleted
      --body-size BYTES    body chunk size, if the filter wants bodies (default 2048)
      --pid PID            the filter process: report its CPU per message and peak RSS
      --nodelay            set TCP_NODELAY (Postfix does not)
      --frame-writes       one write per frame (worst case for Nagle; Postfix batches until it reads)
      --one-write          envelope and content of a message in one write (Postfix: smtpd writes
                           the envelope, cleanup the content, each flushed on its own)
      --hup-at SEC         send SIGHUP to --pid SEC seconds into the measurement; report the
                           largest latency of messages in flight after it
      --idle N             open N connections, one message each, keep them open idle,
                           then report the filter's RSS
      --idle-hold SEC      seconds to hold the idle connections (default 1)
      --idle-messages N    messages per idle connection before it goes idle (default 1)
  -T, --timeout MS         reply timeout (default 10000)
      --label TEXT         label of the RESULT line
      --json               print the result as JSON
      --print-policy       print a JSON policy matching --domains and exit
  -v, --verbose            print the negotiation
  -q, --quiet              only the RESULT line
exit: 0 ok, 1 protocol errors or verdict mismatches`;

async function main(): Promise<number> {
  const { values: a } = parseArgs({
    args: process.argv.slice(2),
    options: {
      socket: { type: "string", short: "s" },
      concurrency: { type: "string", short: "c" },
      "per-conn": { type: "string", short: "m" },
      messages: { type: "string", short: "n" },
      duration: { type: "string", short: "d" },
      warmup: { type: "string", short: "w" },
      rate: { type: "string" },
      "reject-ratio": { type: "string", short: "r" },
      domains: { type: "string" },
      "bad-domain": { type: "string" },
      "authserv-id": { type: "string" },
      expect: { type: "string" },
      "expect-header": { type: "string" },
      "expect-removal": { type: "string" },
      "body-size": { type: "string" },
      pid: { type: "string" },
      nodelay: { type: "boolean" },
      "frame-writes": { type: "boolean" },
      "one-write": { type: "boolean" },
      "hup-at": { type: "string" },
      idle: { type: "string" },
      "idle-hold": { type: "string" },
      "idle-messages": { type: "string" },
      timeout: { type: "string", short: "T" },
      label: { type: "string" },
      json: { type: "boolean" },
      "print-policy": { type: "boolean" },
      verbose: { type: "boolean", short: "v" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (a.help) {
    console.log(HELP);
    return 0;
  }
  const num = (v: string | undefined, d: number, name: string) => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: not a number: ${v}`);
    return n;
  };
  const domains = a.domains !== undefined ? a.domains.split(",").filter((d) => d !== "") : DEFAULT_DOMAINS;
  if (a["print-policy"]) {
    process.stdout.write(policyJson(domains));
    return 0;
  }
  if (a.socket === undefined) {
    console.error(HELP);
    return 64;
  }
  const expect = a.expect ?? "policy";
  if (expect !== "policy" && expect !== "continue" && expect !== "none") throw new Error(`--expect: ${expect}`);
  const opts: LoadOptions = {
    ...DEFAULTS,
    socket: a.socket,
    concurrency: Math.max(1, num(a.concurrency, 1, "concurrency")),
    perConn: num(a["per-conn"], DEFAULTS.perConn, "per-conn"),
    messages: num(a.messages, 0, "messages"),
    duration: num(a.duration, DEFAULTS.duration, "duration"),
    warmup: num(a.warmup, DEFAULTS.warmup, "warmup"),
    rate: num(a.rate, DEFAULTS.rate, "rate"),
    rejectRatio: Math.min(1, num(a["reject-ratio"], 0, "reject-ratio")),
    domains,
    badDomain: a["bad-domain"] ?? DEFAULTS.badDomain,
    authservId: a["authserv-id"] ?? DEFAULTS.authservId,
    expect,
    expectHeader: a["expect-header"],
    expectRemoval: a["expect-removal"],
    bodySize: num(a["body-size"], DEFAULTS.bodySize, "body-size"),
    timeoutMs: num(a.timeout, DEFAULTS.timeoutMs, "timeout"),
    pid: a.pid !== undefined ? num(a.pid, 0, "pid") : undefined,
    nodelay: a.nodelay ?? false,
    frameWrites: a["frame-writes"] ?? false,
    oneWrite: a["one-write"] ?? false,
    hupAt: a["hup-at"] !== undefined ? num(a["hup-at"], 0, "hup-at") : undefined,
    idle: num(a.idle, 0, "idle"),
    idleHold: num(a["idle-hold"], DEFAULTS.idleHold, "idle-hold"),
    idleMessages: num(a["idle-messages"], DEFAULTS.idleMessages, "idle-messages"),
    label: a.label ?? "-",
    quiet: a.quiet ?? false,
    verbose: a.verbose ?? false,
  };
  const r = await runLoad(opts);
  if (a.json) {
    process.stdout.write(JSON.stringify(r) + "\n");
  } else {
    if (!opts.quiet) {
      console.log(`negotiated: ${r.negotiated}`);
      console.log(`verdicts:   ${Object.entries(r.verdicts).map(([k, v]) => `${k}=${v}`).join(" ")} (reject-designed ${r.rejectDesigned}); ` +
        `headers added ${r.headersAdded}, removed ${r.headersRemoved}`);
    }
    const f = (x: number | undefined, d = 3) => (x === undefined ? "-" : x.toFixed(d));
    console.log(
      `RESULT label=${r.label} conc=${r.concurrency} msgs=${r.messages} secs=${r.seconds.toFixed(3)} rate=${r.rate.toFixed(1)} ` +
        `p50_ms=${f(r.p50)} p90_ms=${f(r.p90)} p99_ms=${f(r.p99)} max_ms=${f(r.max)} mean_ms=${f(r.mean)} ` +
        `filter_cpu_ms_per_msg=${f(r.filterCpuMs, 4)} filter_hwm_kb=${r.filterHwmKb ?? "-"} filter_rss_kb=${r.filterRssKb ?? "-"} ` +
        `gen_cpu_us_per_msg=${r.generatorCpuUs.toFixed(1)} conns=${r.connections}` +
        (r.maxAfterHup !== undefined ? ` max_after_hup_ms=${f(r.maxAfterHup)}` : "") +
        (r.idleConnections !== undefined ? ` idle_conns=${r.idleConnections}` : "") +
        ` verify_fail=${r.verifyFailures} proto_err=${r.protocolErrors} ok=${r.ok}`,
    );
  }
  return r.ok ? 0 : 1;
}

if (import.meta.main) {
  main().then((code) => process.exit(code), (e: Error) => {
    console.error(`milter-load: ${e.message}`);
    process.exit(64);
  });
}
