/**
 * The ExOTA filter: collects what a message says about its sender, and at
 * end of message turns the decision into milter replies.
 *
 * Pure: the policy lookup and the log are passed in.
 * @module
 */
import { HeaderCollector } from "./mail/headers.ts";
import { Action, MacroStage, Proto } from "./milter/protocol.ts";
import type { ConnectInfo, Filter, Macros } from "./milter/session.ts";
import type { FilterNeeds } from "./milter/negotiate.ts";
import type { Reply } from "./milter/types.ts";
import {
  analyze,
  type DecisionConfig,
  type HeaderChange,
  headerChanges,
  replyText,
  resolveDecision,
  SENDMAIL_VERIFY_MACRO_LINE,
  type Trace,
  type Verdict,
} from "./policy/decide.ts";
import type { PolicyLookup } from "./policy/types.ts";

export interface FilterConfig extends DecisionConfig {
  readonly rejectMessage: string;
  readonly tempfailMessage: string;
  /** Limits per message; beyond them headers are no longer kept and the message is tempfailed. */
  readonly maxHeaders: number;
  readonly maxHeaderBytes: number;
  /** Let rejected and tempfailed messages through; the added header says what would have happened. */
  readonly reportOnly: boolean;
}

/** One decision, as logged. */
export interface DecisionRecord {
  readonly queueId: string;
  readonly client: string | undefined;
  readonly verdict: Verdict;
  /** From end of message to verdict, when the hooks have a clock. */
  readonly latencyMs: number | undefined;
}

export interface FilterHooks {
  decided(record: DecisionRecord): void;
  /** A bug or a failing backend: the message was tempfailed. */
  failed(queueId: string, error: unknown): void;
  /** Something a postmaster should see even without debug logs. */
  warn(queueId: string, message: string): void;
  /** A fault of the MTA's configuration, not of the message: worth one WARNING per process, not one per message. */
  misconfigured(message: string): void;
  /** Present only when step-by-step lines are wanted (debug). */
  readonly trace?: (queueId: string, line: string) => void;
  /** A clock in milliseconds, for decision latency. */
  readonly now?: () => number;
}

/** Steps this filter never needs; where the MTA can, it skips them or expects no reply. */
const PROTOCOL_WISHES = Proto.NORCPT | Proto.NOBODY | Proto.NOEOH | Proto.NOUNKNOWN | Proto.NODATA |
  Proto.NR_CONN | Proto.NR_HELO | Proto.NR_MAIL | Proto.NR_RCPT | Proto.NR_DATA | Proto.NR_HDR |
  Proto.NR_EOH | Proto.NR_BODY | Proto.NR_UNKN;

/**
 * On TCP the DATA command gets its reply. Postfix buffers what needs no reply
 * and writes it before its next read, but the envelope (smtpd: CONNECT to
 * DATA) and the content (cleanup: headers to end of message) are separate
 * writes. Without a reply in between, Nagle holds the content until our
 * delayed ACK: ~40 ms per message (Postfix 3.7, tests/e2e: 50-60 ms per
 * message with every NR_* flag). With a reply to DATA, smtpd reads before
 * cleanup writes: two round trips per message and no stall (tests/e2e: 12-27
 * ms; bench/load.ts on TCP: 3,100 messages/s on one connection, 0.13-0.2 ms
 * CPU per message, against 900/s and 0.6-0.7 ms with a reply to every command).
 */
const TCP_PROTOCOL_WISHES = PROTOCOL_WISHES & ~(Proto.NODATA | Proto.NR_DATA);

/** What to negotiate for a configuration; `tcp`: the MTA connected over TCP. */
export function filterNeeds(config: Pick<FilterConfig, "addHeader">, tcp = false): FilterNeeds {
  return {
    actions: Action.CHGHDRS | (config.addHeader ? Action.ADDHDRS : 0),
    protocol: tcp ? TCP_PROTOCOL_WISHES : PROTOCOL_WISHES,
    macros: new Map([
      // {verify}: Sendmail's only word on whether it verified the certificate.
      [MacroStage.HELO, ["{cert_subject}", "{cert_issuer}", "{verify}"]],
      [MacroStage.ENVFROM, ["i"]],
      [MacroStage.EOM, ["i"]],
    ]),
  };
}

function changeReplies(changes: readonly HeaderChange[]): Reply[] {
  const out: Reply[] = changes.map((c): Reply =>
    c.kind === "delete" ? { type: "chgheader", index: c.index, name: c.name, value: "" } : { type: "addheader", name: c.name, value: c.value }
  );
  out.push({ type: "continue" });
  return out;
}

/**
 * The replies for a verdict. `existingResults` counts the message's own
 * X-ExOTA-Authentication-Results headers, removed in report-only mode too.
 */
export function verdictReplies(verdict: Verdict, queueId: string, config: FilterConfig, existingResults: number): Reply[] {
  if (verdict.action !== "continue" && config.reportOnly) {
    // The reason may quote the client's certificate CN: no quotes, no line breaks into the header.
    // deno-lint-ignore no-control-regex
    const reason = verdict.reason.replaceAll('"', "'").replace(/[\x00-\x1f\x7f]/g, " ");
    const results = `auth=fail report_only=True would=${verdict.action} reason="${reason}"` +
      ` 5322_from_domain=${verdict.fromDomain ?? "unknown"}`;
    return changeReplies(headerChanges(existingResults, config, results));
  }
  switch (verdict.action) {
    case "continue":
      return changeReplies(verdict.changes);
    case "reject":
      return [{ type: "replycode", code: 550, text: `5.7.1 ${replyText(queueId, config.rejectMessage, verdict.reason)}` }];
    case "tempfail":
      return [{ type: "replycode", code: 450, text: `4.7.1 ${replyText(queueId, config.tempfailMessage, verdict.reason)}` }];
  }
}

export class ExotaFilter implements Filter {
  readonly needs: FilterNeeds;
  #client: string | undefined;
  #headers = new HeaderCollector();
  #overflow = false;

  /** `lookup` is read at each end of message, so a reload takes effect for the next message. */
  constructor(
    readonly config: FilterConfig,
    readonly lookup: () => PolicyLookup,
    readonly hooks: FilterHooks,
    tcp = false,
  ) {
    this.needs = filterNeeds(config, tcp);
  }

  connect(info: ConnectInfo): void {
    this.#client = info.address;
  }

  header(name: string, value: string): void {
    const h = this.#headers;
    if (h.count >= this.config.maxHeaders || h.bytes + name.length + value.length > this.config.maxHeaderBytes) {
      this.#overflow = true;
      // Still counted: report-only mode removes forged results past the limit too.
      if (name.toLowerCase() === "x-exota-authentication-results") h.exotaResults++;
      return;
    }
    h.add(name, value);
  }

  resetMessage(): void {
    if (this.#headers.count > 0) this.#headers = new HeaderCollector();
    this.#overflow = false;
  }

  endOfMessage(macros: Macros): Reply[] | Promise<Reply[]> {
    const queueId = macros.get("i") || "NOQUEUE";
    const traceHook = this.hooks.trace;
    const trace: Trace | undefined = traceHook && ((line) => traceHook(queueId, line));
    const facts = {
      clientAddress: this.#client,
      certSubject: macros.get("cert_subject"),
      certIssuer: macros.get("cert_issuer"),
      certVerify: macros.get("verify"),
      headers: this.#headers,
    };
    const started = this.hooks.now?.();
    const finish = (verdict: Verdict): Reply[] => {
      const latencyMs = started === undefined ? undefined : this.hooks.now!() - started;
      this.hooks.decided({ queueId, client: this.#client, verdict, latencyMs });
      return verdictReplies(verdict, queueId, this.config, facts.headers.exotaResults);
    };
    const failed = (e: unknown): Reply[] => {
      this.hooks.failed(queueId, e);
      return finish({ action: "tempfail", reason: "Internal error", fromDomain: undefined });
    };
    if (this.#overflow) {
      this.hooks.warn(queueId, `message header over the limits (${this.config.maxHeaders} headers, ${this.config.maxHeaderBytes} bytes)`);
      return finish({ action: "tempfail", reason: "Message header too large", fromDomain: undefined });
    }
    try {
      const analysis = analyze(facts, this.config, trace);
      if (!analysis.x509.ok && analysis.x509.verifyMacroMissing) {
        this.hooks.misconfigured(
          "the MTA gives client certificates as a whole DN (Sendmail) without the {verify} macro, so no certificate is trusted; " +
            `add to sendmail.mc: ${SENDMAIL_VERIFY_MACRO_LINE}`,
        );
      }
      if (analysis.misplacedAuthResults > 0) {
        this.hooks.warn(queueId, `ignored ${analysis.misplacedAuthResults} Authentication-Results header(s) of the trusted authserv-id below a Received header (forged by the sender?)`);
      }
      const v = resolveDecision(analysis, this.config, this.lookup(), trace);
      return v instanceof Promise ? v.then(finish, failed) : finish(v);
    } catch (e) {
      return failed(e);
    }
  }
}
