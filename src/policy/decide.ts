/**
 * The decision: message facts + policy + configuration -> verdict, in the
 * order of the original ExOTA-Milter (DESIGN.md section 2), first failing
 * step decides. Pure: policy lookups are requested as steps and answered by
 * {@link runDecision}, which calls the injected backend.
 * @module
 */
import { parseMailbox } from "../mail/address.ts";
import { dkimDomain, parseAuthResults } from "../mail/auth-results.ts";
import { EXOTA_HEADER, type MessageHeaders } from "../mail/headers.ts";
import { certName } from "./cert-subject.ts";
import { allowListed, type IpRange } from "./ip-allowlist.ts";
import type { Policy, PolicyLookup, PolicyResult } from "./types.ts";

export interface DecisionConfig {
  readonly x509Enabled: boolean;
  /** Compared case-insensitively. */
  readonly x509TrustedCn: string;
  /** Client addresses and ranges that skip the certificate check. */
  readonly x509AllowList: readonly IpRange[];
  /** When not empty, the `{cert_issuer}` CN must equal it (case-insensitively). */
  readonly x509TrustedIssuer: string;
  readonly tenantIdRequired: boolean;
  readonly dkimEnabled: boolean;
  readonly dkimAlignmentRequired: boolean;
  /** Lower-case authserv-id whose DKIM results count. */
  readonly trustedAuthservId: string;
  /**
   * Count trusted results wherever they stand. By default only those above the
   * first Received header count: the verifier's header is added on top, a
   * sender's forgery sits below the Received headers of Exchange Online.
   */
  readonly authResultsAnywhere: boolean;
  readonly addHeader: boolean;
  /** authserv-id written into the added header. */
  readonly authservId: string;
}

export interface MessageFacts {
  /** Client address from the CONNECT command, when the MTA gave one. */
  readonly clientAddress: string | undefined;
  /** The `{cert_subject}` macro (Postfix: the CN of a verified certificate; Sendmail: the DN of any certificate). */
  readonly certSubject: string | undefined;
  /** The `{cert_issuer}` macro. */
  readonly certIssuer: string | undefined;
  /** The `{verify}` macro (Sendmail: `OK` when the chain verified), when the MTA sends it. */
  readonly certVerify: string | undefined;
  readonly headers: MessageHeaders;
}

export type HeaderChange =
  /** `index` is 1-based among the headers of that name, any letter case. */
  | { readonly kind: "delete"; readonly name: string; readonly index: number }
  | { readonly kind: "add"; readonly name: string; readonly value: string };

export type Verdict =
  | {
    readonly action: "continue";
    readonly fromDomain: string;
    /** The domain whose policy authorised the message (Resent-From when forwarded). */
    readonly policyDomain: string;
    readonly forwarded: boolean;
    readonly dkimChecked: boolean;
    readonly dkimAligned: boolean;
    readonly x509Checked: boolean;
    readonly changes: readonly HeaderChange[];
  }
  | {
    readonly action: "reject" | "tempfail";
    readonly reason: string;
    readonly fromDomain: string | undefined;
  };

/** A step of the decision: a verdict, or the policy it needs first. */
export type Step = Verdict | { readonly action: "lookup"; readonly which: "from" | "resentFrom"; readonly domain: string };

export interface PolicyAnswers {
  from?: PolicyResult;
  resentFrom?: PolicyResult;
}

/** Receives one line per decision step (for debug logs and `explain`). */
export type Trace = (line: string) => void;

/** What the decision reads from a message, parsed once. */
export interface Analysis {
  readonly x509:
    | { readonly ok: true; readonly checked: boolean }
    /** `verifyMacroMissing`: the MTA must be told to send `{verify}` (a configuration problem, not the client's). */
    | { readonly ok: false; readonly reason: string; readonly verifyMacroMissing?: true };
  readonly from: { readonly ok: true; readonly domain: string } | { readonly ok: false; readonly reason: string };
  /** The topmost Resent-From; undefined when there is none. */
  readonly resentFrom: { readonly ok: true; readonly domain: string } | { readonly ok: false; readonly reason: string } | undefined;
  /** Distinct tenant ids, lower-case, in order of appearance. */
  readonly tenantIds: readonly string[];
  /** Signing domains of the trusted `dkim=pass` results ("" when none is named). */
  readonly dkimPasses: readonly string[];
  /** Trusted-id Authentication-Results ignored for standing below a Received header. */
  readonly misplacedAuthResults: number;
  readonly exotaResults: number;
}

/** The reason when the MTA passed no client certificate name at all. */
export const NO_TRUSTED_CN = "No trusted x509 client CN found";

/** The sendmail.mc line that makes Sendmail pass `{verify}` to milters. */
export const SENDMAIL_VERIFY_MACRO_LINE = "define(`confMILTER_MACROS_HELO', confMILTER_MACROS_HELO`, {verify}')dnl";

function checkX509(facts: MessageFacts, config: DecisionConfig, trace?: Trace): Analysis["x509"] {
  if (!config.x509Enabled) return { ok: true, checked: false };
  const listed = allowListed(facts.clientAddress, config.x509AllowList);
  if (listed !== undefined) {
    trace?.(`x509: client ${facts.clientAddress} is on the allow-list (${listed.text}), certificate not checked`);
    return { ok: true, checked: false };
  }
  if (facts.certSubject === undefined || facts.certSubject.trim() === "") {
    return { ok: false, reason: NO_TRUSTED_CN };
  }
  const subject = certName(facts.certSubject);
  if (!subject.ok) return { ok: false, reason: `Untrusted x509 client certificate subject: ${subject.reason}` };
  if (subject.cn.toLowerCase() !== config.x509TrustedCn.toLowerCase()) return { ok: false, reason: `Untrusted x509 client CN: ${subject.cn}` };
  // Postfix sends the certificate macros only for a verified certificate and
  // no {verify}; Sendmail sends them for any certificate and says in {verify}
  // whether the chain verified.
  const verify = facts.certVerify;
  if (verify !== undefined && verify !== "OK") {
    return { ok: false, reason: `Untrusted x509 client certificate: the MTA did not verify it ({verify}=${verify || "(empty)"})` };
  }
  if (verify === undefined && subject.dn) {
    return {
      ok: false,
      reason: "Untrusted x509 client certificate: the MTA gives its whole DN but no {verify} macro, so it may not be verified",
      verifyMacroMissing: true,
    };
  }
  if (config.x509TrustedIssuer !== "") {
    const issuer = facts.certIssuer === undefined || facts.certIssuer === "" ? undefined : certName(facts.certIssuer);
    if (issuer === undefined) return { ok: false, reason: "No x509 client certificate issuer found" };
    if (!issuer.ok) return { ok: false, reason: `Untrusted x509 client certificate issuer: ${issuer.reason}` };
    if (issuer.cn.toLowerCase() !== config.x509TrustedIssuer.toLowerCase()) {
      return { ok: false, reason: `Untrusted x509 client certificate issuer: ${issuer.cn}` };
    }
  }
  trace?.(`x509: trusted client CN ${subject.cn}${verify === undefined ? "" : " ({verify}=OK)"}`);
  return { ok: true, checked: true };
}

function analyzeFrom(values: readonly string[], trace?: Trace): Analysis["from"] {
  if (values.length === 0) return { ok: false, reason: "5322.from header missing" };
  if (values.length > 1) return { ok: false, reason: "Multiple 5322.from headers" };
  const parsed = parseMailbox(values[0]!);
  if (!parsed.ok) {
    trace?.(`from: cannot parse ${JSON.stringify(values[0])}: ${parsed.error}`);
    return { ok: false, reason: "Invalid 5322.from header" };
  }
  return { ok: true, domain: parsed.mailbox.domain };
}

/**
 * The topmost Resent-From counts: each resend puts its block on top (RFC 5322
 * 3.6.6), so it names the latest one. When it cannot be parsed, none below
 * stands in for it (the original takes the bottom-most parsable one).
 */
function analyzeResentFrom(values: readonly string[], trace?: Trace): Analysis["resentFrom"] {
  if (values.length === 0) return undefined;
  const parsed = parseMailbox(values[0]!);
  if (parsed.ok) return { ok: true, domain: parsed.mailbox.domain };
  trace?.(`resent-from: cannot parse ${JSON.stringify(values[0])}: ${parsed.error}`);
  return { ok: false, reason: "Invalid 5322.resent-from header" };
}

function trustedDkimPasses(
  headers: MessageHeaders,
  config: DecisionConfig,
  trace?: Trace,
): { passes: string[]; misplaced: number } {
  const passes: string[] = [];
  let misplaced = 0;
  for (const h of headers.authResults) {
    const ar = parseAuthResults(h.value);
    if (ar === undefined) {
      trace?.(`authentication-results: ignored, malformed: ${JSON.stringify(h.value)}`);
      continue;
    }
    if (ar.authservId !== config.trustedAuthservId) {
      trace?.(`authentication-results: ignored, authserv-id ${ar.authservId} is not trusted`);
      continue;
    }
    if (!h.aboveReceived && !config.authResultsAnywhere) {
      trace?.(`authentication-results: ignored, trusted authserv-id ${ar.authservId} below a Received header (forged?)`);
      misplaced++;
      continue;
    }
    for (const r of ar.results) {
      if (r.method === "dkim" && r.result === "pass") passes.push(dkimDomain(r) ?? "");
    }
  }
  return { passes, misplaced };
}

/** Parses what the decision needs; done once per message. */
export function analyze(facts: MessageFacts, config: DecisionConfig, trace?: Trace): Analysis {
  const tenantIds = config.tenantIdRequired
    ? [...new Set(facts.headers.tenantIds.map((t) => t.trim().toLowerCase()))]
    : [];
  const dkim = config.dkimEnabled ? trustedDkimPasses(facts.headers, config, trace) : { passes: [], misplaced: 0 };
  return {
    x509: checkX509(facts, config, trace),
    from: analyzeFrom(facts.headers.from, trace),
    resentFrom: analyzeResentFrom(facts.headers.resentFrom, trace),
    tenantIds,
    dkimPasses: dkim.passes,
    misplacedAuthResults: dkim.misplaced,
    exotaResults: facts.headers.exotaResults,
  };
}

const pyBool = (b: boolean) => (b ? "True" : "False");

/** One step of the decision flow; call again with the requested policy answered. */
export function decide(a: Analysis, config: DecisionConfig, answers: PolicyAnswers, trace?: Trace): Step {
  // Steps before the From step still name the From domain when it is known, for logs.
  const knownFrom = a.from.ok ? a.from.domain : undefined;
  const reject = (reason: string, fromDomain = knownFrom): Verdict => ({ action: "reject", reason, fromDomain });
  const tempfail = (reason: string, fromDomain?: string): Verdict => ({ action: "tempfail", reason, fromDomain });

  // 1. client certificate
  if (!a.x509.ok) return reject(a.x509.reason);
  // 2. From
  if (!a.from.ok) return reject(a.from.reason);
  const fromDomain = a.from.domain;
  // 3. tenant id headers must agree
  if (config.tenantIdRequired && a.tenantIds.length > 1) return reject("Multiple/different tenant-ID headers found!", fromDomain);

  // 4. policy of the From domain, else of the Resent-From domain (forwarded)
  const fromAnswer = answers.from;
  if (fromAnswer === undefined) return { action: "lookup", which: "from", domain: fromDomain };
  let policy: Policy;
  let policyDomain = fromDomain;
  let forwarded = false;
  switch (fromAnswer.kind) {
    case "backend_error":
      trace?.(`policy: backend problem for ${fromDomain}: ${fromAnswer.reason}`);
      return tempfail("Policy backend problem", fromDomain);
    case "invalid":
      trace?.(`policy: invalid for ${fromDomain}: ${fromAnswer.reason}`);
      return reject(`Invalid policy for 5322.from_domain ${fromDomain}`, fromDomain);
    case "found":
      policy = fromAnswer.policy;
      break;
    case "not_found": {
      if (a.resentFrom === undefined) return reject(`No policy for 5322.from_domain ${fromDomain}`, fromDomain);
      if (!a.resentFrom.ok) return reject(a.resentFrom.reason, fromDomain);
      const resent = a.resentFrom.domain;
      const resentAnswer = answers.resentFrom;
      if (resentAnswer === undefined) {
        trace?.(`policy: none for ${fromDomain}, trying 5322.resent_from_domain ${resent}`);
        return { action: "lookup", which: "resentFrom", domain: resent };
      }
      switch (resentAnswer.kind) {
        case "backend_error":
          trace?.(`policy: backend problem for ${resent}: ${resentAnswer.reason}`);
          return tempfail("Policy backend problem", fromDomain);
        case "invalid":
          trace?.(`policy: invalid for ${resent}: ${resentAnswer.reason}`);
          return reject(`Invalid policy for 5322.resent_from_domain ${resent}`, fromDomain);
        case "not_found":
          return reject(`No policy for 5322.resent_from_domain ${resent}`, fromDomain);
        case "found":
          policy = resentAnswer.policy;
          policyDomain = resent;
          forwarded = true;
      }
    }
  }
  trace?.(`policy: ${policyDomain} tenant_id=${policy.tenantId || "(none)"} dkim_enabled=${policy.dkimEnabled} dkim_alignment_required=${policy.dkimAlignmentRequired}`);

  // 5. tenant id
  if (config.tenantIdRequired) {
    const id = a.tenantIds[0];
    if (id === undefined) return reject("Tenant-ID is missing!", fromDomain);
    if (id !== policy.tenantId) return reject("No policy match for tenant-id", fromDomain);
    trace?.(`tenant-id: ${id} matches the policy`);
  }

  // 6. DKIM
  const dkimChecked = config.dkimEnabled && policy.dkimEnabled;
  const dkimAligned = a.dkimPasses.includes(fromDomain);
  if (dkimChecked) {
    if (a.dkimPasses.length === 0) return reject("No valid DKIM authentication results found", fromDomain);
    trace?.(`dkim: pass for ${a.dkimPasses.map((d) => d || "(no domain)").join(", ")}; aligned with ${fromDomain}: ${dkimAligned}`);
    if (!dkimAligned && config.dkimAlignmentRequired) {
      if (policy.dkimAlignmentRequired) return reject("DKIM alignment required!", fromDomain);
      trace?.("dkim: the policy waives alignment");
    }
  }

  // 7. forged results go, 8. ours is added
  const x509Checked = a.x509.checked;
  const changes = headerChanges(
    a.exotaResults,
    config,
    `auth=pass 5322_from_domain=${fromDomain} dkim=${pyBool(dkimChecked)} dkim_aligned=${pyBool(dkimChecked && dkimAligned)} ` +
      `x509_client_trust=${pyBool(x509Checked)} forwarded=${pyBool(forwarded)}`,
  );
  return { action: "continue", fromDomain, policyDomain, forwarded, dkimChecked, dkimAligned: dkimChecked && dkimAligned, x509Checked, changes };
}

/**
 * Deletes the `existing` X-ExOTA-Authentication-Results headers (from the
 * last to the first, so each index still names the same header) and, when
 * configured, adds ours with `results` after the authserv-id.
 */
export function headerChanges(existing: number, config: DecisionConfig, results: string): HeaderChange[] {
  const changes: HeaderChange[] = [];
  for (let i = existing; i >= 1; i--) changes.push({ kind: "delete", name: EXOTA_HEADER, index: i });
  if (config.addHeader) changes.push({ kind: "add", name: EXOTA_HEADER, value: `${config.authservId};\n  ${results}` });
  return changes;
}

/**
 * Runs the whole decision, asking `lookup` for the policies it needs. Stays
 * synchronous when the backend answers synchronously (the JSON file).
 */
export function runDecision(
  facts: MessageFacts,
  config: DecisionConfig,
  lookup: PolicyLookup,
  trace?: Trace,
): Verdict | Promise<Verdict> {
  return resolveDecision(analyze(facts, config, trace), config, lookup, trace);
}

/** {@link runDecision} for a message already analyzed. */
export function resolveDecision(
  analysis: Analysis,
  config: DecisionConfig,
  lookup: PolicyLookup,
  trace?: Trace,
): Verdict | Promise<Verdict> {
  const answers: PolicyAnswers = {};
  const run = (): Verdict | Promise<Verdict> => {
    for (;;) {
      const step = decide(analysis, config, answers, trace);
      if (step.action !== "lookup") return step;
      const answer = lookup(step.domain);
      if (answer instanceof Promise) {
        return answer.then((r) => {
          answers[step.which] = r;
          return run();
        });
      }
      answers[step.which] = answer;
    }
  };
  return run();
}

/** The SMTP reply text of the original: `queue_id: Q - message - reason: R`. */
export function replyText(queueId: string, message: string, reason: string): string {
  // Nothing from the message may break the reply line.
  // deno-lint-ignore no-control-regex
  return `queue_id: ${queueId} - ${message} - reason: ${reason}`.replace(/[\x00-\x1f\x7f]/g, " ");
}
