/**
 * The per-connection state machine of the filter side: negotiation, macros,
 * message boundaries and which commands get a reply. What a filter decides
 * is delegated to a {@link Filter}.
 *
 * Pure: no I/O, no timers.
 * @module
 */
import { MacroStore } from "./macros.ts";
import { type Agreement, type FilterNeeds, negotiate } from "./negotiate.ts";
import { Proto } from "./protocol.ts";
import type { Command, CommandType, Family, Reply } from "./types.ts";

export interface ConnectInfo {
  readonly hostname: string;
  readonly family: Family;
  readonly address: string | undefined;
  readonly port: number | undefined;
}

/** Read access to the macros in force (connection and current message). */
export interface Macros {
  get(name: string): string | undefined;
}

/** The decisions of a filter; the session does the protocol around them. */
export interface Filter {
  readonly needs: FilterNeeds;
  connect(info: ConnectInfo, macros: Macros): void;
  header(name: string, value: string, macros: Macros): void;
  /** The message is complete: modifications, then exactly one final reply. */
  endOfMessage(macros: Macros): Reply[] | Promise<Reply[]>;
  /** Forget the current message (ABORT, new MAIL, after EOM). */
  resetMessage(): void;
}

export type SessionOutput = {
  readonly replies: readonly Reply[];
  /** Set when the connection must close: `error` for protocol violations. */
  readonly close?: { readonly error: boolean; readonly reason: string };
};

const CONTINUE: readonly Reply[] = [{ type: "continue" }];
const NONE: readonly Reply[] = [];
const OUT_CONTINUE: SessionOutput = { replies: CONTINUE };
const OUT_NONE: SessionOutput = { replies: NONE };

/** The no-reply flag of each command that normally gets a reply. */
export const NO_REPLY_FLAG: Partial<Record<CommandType, number>> = {
  connect: Proto.NR_CONN,
  helo: Proto.NR_HELO,
  mail: Proto.NR_MAIL,
  rcpt: Proto.NR_RCPT,
  data: Proto.NR_DATA,
  header: Proto.NR_HDR,
  eoh: Proto.NR_EOH,
  body: Proto.NR_BODY,
  unknown: Proto.NR_UNKN,
};

export class MilterSession {
  readonly macros = new MacroStore();
  #agreement: Agreement | undefined;
  #inMessage = false;

  constructor(readonly filter: Filter) {}

  /** Between MAIL (or a first header) and the end of that message. */
  get inMessage(): boolean {
    return this.#inMessage;
  }

  /** The negotiated version, actions and protocol flags, once negotiated. */
  get agreement(): Agreement | undefined {
    return this.#agreement;
  }

  #ack(type: CommandType): SessionOutput {
    const flag = NO_REPLY_FLAG[type];
    return flag !== undefined && (this.#agreement!.protocol & flag) !== 0 ? OUT_NONE : OUT_CONTINUE;
  }

  handle(cmd: Command): SessionOutput | Promise<SessionOutput> {
    if (cmd.type === "optneg") {
      const r = negotiate(cmd, this.filter.needs);
      if (!r.ok) return { replies: NONE, close: { error: true, reason: `negotiation failed: ${r.error}` } };
      this.#agreement = r.agreement;
      this.macros.clearAll();
      this.filter.resetMessage();
      return { replies: [r.agreement.reply] };
    }
    if (this.#agreement === undefined) {
      return { replies: NONE, close: { error: true, reason: `'${cmd.type}' command before option negotiation` } };
    }
    switch (cmd.type) {
      case "macro":
        this.macros.set(cmd.stage, cmd.macros);
        return OUT_NONE;
      case "connect":
        this.macros.clearAfter("C");
        this.filter.resetMessage();
        this.filter.connect(
          cmd.family === "unknown"
            ? { hostname: cmd.hostname, family: cmd.family, address: undefined, port: undefined }
            : { hostname: cmd.hostname, family: cmd.family, address: cmd.address, port: cmd.port },
          this.macros,
        );
        return this.#ack("connect");
      case "mail":
        // The MAIL macros arrived just before this command and stay.
        this.macros.clearAfter("M");
        this.filter.resetMessage();
        this.#inMessage = true;
        return this.#ack("mail");
      case "header":
        this.#inMessage = true;
        this.filter.header(cmd.name, cmd.value, this.macros);
        return this.#ack("header");
      case "eom": {
        const done = (replies: Reply[]): SessionOutput => {
          this.#endMessage();
          return { replies };
        };
        let out: Reply[] | Promise<Reply[]>;
        try {
          out = this.filter.endOfMessage(this.macros);
        } catch (e) {
          this.#endMessage();
          throw e;
        }
        if (out instanceof Promise) {
          return out.then(done, (e) => {
            this.#endMessage();
            throw e;
          });
        }
        return done(out);
      }
      case "abort":
        this.#endMessage();
        return OUT_NONE;
      case "quit":
        return { replies: NONE, close: { error: false, reason: "quit" } };
      case "quit_nc":
        // The MTA reuses this connection for a new SMTP session.
        this.macros.clearAll();
        this.filter.resetMessage();
        return OUT_NONE;
      case "helo":
      case "rcpt":
      case "data":
      case "eoh":
      case "body":
      case "unknown":
        return this.#ack(cmd.type);
    }
  }

  #endMessage(): void {
    this.#inMessage = false;
    this.macros.clearMessage();
    this.filter.resetMessage();
  }
}
