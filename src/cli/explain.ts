/**
 * `exota-milter explain`: the decision for a saved message, step by step,
 * so a postmaster can answer "why was this rejected?" without a mail flow.
 * Exit code by verdict: 0 accept, 2 reject, 3 tempfail.
 * @module
 */
import { readFileSync } from "node:fs";
import type { Config, ExplainRequest } from "../config.ts";
import { verdictReplies } from "../filter.ts";
import { parseAuthResults } from "../mail/auth-results.ts";
import { HeaderCollector } from "../mail/headers.ts";
import { parseHeaderBlock } from "../mail/message.ts";
import { certName, decodeXtext } from "../policy/cert-subject.ts";
import { analyze, NO_TRUSTED_CN, resolveDecision } from "../policy/decide.ts";
import type { PolicyLookup } from "../policy/types.ts";

/** A certificate macro as given, quoted (white space counts), decoded when it is Sendmail's xtext DN, and its CN. */
function certMacro(value: string | undefined): string {
  if (value === undefined) return "(none)";
  const name = certName(value);
  const decoded = value.startsWith("/") ? decodeXtext(value) : value;
  const parts = [JSON.stringify(value)];
  if (decoded !== undefined && decoded !== value) parts.push(`decoded ${JSON.stringify(decoded)}`);
  parts.push(name.ok ? `${name.dn ? "DN" : "bare CN"}, CN ${JSON.stringify(name.cn)}` : `not usable: ${name.reason}`);
  return parts.join(", ");
}

export const EXIT_BY_VERDICT = { continue: 0, reject: 2, tempfail: 3 } as const;

export async function explain(config: Config, req: ExplainRequest, lookup: PolicyLookup, print: (line: string) => void): Promise<number> {
  let text: string;
  try {
    text = readFileSync(req.messageFile, "utf8");
  } catch (e) {
    // Not every error names the file (EISDIR does not).
    throw new Error(`cannot read message file ${req.messageFile}: ${(e as Error).message}`);
  }
  const fields = parseHeaderBlock(text);
  const headers = new HeaderCollector();
  for (const [name, value] of fields) headers.add(name, value);
  print(`message: ${req.messageFile} (${fields.length} header fields)`);
  print(`client: ${req.clientIp ?? "(none given)"}`);
  print(`{cert_subject}: ${certMacro(req.certSubject)}`);
  print(`{cert_issuer}: ${certMacro(req.certIssuer)}`);
  print(`{verify}: ${req.certVerify === undefined ? "(none: Postfix sends none, Sendmail only when configured)" : JSON.stringify(req.certVerify)}`);
  const trace = (line: string) => print(`  ${line}`);
  const fc = config.filter;
  const facts = { clientAddress: req.clientIp, certSubject: req.certSubject, certIssuer: req.certIssuer, certVerify: req.certVerify, headers };
  const analysis = analyze(facts, fc, trace);
  if (!fc.x509Enabled) trace("x509: check disabled (MILTER_X509_ENABLED=false)");
  if (!fc.dkimEnabled) trace("dkim: check disabled (MILTER_DKIM_ENABLED=false)");
  if (!fc.tenantIdRequired) trace("tenant-id: not required (MILTER_TENANT_ID_REQUIRED=false)");
  if (analysis.misplacedAuthResults > 0) trace(`warning: ${analysis.misplacedAuthResults} trusted Authentication-Results below a Received header ignored`);
  const verdict = await resolveDecision(analysis, fc, lookup, trace);
  const queueId = req.queueId ?? "NOQUEUE";
  print(`verdict: ${verdict.action}${verdict.action === "continue" ? "" : ` (${verdict.reason})`}${fc.reportOnly && verdict.action !== "continue" ? " - report-only mode: the message would be let through" : ""}`);
  for (const r of verdictReplies(verdict, queueId, fc, headers.exotaResults)) {
    switch (r.type) {
      case "replycode":
        print(`reply: ${r.code} ${r.text}`);
        break;
      case "chgheader":
        print(`header: delete ${r.name} #${r.index}`);
        break;
      case "addheader":
        print(`header: add ${r.name}: ${r.value.replace(/\n/g, "\n    ")}`);
        break;
    }
  }
  for (const hint of configurationHints(fields, fc, verdict.action === "continue" ? "" : verdict.reason)) print(`hint: ${hint}`);
  return EXIT_BY_VERDICT[verdict.action];
}

/**
 * Outcomes that usually mean the MTA is set up wrong, not that the sender
 * is: each names the audit that finds the mistake.
 */
function configurationHints(fields: ReadonlyArray<readonly [string, string]>, fc: Config["filter"], reason: string): string[] {
  const hints: string[] = [];
  const trusted = fields.some(([name, value]) =>
    name.toLowerCase() === "authentication-results" && parseAuthResults(value)?.authservId === fc.trustedAuthservId
  );
  if (fc.dkimEnabled && !trusted) {
    hints.push(
      `no Authentication-Results of ${fc.trustedAuthservId} at all: if live mail looks like this, the DKIM verifier does not run before ` +
        "exota-milter, or writes another authserv-id; `exota-milter check --postfix` audits the milter order",
    );
  }
  if (reason === NO_TRUSTED_CN) {
    hints.push("if live mail is rejected for this, Postfix does not pass {cert_subject}; `exota-milter check --postfix` audits smtpd_tls_ask_ccert, the CA and the macros");
  }
  return hints;
}
