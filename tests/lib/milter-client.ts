/**
 * A small milter client (the MTA side) for integration tests, built on the
 * project's own frame codec. It behaves like Postfix where that matters:
 * offers version 6 with every action and protocol flag, sends the macros of
 * each stage (also of stages the filter asked to skip, then skips the
 * command), honours the filter's set-macro-list request, and never waits for
 * a reply the filter will not send under the negotiated NR_* flags.
 *
 * Every wait has a timeout: a hung filter fails the test instead of hanging it.
 */
import { connect as netConnect, type Socket } from "node:net";
import { decodeReply, encodeCommand, type Frame, FrameReader } from "../../src/milter/codec.ts";
import { Action, MacroStage, Proto } from "../../src/milter/protocol.ts";
import { NO_REPLY_FLAG } from "../../src/milter/session.ts";
import type { Command, CommandType, Family, MacroCommandLetter, MacroRequest, Reply } from "../../src/milter/types.ts";

/** What Postfix offers in option negotiation (milter_protocol = 6). */
export const POSTFIX_OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff } as const;

export type OptnegReply = Extract<Reply, { type: "optneg" }>;

export type Target = { readonly host: string; readonly port: number } | { readonly path: string };

export const DEFAULT_TIMEOUT_MS = 5000;

/** Stage names used in {@link MessageSpec.macros}. */
export type StageName = "connect" | "helo" | "mail" | "rcpt" | "data" | "eoh" | "eom";
export type MacroValues = Readonly<Record<string, string>>;

const STAGE_LETTER: Record<StageName, MacroCommandLetter> = {
  connect: "C",
  helo: "H",
  mail: "M",
  rcpt: "R",
  data: "T",
  eoh: "N",
  eom: "E",
};
/** Set-macro-list stage number of each stage (SMFIM_*). */
const STAGE_NUMBER: Record<StageName, number> = {
  connect: MacroStage.CONNECT,
  helo: MacroStage.HELO,
  mail: MacroStage.ENVFROM,
  rcpt: MacroStage.ENVRCPT,
  data: MacroStage.DATA,
  eoh: MacroStage.EOH,
  eom: MacroStage.EOM,
};

/** Postfix's default macro lists per stage (milter_*_macros). */
export const POSTFIX_MACRO_NAMES: Readonly<Record<StageName, readonly string[]>> = {
  connect: ["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
  helo: ["{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"],
  mail: ["i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"],
  rcpt: ["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
  data: ["i"],
  eoh: ["i"],
  eom: ["i"],
};

/** The NO* flag that skips a command, if any. */
const SKIP_FLAG: Partial<Record<CommandType, number>> = {
  connect: Proto.NOCONNECT,
  helo: Proto.NOHELO,
  mail: Proto.NOMAIL,
  rcpt: Proto.NORCPT,
  data: Proto.NODATA,
  header: Proto.NOHDRS,
  eoh: Proto.NOEOH,
  body: Proto.NOBODY,
  unknown: Proto.NOUNKNOWN,
};

/** Commands that never get a reply, whatever was negotiated. */
const NEVER_REPLIED: ReadonlySet<CommandType> = new Set(["macro", "abort", "quit", "quit_nc"]);

const MODIFICATIONS: ReadonlySet<Reply["type"]> = new Set(["addheader", "insheader", "chgheader"]);

const bare = (name: string) => (name.length > 2 && name.startsWith("{") && name.endsWith("}") ? name.slice(1, -1) : name);

/** The SMTP client as CONNECT describes it; family "unknown" has no address. */
export type ClientInfo =
  | { readonly hostname: string; readonly family: Exclude<Family, "unknown">; readonly address: string; readonly port: number }
  | { readonly hostname: string; readonly family: "unknown" };
/** An SMTP client with an address. */
export type InetClient = Extract<ClientInfo, { readonly address: string }>;

export interface MessageSpec {
  /**
   * Macro values per stage. Only the names Postfix would send for a stage
   * (its defaults, or the filter's set-macro-list request) are sent.
   */
  readonly macros?: Partial<Record<StageName, MacroValues>>;
  /** Queue id: the `i` macro of the MAIL, RCPT, DATA, EOH and EOM stages. */
  readonly queueId?: string;
  /** Send CONNECT (and its macros) first; omit on a reused connection. */
  readonly connect?: ClientInfo;
  /** Send HELO (and its macros); omit on a reused connection. */
  readonly helo?: string;
  readonly mailFrom?: string;
  readonly rcptTo?: readonly string[];
  readonly headers?: ReadonlyArray<readonly [string, string]>;
  readonly body?: string;
  /** Stop after the headers (and EOH): no body, no EOM. For ABORT tests. */
  readonly stopAfterHeaders?: boolean;
}

export class ProtocolError extends Error {}

export class MilterClient {
  readonly #socket: Socket;
  readonly #reader = new FrameReader(64 * 1024 * 1024);
  readonly #queue: Reply[] = [];
  /** Raw frames of every reply received, in order. */
  readonly frames: Frame[] = [];
  #waiter: (() => void) | undefined;
  #closed = false;
  /** The filter sent FIN (it may still read). */
  #ended = false;
  #readError: Error | undefined;
  readonly #closedPromise: Promise<void>;
  #agreement: OptnegReply | undefined;
  /** While recording, commands are collected instead of sent (see {@link record}). */
  #recording: { chunks: Uint8Array[]; answered: CommandType[] } | undefined;
  readonly timeoutMs: number;

  private constructor(socket: Socket, timeoutMs: number) {
    this.#socket = socket;
    this.timeoutMs = timeoutMs;
    this.#closedPromise = new Promise((res) => {
      socket.once("close", () => {
        this.#closed = true;
        this.#wake();
        res();
      });
    });
    socket.once("end", () => {
      this.#ended = true;
    });
    socket.on("error", () => {
      // A reset by the filter: "close" follows.
    });
    socket.on("data", (chunk: Buffer) => {
      this.#reader.push(new Uint8Array(chunk));
      for (;;) {
        const f = this.#reader.next();
        if (f === undefined) break;
        if (!f.ok) {
          this.#readError = new ProtocolError(`bad frame from the filter: ${f.error}`);
          break;
        }
        const frame = { code: f.value.code, payload: f.value.payload.slice() };
        this.frames.push(frame);
        const r = decodeReply(frame.code, frame.payload);
        if (!r.ok) {
          this.#readError = new ProtocolError(`bad reply from the filter: ${r.error}`);
          break;
        }
        this.#queue.push(r.value);
      }
      this.#wake();
    });
  }

  /** Connects over TCP (`{host, port}`) or a unix socket (`{path}`). */
  static connect(target: Target, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<MilterClient> {
    return new Promise((resolve, reject) => {
      const socket = "path" in target ? netConnect({ path: target.path }) : netConnect({ host: target.host, port: target.port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`timed out connecting to ${JSON.stringify(target)}`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        resolve(new MilterClient(socket, timeoutMs));
      });
      const onError = (e: Error) => {
        clearTimeout(timer);
        reject(e);
      };
      socket.once("error", onError);
    });
  }

  /** The filter's option negotiation reply, once negotiated. */
  get agreement(): OptnegReply | undefined {
    return this.#agreement;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The filter has closed its side (FIN received), or the connection is closed. */
  get ended(): boolean {
    return this.#ended || this.#closed;
  }

  /** Replies received but not yet collected (should be empty between commands). */
  get pending(): readonly Reply[] {
    return this.#queue;
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** The next reply, waiting at most `timeoutMs`. */
  async nextReply(what: string, timeoutMs = this.timeoutMs): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#readError !== undefined) throw this.#readError;
      const r = this.#queue.shift();
      if (r !== undefined) return r;
      if (this.#closed) throw new ProtocolError(`the filter closed the connection while ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new ProtocolError(`timed out after ${timeoutMs} ms ${what}`);
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.#waiter = () => {
          clearTimeout(timer);
          res();
        };
      });
    }
  }

  /** Writes raw bytes (for bad-input tests). */
  sendRaw(bytes: Uint8Array): void {
    this.#socket.write(bytes);
  }

  #write(bytes: Uint8Array): void {
    if (this.#recording !== undefined) this.#recording.chunks.push(bytes);
    else this.#socket.write(bytes);
  }

  /**
   * Runs `fn` (e.g. a {@link sendMessage}) without sending anything: returns
   * the bytes it would have sent and the commands that expect an answer, in
   * order, for pipelining and frame-splitting tests ({@link sendRaw}, then
   * {@link collect}). Negotiate first.
   */
  async record(fn: () => Promise<unknown>): Promise<{ bytes: Uint8Array; answered: CommandType[] }> {
    if (this.#agreement === undefined) throw new Error("negotiate before recording");
    const rec = { chunks: [] as Uint8Array[], answered: [] as CommandType[] };
    this.#recording = rec;
    try {
      await fn();
    } finally {
      this.#recording = undefined;
    }
    const bytes = new Uint8Array(rec.chunks.reduce((n, c) => n + c.length, 0));
    let o = 0;
    for (const c of rec.chunks) {
      bytes.set(c, o);
      o += c.length;
    }
    return { bytes, answered: rec.answered };
  }

  /** Collects the answers (progress and modifications up to a final reply) to `commands`, in order. */
  async collect(commands: readonly CommandType[]): Promise<Reply[][]> {
    const out: Reply[][] = [];
    for (const type of commands) out.push(await this.#answer(type));
    return out;
  }

  async #answer(type: CommandType): Promise<Reply[]> {
    const out: Reply[] = [];
    for (;;) {
      const r = await this.nextReply(`waiting for the reply to '${type}'`);
      out.push(r);
      if (r.type === "progress") continue;
      if (MODIFICATIONS.has(r.type)) {
        if (type !== "eom") throw new ProtocolError(`modification ${JSON.stringify(r)} in reply to '${type}'`);
        continue;
      }
      return out;
    }
  }

  /** Whether the filter answers `type` under the negotiated flags. */
  expectsReply(type: CommandType): boolean {
    if (type === "optneg" || type === "eom") return true;
    if (NEVER_REPLIED.has(type)) return false;
    const flag = NO_REPLY_FLAG[type];
    const protocol = this.#agreement?.protocol ?? 0;
    return flag === undefined || (protocol & flag) === 0;
  }

  /** Whether the filter asked the MTA not to send `type` at all. */
  skips(type: CommandType): boolean {
    const flag = SKIP_FLAG[type];
    return flag !== undefined && ((this.#agreement?.protocol ?? 0) & flag) !== 0;
  }

  /**
   * Sends one command and collects its replies: none for commands the filter
   * does not answer; for the others, progress and modification replies up to
   * and including the final one. Throws when replies arrived that no command
   * asked for.
   */
  async send(cmd: Command): Promise<Reply[]> {
    if (this.#readError !== undefined) throw this.#readError;
    if (this.#queue.length > 0) {
      throw new ProtocolError(`unexpected replies before '${cmd.type}': ${JSON.stringify(this.#queue)}`);
    }
    this.#write(encodeCommand(cmd));
    if (!this.expectsReply(cmd.type)) return [];
    if (this.#recording !== undefined) {
      this.#recording.answered.push(cmd.type);
      return [];
    }
    return await this.#answer(cmd.type);
  }

  /** Option negotiation; returns the filter's reply. */
  async negotiate(offer: { version: number; actions: number; protocol: number } = POSTFIX_OFFER): Promise<OptnegReply> {
    const replies = await this.send({ type: "optneg", ...offer });
    const r = replies[0]!;
    if (replies.length !== 1 || r.type !== "optneg") throw new ProtocolError(`expected an optneg reply, got ${JSON.stringify(replies)}`);
    this.#agreement = r;
    return r;
  }

  /** The macro names Postfix would send for a stage after this negotiation. */
  macroNames(stage: StageName): readonly string[] {
    const requested: MacroRequest | undefined = this.#agreement !== undefined && (this.#agreement.actions & Action.SETSYMLIST) !== 0
      ? this.#agreement.macros
      : undefined;
    return requested?.get(STAGE_NUMBER[stage]) ?? POSTFIX_MACRO_NAMES[stage];
  }

  /** Sends the macros of a stage, as Postfix does: the listed names that have a value. */
  sendMacros(stage: StageName, values: MacroValues): void {
    const byBareName = new Map(Object.entries(values).map(([k, v]) => [bare(k), v] as const));
    const macros: Array<readonly [string, string]> = [];
    for (const name of this.macroNames(stage)) {
      const v = byBareName.get(bare(name));
      if (v !== undefined) macros.push([name, v]);
    }
    this.#write(encodeCommand({ type: "macro", stage: STAGE_LETTER[stage], macros }));
  }

  /** Macros of a stage, then the command unless the filter skips it. */
  async step(stage: StageName | undefined, values: MacroValues, cmd: Command): Promise<Reply[]> {
    if (stage !== undefined) this.sendMacros(stage, values);
    if (this.skips(cmd.type)) return [];
    const replies = await this.send(cmd);
    // A non-final "continue" is what an MTA wants; anything else would end the message.
    if (cmd.type !== "eom" && replies.some((r) => r.type !== "continue")) {
      throw new ProtocolError(`unexpected reply to '${cmd.type}': ${JSON.stringify(replies)}`);
    }
    return replies;
  }

  /**
   * Drives one message the way Postfix does and returns the replies to end
   * of message (modifications, then the final reply); `[]` with
   * `stopAfterHeaders`.
   */
  async sendMessage(spec: MessageSpec): Promise<Reply[]> {
    if (this.#agreement === undefined) await this.negotiate();
    const m = spec.macros ?? {};
    const qid: MacroValues = spec.queueId !== undefined ? { i: spec.queueId } : {};
    if (spec.connect !== undefined) {
      const c = spec.connect;
      const address = c.family === "unknown" ? "" : c.address;
      await this.step(
        "connect",
        { j: "relay.example", "{daemon_name}": "smtpd", v: "Postfix 3.7", _: `${c.hostname} [${address}]`, ...m.connect },
        c.family === "unknown" ? { type: "connect", hostname: c.hostname, family: "unknown" } : { type: "connect", ...c },
      );
    }
    if (spec.helo !== undefined) {
      await this.step("helo", { "{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384", ...m.helo }, { type: "helo", name: spec.helo });
    }
    const mailFrom = spec.mailFrom ?? "<sender@tenant.example>";
    await this.step("mail", { ...qid, "{mail_addr}": mailFrom.replace(/^<|>$/g, ""), ...m.mail }, { type: "mail", args: [mailFrom] });
    for (const rcpt of spec.rcptTo ?? ["<rcpt@destination.example>"]) {
      await this.step("rcpt", { ...qid, "{rcpt_addr}": rcpt.replace(/^<|>$/g, ""), ...m.rcpt }, { type: "rcpt", args: [rcpt] });
    }
    await this.step("data", { ...qid, ...m.data }, { type: "data" });
    for (const [name, value] of spec.headers ?? []) {
      // Postfix sends no macros with each header.
      if (!this.skips("header")) await this.send({ type: "header", name, value }).then((r) => this.#checkContinue("header", r));
    }
    await this.step("eoh", { ...qid, ...m.eoh }, { type: "eoh" });
    if (spec.stopAfterHeaders) return [];
    if (spec.body !== undefined && !this.skips("body")) {
      await this.send({ type: "body", chunk: new TextEncoder().encode(spec.body) }).then((r) => this.#checkContinue("body", r));
    }
    return this.step("eom", { ...qid, ...m.eom }, { type: "eom", chunk: new Uint8Array(0) });
  }

  #checkContinue(type: string, replies: Reply[]): void {
    if (replies.some((r) => r.type !== "continue")) throw new ProtocolError(`unexpected reply to '${type}': ${JSON.stringify(replies)}`);
  }

  /** ABORT: the message ends, the connection stays. */
  abort(): Promise<Reply[]> {
    return this.send({ type: "abort" });
  }

  /**
   * Resolves when the filter has closed the connection; rejects after the
   * timeout. Replies still unread do not count as a close.
   */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.#closedPromise,
        new Promise<never>((_, rej) => {
          timer = setTimeout(() => rej(new ProtocolError(`the filter did not close the connection within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * QUIT, then waits until the filter closes the connection, and checks that
   * no reply arrived that nobody asked for.
   */
  async quit(): Promise<void> {
    await this.send({ type: "quit" });
    await this.waitClosed();
    if (this.#readError !== undefined) throw this.#readError;
    if (this.#queue.length > 0) throw new ProtocolError(`unexpected replies: ${JSON.stringify(this.#queue)}`);
  }

  /** Closes our side at once (no QUIT). */
  destroy(): void {
    this.#socket.destroy();
  }

  /** Half-closes our side (FIN), as a client that is done sending. */
  end(): void {
    this.#socket.end();
  }
}

/** Frames one command by hand: any code byte, any payload, optionally a lying length. */
export function rawFrame(code: number, payload: Uint8Array = new Uint8Array(0), length = payload.length + 1): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(0, length >>> 0);
  out[4] = code;
  out.set(payload, 5);
  return out;
}
