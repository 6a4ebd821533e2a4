/**
 * The decision flow of DESIGN.md section 2, step by step, with the exact
 * reasons and reply texts: through ExotaFilter driven by a MilterSession over
 * encoded and decoded frames, and through the decision functions directly.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeCommand, decodeReply, encodeCommand, encodeReplies, FrameReader } from "../../src/milter/codec.ts";
import { Action, MacroStage, Proto } from "../../src/milter/protocol.ts";
import { MilterSession } from "../../src/milter/session.ts";
import type { Command, Reply } from "../../src/milter/types.ts";
import { type DecisionRecord, ExotaFilter, type FilterConfig, filterNeeds, verdictReplies } from "../../src/filter.ts";
import { HeaderCollector } from "../../src/mail/headers.ts";
import { analyze, decide, type MessageFacts, replyText, runDecision, type Verdict } from "../../src/policy/decide.ts";
import { parseRange } from "../../src/policy/ip-allowlist.ts";
import { mapLookup } from "../../src/policy/policy-file.ts";
import type { Policy, PolicyLookup, PolicyResult } from "../../src/policy/types.ts";

const TENANT = "1234abcd-18c5-45e8-88de-123456789abc";
const OTHER_TENANT = "0badbeef-0000-4000-8000-000000000bad";
const EXOTA = "X-ExOTA-Authentication-Results";
const REJECT_MSG = "Security policy violation!";
const TEMPFAIL_MSG = "Service temporarily not available! Please try again later.";
const TRUSTED_CN = "mail.protection.outlook.com";
const MS_RECEIVED = "from AM0PR01MB0001.eurprd01.prod.outlook.com (2603:10a6::1) by AM0PR01MB0002.outlook.office365.com";

const BASE: FilterConfig = {
  x509Enabled: false,
  x509TrustedCn: TRUSTED_CN,
  x509AllowList: ["127.0.0.1", "::1"].map((a) => parseRange(a)!),
  x509TrustedIssuer: "",
  tenantIdRequired: false,
  dkimEnabled: false,
  dkimAlignmentRequired: false,
  trustedAuthservId: "relay.example.net",
  authResultsAnywhere: false,
  addHeader: true,
  authservId: "relay.example.net",
  rejectMessage: REJECT_MSG,
  tempfailMessage: TEMPFAIL_MSG,
  maxHeaders: 1000,
  maxHeaderBytes: 262144,
  reportOnly: false,
};

const policy = (over: Partial<Policy> = {}): Policy => ({ tenantId: TENANT, dkimEnabled: true, dkimAlignmentRequired: true, ...over });

const POLICIES = new Map<string, Policy>([
  ["tenant.example", policy()],
  ["relaxed.example", policy({ dkimAlignmentRequired: false })],
  ["nodkim.example", policy({ dkimEnabled: false })],
  ["forwarder.example", policy()],
  ["xn--mller-kva.example", policy()],
]);

type Header = readonly [string, string];

interface Message {
  config?: Partial<FilterConfig>;
  lookup?: PolicyLookup;
  headers: readonly Header[];
  /** `{cert_subject}`, `{cert_issuer}`, `{verify}` sent with the HELO macros; each omitted when undefined. */
  cert?: string;
  issuer?: string;
  verify?: string;
  /** Client address; default a Microsoft address (not allow-listed). */
  client?: string;
  /** The `i` macro, sent with the MAIL and EOM macros; "" = not sent. */
  queueId?: string;
}

interface Outcome {
  replies: Reply[];
  decided: DecisionRecord[];
  failed: Array<{ queueId: string; error: unknown }>;
  warned: string[];
  misconfigured: string[];
}

const reject = (reason: string, queueId = "Q1"): Reply[] => [
  { type: "replycode", code: 550, text: `5.7.1 queue_id: ${queueId} - ${REJECT_MSG} - reason: ${reason}` },
];
const tempfail = (reason: string, queueId = "Q1"): Reply[] => [
  { type: "replycode", code: 450, text: `4.7.1 queue_id: ${queueId} - ${TEMPFAIL_MSG} - reason: ${reason}` },
];
const added = (fields: { from: string; dkim: boolean; aligned: boolean; x509: boolean; forwarded: boolean }, id = "relay.example.net"): Reply => ({
  type: "addheader",
  name: EXOTA,
  value: `${id};\n  auth=pass 5322_from_domain=${fields.from} dkim=${fields.dkim ? "True" : "False"} dkim_aligned=${
    fields.aligned ? "True" : "False"
  } x509_client_trust=${fields.x509 ? "True" : "False"} forwarded=${fields.forwarded ? "True" : "False"}`,
});

/** Sends commands as frames and reads replies back from frames, like an MTA would. */
class Wire {
  readonly #toFilter = new FrameReader();
  readonly #toMta = new FrameReader();
  constructor(readonly session: MilterSession) {}

  async send(cmd: Command): Promise<{ replies: Reply[]; close: boolean }> {
    this.#toFilter.push(encodeCommand(cmd));
    const f = this.#toFilter.next();
    assert.ok(f !== undefined && f.ok);
    const decoded = decodeCommand(f.value.code, f.value.payload);
    assert.ok(decoded.ok);
    const out = await this.session.handle(decoded.value);
    const replies: Reply[] = [];
    if (out.replies.length > 0) {
      this.#toMta.push(encodeReplies(out.replies));
      for (let r = this.#toMta.next(); r !== undefined; r = this.#toMta.next()) {
        assert.ok(r.ok);
        const d = decodeReply(r.value.code, r.value.payload);
        assert.ok(d.ok, d.ok ? "" : d.error);
        replies.push(d.value);
      }
    }
    return { replies, close: out.close !== undefined };
  }
}

function newFilter(config: Partial<FilterConfig>, lookup: PolicyLookup) {
  const o: Outcome = { replies: [], decided: [], failed: [], warned: [], misconfigured: [] };
  const filter = new ExotaFilter({ ...BASE, ...config }, () => lookup, {
    decided: (r) => o.decided.push(r),
    failed: (queueId, error) => o.failed.push({ queueId, error }),
    warn: (_q, m) => o.warned.push(m),
    misconfigured: (m) => o.misconfigured.push(m),
  });
  return { filter, outcome: o };
}

/** One connection, one message, as Postfix sends it (protocol 6, all actions offered). */
async function run(m: Message): Promise<Outcome> {
  const { filter, outcome } = newFilter(m.config ?? {}, m.lookup ?? mapLookup(POLICIES));
  const wire = new Wire(new MilterSession(filter));
  const queueId = m.queueId ?? "Q1";
  const neg = await wire.send({ type: "optneg", version: 6, actions: 0x1ff, protocol: 0x1fffff });
  assert.equal(neg.close, false);
  await wire.send({ type: "macro", stage: "C", macros: [["j", "relay.example.net"], ["{daemon_name}", "smtpd"]] });
  const client = m.client ?? "40.107.1.2";
  await wire.send({ type: "connect", hostname: "mail-x.outbound.protection.outlook.com", family: client.includes(":") ? "inet6" : "inet", port: 41000, address: client });
  const helo: Array<[string, string]> = [];
  if (m.cert !== undefined) helo.push(["{cert_subject}", m.cert]);
  if (m.issuer !== undefined) helo.push(["{cert_issuer}", m.issuer]);
  if (m.verify !== undefined) helo.push(["{verify}", m.verify]);
  await wire.send({ type: "macro", stage: "H", macros: helo });
  await wire.send({ type: "helo", name: "EUR01-DB5-obe.outbound.protection.outlook.com" });
  await wire.send({ type: "macro", stage: "M", macros: queueId === "" ? [] : [["i", queueId]] });
  await wire.send({ type: "mail", args: ["<sender@tenant.example>", "SIZE=100"] });
  for (const [name, value] of m.headers) {
    const r = await wire.send({ type: "header", name, value });
    assert.deepEqual(r.replies, [], "NR_HDR is agreed: no reply to headers");
  }
  await wire.send({ type: "macro", stage: "E", macros: queueId === "" ? [] : [["i", queueId]] });
  const eom = await wire.send({ type: "eom", chunk: new Uint8Array(0) });
  assert.equal(eom.close, false);
  outcome.replies = eom.replies;
  return outcome;
}

const pass = (d: string, id = "relay.example.net") => `${id}; dkim=pass (2048-bit key; unprotected) header.d=${d} header.i=@${d} header.b=AbC/+d==`;

/** A legitimate Exchange Online message: trusted DKIM result on top, then Received, From, tenant id. */
function msg(from = "john@tenant.example", extra: readonly Header[] = [], dkimDomain = "tenant.example", tenant = TENANT): Header[] {
  return [
    ["Authentication-Results", pass(dkimDomain)],
    ["Received", MS_RECEIVED],
    ["From", from],
    ["X-MS-Exchange-CrossTenant-Id", tenant],
    ...extra,
  ];
}

const STRICT: Partial<FilterConfig> = { tenantIdRequired: true, dkimEnabled: true, dkimAlignmentRequired: true };

describe("step 1: x509 client certificate", () => {
  it("x509 disabled: no certificate needed, x509_client_trust=False", async () => {
    const o = await run({ headers: msg() });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: false, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("allow-listed client skips the check (x509_client_trust=False)", async () => {
    const o = await run({ config: { x509Enabled: true }, client: "127.0.0.1", headers: msg() });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: false, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("allow-listed IPv6 client (::1) skips the check", async () => {
    const o = await run({ config: { x509Enabled: true }, client: "::1", headers: msg() });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("missing CN -> reject", async () => {
    const o = await run({ config: { x509Enabled: true }, headers: msg() });
    assert.deepEqual(o.replies, reject("No trusted x509 client CN found"));
  });

  it("empty CN -> reject", async () => {
    const o = await run({ config: { x509Enabled: true }, cert: "  ", headers: msg() });
    assert.deepEqual(o.replies, reject("No trusted x509 client CN found"));
  });

  it("wrong CN -> reject naming it", async () => {
    const o = await run({ config: { x509Enabled: true }, cert: "mx.rogue.example", headers: msg() });
    assert.deepEqual(o.replies, reject("Untrusted x509 client CN: mx.rogue.example"));
  });

  it("trusted CN in another letter case is accepted, x509_client_trust=True", async () => {
    const o = await run({ config: { x509Enabled: true }, cert: "Mail.Protection.OUTLOOK.com", headers: msg() });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: false, aligned: false, x509: true, forwarded: false }), { type: "continue" }]);
  });

  it("configured CN in another letter case is accepted", async () => {
    const o = await run({ config: { x509Enabled: true, x509TrustedCn: "MAIL.protection.outlook.COM" }, cert: TRUSTED_CN, headers: msg() });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("x509 is checked before everything else (no From either)", async () => {
    const o = await run({ config: { x509Enabled: true }, headers: [] });
    assert.deepEqual(o.replies, reject("No trusted x509 client CN found"));
  });
});

describe("step 1 under Sendmail: whole DN, xtext, {verify}", () => {
  const X509 = { x509Enabled: true };
  const SM_SUBJECT = "/C=US/ST=Washington/L=Redmond/O=Microsoft+20Corporation/CN=mail.protection.outlook.com";
  const SM_ISSUER = "/C=US/O=DigiCert+20Inc/CN=DigiCert+20Cloud+20Services+20CA-1";
  const ok = [added({ from: "tenant.example", dkim: false, aligned: false, x509: true, forwarded: false }), { type: "continue" }];
  const noVerify = "Untrusted x509 client certificate: the MTA gives its whole DN but no {verify} macro, so it may not be verified";

  it("the MTA is asked for {verify} with the certificate macros", () => {
    assert.deepEqual(filterNeeds(BASE).macros.get(MacroStage.HELO), ["{cert_subject}", "{cert_issuer}", "{verify}"]);
  });

  it("{verify}=OK and the trusted CN in the DN: accepted", async () => {
    assert.deepEqual((await run({ config: X509, cert: SM_SUBJECT, verify: "OK", headers: msg() })).replies, ok);
  });

  for (const verify of ["FAIL", "NO", "NONE", "NOT", "TEMP", "PROTOCOL", "SOFTWARE", "ok", ""]) {
    it(`{verify}=${JSON.stringify(verify)}: not trusted, whatever the CN`, async () => {
      const o = await run({ config: X509, cert: SM_SUBJECT, verify, headers: msg() });
      assert.deepEqual(o.replies, reject(`Untrusted x509 client certificate: the MTA did not verify it ({verify}=${verify || "(empty)"})`));
    });
  }

  it("{verify} other than OK also with a bare CN (an MTA that sends {verify} is believed)", async () => {
    const o = await run({ config: X509, cert: TRUSTED_CN, verify: "FAIL", headers: msg() });
    assert.deepEqual(o.replies, reject("Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL)"));
  });

  it("a whole DN without {verify}: not trusted, one configuration warning per filter call with the sendmail.mc line", async () => {
    const o = await run({ config: X509, cert: SM_SUBJECT, headers: msg() });
    assert.deepEqual(o.replies, reject(noVerify));
    assert.equal(o.misconfigured.length, 1);
    assert.match(o.misconfigured[0]!, /add to sendmail\.mc: define\(`confMILTER_MACROS_HELO', confMILTER_MACROS_HELO`, \{verify\}'\)dnl$/);
    assert.deepEqual(o.warned, [], "no per-message warning");
  });

  it("an RFC 4514 DN without {verify}: not trusted either", async () => {
    const o = await run({ config: X509, cert: "CN=mail.protection.outlook.com,O=Microsoft Corporation,C=US", headers: msg() });
    assert.deepEqual(o.replies, reject(noVerify));
  });

  it("a bare CN without {verify} (Postfix) stays trusted, no warning", async () => {
    const o = await run({ config: X509, cert: TRUSTED_CN, headers: msg() });
    assert.deepEqual(o.replies, ok);
    assert.deepEqual(o.misconfigured, []);
  });

  it("xtext in the CN is decoded before the comparison", async () => {
    const o = await run({ config: { ...X509, x509TrustedCn: "Exchange Online+Relay" }, cert: "/O=x/CN=Exchange+20Online+2BRelay", verify: "OK", headers: msg() });
    assert.deepEqual(o.replies, ok);
    const raw = await run({ config: { ...X509, x509TrustedCn: "Exchange+20Online" }, cert: "/CN=Exchange+20Online", verify: "OK", headers: msg() });
    assert.deepEqual(raw.replies, reject("Untrusted x509 client CN: Exchange Online"), "the encoded form is not the name");
  });

  for (const bad of ["/CN=mail.protection.outlook.com+", "/CN=mail+2.protection.outlook.com", "/O=a+zz/CN=mail.protection.outlook.com", "/CN=mail.protection.outlook.com+2e"]) {
    it(`malformed xtext ${JSON.stringify(bad)}: not trusted`, async () => {
      const o = await run({ config: X509, cert: bad, verify: "OK", headers: msg() });
      assert.deepEqual(o.replies, reject(`Untrusted x509 client certificate subject: malformed xtext escape in ${bad}`));
    });
  }

  it("a DN with two CNs (one hidden in another attribute's value) is not trusted", async () => {
    const cert = "/C=US/CN=rogue.example/OU=x/CN=mail.protection.outlook.com";
    const o = await run({ config: X509, cert, verify: "OK", headers: msg() });
    assert.deepEqual(o.replies, reject(`Untrusted x509 client certificate subject: more than one CN in ${cert}`));
  });

  it("a DN without CN is not trusted", async () => {
    const o = await run({ config: X509, cert: "/C=US/O=mail.protection.outlook.com", verify: "OK", headers: msg() });
    assert.deepEqual(o.replies, reject("Untrusted x509 client certificate subject: no CN in /C=US/O=mail.protection.outlook.com"));
  });

  for (const [cert, reason] of [
    [" mail.protection.outlook.com", "Untrusted x509 client CN:  mail.protection.outlook.com"],
    ["mail.protection.outlook.com ", "Untrusted x509 client CN: mail.protection.outlook.com "],
    // The reply text carries no control characters: the tab goes out as a space.
    ["\tmail.protection.outlook.com", "Untrusted x509 client CN:  mail.protection.outlook.com"],
    ["/CN= mail.protection.outlook.com", "Untrusted x509 client CN:  mail.protection.outlook.com"],
    ["/CN=mail.protection.outlook.com+20", "Untrusted x509 client CN: mail.protection.outlook.com "],
    // Not a DN (no "CN=" at its start): taken as a bare name, which it is not.
    ["CN = mail.protection.outlook.com", "Untrusted x509 client CN: CN = mail.protection.outlook.com"],
  ] as const) {
    it(`white space around the name is not the name: ${JSON.stringify(cert)}`, async () => {
      const o = await run({ config: X509, cert, verify: "OK", headers: msg() });
      assert.deepEqual(o.replies, reject(reason));
    });
  }

  it("issuer: decoded and compared exactly, letter case aside", async () => {
    const cfg = { ...X509, x509TrustedIssuer: "DigiCert Cloud Services CA-1" };
    assert.deepEqual((await run({ config: cfg, cert: SM_SUBJECT, issuer: SM_ISSUER, verify: "OK", headers: msg() })).replies, ok);
    assert.deepEqual((await run({ config: cfg, cert: SM_SUBJECT, issuer: SM_ISSUER.toUpperCase(), verify: "OK", headers: msg() })).replies, ok);
    for (const [issuer, reason] of [
      [" DigiCert Cloud Services CA-1", "Untrusted x509 client certificate issuer:  DigiCert Cloud Services CA-1"],
      ["DigiCert Cloud Services CA-1 ", "Untrusted x509 client certificate issuer: DigiCert Cloud Services CA-1 "],
      ["/CN=DigiCert+20Cloud+20Services+20CA-1+20", "Untrusted x509 client certificate issuer: DigiCert Cloud Services CA-1 "],
      ["/CN=DigiCert+2xCloud", "Untrusted x509 client certificate issuer: malformed xtext escape in /CN=DigiCert+2xCloud"],
      ["", "No x509 client certificate issuer found"],
    ] as const) {
      const o = await run({ config: cfg, cert: SM_SUBJECT, issuer, verify: "OK", headers: msg() });
      assert.deepEqual(o.replies, reject(reason), issuer);
    }
  });

  it("the issuer does not stand in for {verify}: right issuer name, unverified certificate", async () => {
    const cfg = { ...X509, x509TrustedIssuer: "DigiCert Cloud Services CA-1" };
    assert.deepEqual((await run({ config: cfg, cert: SM_SUBJECT, issuer: SM_ISSUER, verify: "FAIL", headers: msg() })).replies,
      reject("Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL)"));
    assert.deepEqual((await run({ config: cfg, cert: SM_SUBJECT, issuer: SM_ISSUER, headers: msg() })).replies, reject(noVerify));
  });
});

describe("step 2: From", () => {
  it("From missing -> reject", async () => {
    const o = await run({ headers: [["Subject", "hi"]] });
    assert.deepEqual(o.replies, reject("5322.from header missing"));
  });

  it("two From headers -> reject", async () => {
    const o = await run({ headers: [...msg(), ["From", "ceo@tenant.example"]] });
    assert.deepEqual(o.replies, reject("Multiple 5322.from headers"));
  });

  it("two From headers in different letter case -> reject", async () => {
    const o = await run({ headers: [...msg(), ["fROM", "ceo@tenant.example"]] });
    assert.deepEqual(o.replies, reject("Multiple 5322.from headers"));
  });

  it("unparsable From -> reject", async () => {
    for (const from of ["not an address", "a@x.example, b@y.example", "alice@evil.example)<bob@tenant.example>", ""]) {
      const o = await run({ headers: msg(from) });
      assert.deepEqual(o.replies, reject("Invalid 5322.from header"), from);
    }
  });

  it("From domain is lower-cased and IDN-normalized for lookup and header", async () => {
    const o = await run({ headers: msg("Jörg <j@MÜLLER.example>") });
    assert.deepEqual(o.replies, [added({ from: "xn--mller-kva.example", dkim: false, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });
});

describe("step 3: tenant id headers must agree", () => {
  it("two different tenant ids -> reject", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg(undefined, [["X-MS-Exchange-CrossTenant-Id", OTHER_TENANT]]) });
    assert.deepEqual(o.replies, reject("Multiple/different tenant-ID headers found!"));
  });

  it("the same tenant id twice in different case is fine", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg(undefined, [["x-ms-exchange-crosstenant-id", TENANT.toUpperCase()]]) });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("two different tenant ids do not matter when the tenant id is not required", async () => {
    const o = await run({ headers: msg(undefined, [["X-MS-Exchange-CrossTenant-Id", OTHER_TENANT]]) });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("the tenant-id check comes before the policy lookup", async () => {
    let lookups = 0;
    const o = await run({
      config: { tenantIdRequired: true },
      lookup: () => {
        lookups++;
        return { kind: "not_found" };
      },
      headers: msg(undefined, [["X-MS-Exchange-CrossTenant-Id", OTHER_TENANT]]),
    });
    assert.deepEqual(o.replies, reject("Multiple/different tenant-ID headers found!"));
    assert.equal(lookups, 0);
  });
});

describe("step 4: policy lookup", () => {
  const answering = (answers: Record<string, PolicyResult>): PolicyLookup => (d) => answers[d] ?? { kind: "not_found" };

  it("backend_error -> tempfail 450 4.7.1 'Policy backend problem'", async () => {
    const o = await run({ lookup: () => ({ kind: "backend_error", reason: "LDAP timeout" }), headers: msg() });
    assert.deepEqual(o.replies, tempfail("Policy backend problem"));
  });

  it("backend_error from an async backend -> tempfail", async () => {
    const o = await run({ lookup: () => Promise.resolve({ kind: "backend_error", reason: "down" }), headers: msg() });
    assert.deepEqual(o.replies, tempfail("Policy backend problem"));
  });

  it("invalid policy -> reject", async () => {
    const o = await run({ lookup: () => ({ kind: "invalid", reason: "two entries" }), headers: msg() });
    assert.deepEqual(o.replies, reject("Invalid policy for 5322.from_domain tenant.example"));
  });

  it("not found, no Resent-From -> reject", async () => {
    const o = await run({ headers: msg("eve@unknown.example") });
    assert.deepEqual(o.replies, reject("No policy for 5322.from_domain unknown.example"));
  });

  it("not found, Resent-From found -> continue with forwarded=True", async () => {
    const o = await run({ headers: msg("alice@partner.example", [["Resent-From", "Bob <bob@Forwarder.example>"]]) });
    assert.deepEqual(o.replies, [added({ from: "partner.example", dkim: false, aligned: false, x509: false, forwarded: true }), { type: "continue" }]);
    const v = o.decided[0]!.verdict;
    assert.ok(v.action === "continue");
    assert.equal(v.policyDomain, "forwarder.example");
    assert.equal(v.forwarded, true);
  });

  it("found From policy wins over Resent-From (forwarded=False, one lookup)", async () => {
    const asked: string[] = [];
    const o = await run({
      lookup: (d) => {
        asked.push(d);
        return mapLookup(POLICIES)(d);
      },
      headers: msg(undefined, [["Resent-From", "bob@forwarder.example"]]),
    });
    assert.deepEqual(o.replies[0], added({ from: "tenant.example", dkim: false, aligned: false, x509: false, forwarded: false }));
    assert.deepEqual(asked, ["tenant.example"]);
  });

  it("not found, Resent-From not found -> reject", async () => {
    const o = await run({ headers: msg("alice@partner.example", [["Resent-From", "bob@nobody.example"]]) });
    assert.deepEqual(o.replies, reject("No policy for 5322.resent_from_domain nobody.example"));
  });

  it("not found, Resent-From invalid -> reject", async () => {
    const o = await run({
      lookup: answering({ "forwarder.example": { kind: "invalid", reason: "x" } }),
      headers: msg("alice@partner.example", [["Resent-From", "bob@forwarder.example"]]),
    });
    assert.deepEqual(o.replies, reject("Invalid policy for 5322.resent_from_domain forwarder.example"));
  });

  it("not found, Resent-From backend error -> tempfail", async () => {
    const o = await run({
      lookup: answering({ "forwarder.example": { kind: "backend_error", reason: "x" } }),
      headers: msg("alice@partner.example", [["Resent-From", "bob@forwarder.example"]]),
    });
    assert.deepEqual(o.replies, tempfail("Policy backend problem"));
  });

  it("unparsable Resent-From, needed because the From domain has no policy -> reject, never skipped", async () => {
    for (const resentFrom of ["a@x, b@forwarder.example", "bob@forwarder.example.", "not an address"]) {
      const o = await run({ headers: msg("alice@partner.example", [["Resent-From", resentFrom]]) });
      assert.deepEqual(o.replies, reject("Invalid 5322.resent-from header"), resentFrom);
    }
  });

  it("unparsable topmost Resent-From: a parsable one below does not stand in", async () => {
    const o = await run({ headers: msg("alice@partner.example", [["Resent-From", "bob@forwarder.example."], ["Resent-From", "bob@forwarder.example"]]) });
    assert.deepEqual(o.replies, reject("Invalid 5322.resent-from header"));
  });

  it("unparsable Resent-From is not read when the From domain has a policy", async () => {
    const o = await run({ headers: msg(undefined, [["Resent-From", "a@x, b@forwarder.example"]]) });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("the topmost Resent-From counts", async () => {
    const o = await run({
      headers: msg("alice@partner.example", [["Resent-From", "bob@nobody.example"], ["Resent-From", "bob@forwarder.example"]]),
    });
    assert.deepEqual(o.replies, reject("No policy for 5322.resent_from_domain nobody.example"));
  });

  it("a lookup that throws -> tempfail, never continue", async () => {
    const o = await run({
      lookup: () => {
        throw new Error("bug in backend");
      },
      headers: msg(),
    });
    assert.deepEqual(o.replies, tempfail("Internal error"));
    assert.equal(o.failed.length, 1);
    assert.equal(o.failed[0]!.queueId, "Q1");
    assert.match(String(o.failed[0]!.error), /bug in backend/);
  });

  it("a lookup that returns a rejected Promise -> tempfail, never continue", async () => {
    const o = await run({ lookup: () => Promise.reject(new Error("connection reset")), headers: msg() });
    assert.deepEqual(o.replies, tempfail("Internal error"));
    assert.equal(o.failed.length, 1);
    assert.match(String(o.failed[0]!.error), /connection reset/);
  });

  it("a Resent-From lookup that rejects -> tempfail", async () => {
    const o = await run({
      lookup: (d) => (d === "forwarder.example" ? Promise.reject(new Error("late failure")) : { kind: "not_found" }),
      headers: msg("alice@partner.example", [["Resent-From", "bob@forwarder.example"]]),
    });
    assert.deepEqual(o.replies, tempfail("Internal error"));
  });

  it("a lookup factory that throws -> tempfail", () => {
    const { filter, outcome } = newFilter({}, mapLookup(POLICIES));
    const broken = new ExotaFilter(filter.config, () => {
      throw new Error("no backend");
    }, { decided: (r) => outcome.decided.push(r), failed: (q, e) => outcome.failed.push({ queueId: q, error: e }), warn: () => {}, misconfigured: () => {} });
    for (const [n, v] of msg()) broken.header(n, v);
    const replies = broken.endOfMessage({ get: (n) => (n === "i" ? "Q7" : undefined) });
    assert.deepEqual(replies, tempfail("Internal error", "Q7"));
  });

  it("an async backend that finds the policy -> continue", async () => {
    const o = await run({ lookup: (d) => Promise.resolve(mapLookup(POLICIES)(d)), headers: msg() });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });
});

describe("step 5: tenant id", () => {
  it("required and missing -> reject", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg().filter(([n]) => n !== "X-MS-Exchange-CrossTenant-Id") });
    assert.deepEqual(o.replies, reject("Tenant-ID is missing!"));
  });

  it("required and different from the policy's -> reject", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg(undefined, [], undefined, OTHER_TENANT) });
    assert.deepEqual(o.replies, reject("No policy match for tenant-id"));
  });

  it("required and equal in another letter case (and padded) -> continue", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg(undefined, [], undefined, ` ${TENANT.toUpperCase()} `) });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("required, policy without tenant id -> reject", async () => {
    const o = await run({
      config: { tenantIdRequired: true },
      lookup: () => ({ kind: "found", policy: policy({ tenantId: "" }) }),
      headers: msg(),
    });
    assert.deepEqual(o.replies, reject("No policy match for tenant-id"));
  });

  it("not required: missing or wrong tenant id does not matter", async () => {
    const o1 = await run({ headers: msg().filter(([n]) => n !== "X-MS-Exchange-CrossTenant-Id") });
    const o2 = await run({ headers: msg(undefined, [], undefined, OTHER_TENANT) });
    assert.equal(o1.replies.at(-1)?.type, "continue");
    assert.equal(o2.replies.at(-1)?.type, "continue");
  });

  it("forwarded: the tenant id is compared with the Resent-From policy", async () => {
    const lookup: PolicyLookup = (d) => (d === "forwarder.example" ? { kind: "found", policy: policy({ tenantId: OTHER_TENANT }) } : { kind: "not_found" });
    const ok = await run({ config: { tenantIdRequired: true }, lookup, headers: msg("a@partner.example", [["Resent-From", "b@forwarder.example"]], undefined, OTHER_TENANT) });
    assert.equal(ok.replies.at(-1)?.type, "continue");
    const bad = await run({ config: { tenantIdRequired: true }, lookup, headers: msg("a@partner.example", [["Resent-From", "b@forwarder.example"]]) });
    assert.deepEqual(bad.replies, reject("No policy match for tenant-id"));
  });
});

describe("step 6: DKIM", () => {
  it("no trusted result -> reject", async () => {
    const o = await run({ config: STRICT, headers: msg().filter(([n]) => n !== "Authentication-Results") });
    assert.deepEqual(o.replies, reject("No valid DKIM authentication results found"));
  });

  it("a trusted dkim=fail -> reject", async () => {
    const headers = msg().map(([n, v]): Header => [n, n === "Authentication-Results" ? "relay.example.net; dkim=fail header.d=tenant.example" : v]);
    const o = await run({ config: STRICT, headers });
    assert.deepEqual(o.replies, reject("No valid DKIM authentication results found"));
  });

  it("a pass from an untrusted authserv-id is ignored", async () => {
    const headers = msg().map(([n, v]): Header => [n, n === "Authentication-Results" ? pass("tenant.example", "evil.example") : v]);
    const o = await run({ config: STRICT, headers });
    assert.deepEqual(o.replies, reject("No valid DKIM authentication results found"));
  });

  it("the trusted authserv-id is compared case-insensitively", async () => {
    const headers = msg().map(([n, v]): Header => [n, n === "Authentication-Results" ? pass("tenant.example", "Relay.EXAMPLE.net") : v]);
    const o = await run({ config: STRICT, headers });
    assert.equal(o.replies.at(-1)?.type, "continue");
  });

  it("a trusted pass below the first Received header is ignored (and warned about)", async () => {
    const headers: Header[] = [["Received", MS_RECEIVED], ["From", "a@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", TENANT], ["Authentication-Results", pass("tenant.example")]];
    const o = await run({ config: STRICT, headers });
    assert.deepEqual(o.replies, reject("No valid DKIM authentication results found"));
    assert.equal(o.warned.length, 1);
    assert.match(o.warned[0]!, /^ignored 1 Authentication-Results header/);
  });

  it("pass, not aligned, alignment required globally and by policy -> reject", async () => {
    const o = await run({ config: STRICT, headers: msg(undefined, [], "rogue.example") });
    assert.deepEqual(o.replies, reject("DKIM alignment required!"));
  });

  it("pass, not aligned, the policy waives alignment -> continue, dkim_aligned=False", async () => {
    const o = await run({ config: STRICT, headers: msg("a@relaxed.example", [], "tenant.example") });
    assert.deepEqual(o.replies, [added({ from: "relaxed.example", dkim: true, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("pass, not aligned, alignment not required globally -> continue", async () => {
    const o = await run({ config: { ...STRICT, dkimAlignmentRequired: false }, headers: msg(undefined, [], "rogue.example") });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: true, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("aligned -> continue, dkim=True dkim_aligned=True", async () => {
    const o = await run({ config: STRICT, headers: msg() });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: true, aligned: true, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("aligned when any of several passes matches; header.d compared case-insensitively", async () => {
    const headers = msg().map(([n, v]): Header => [
      n,
      n === "Authentication-Results" ? "relay.example.net; dkim=pass header.d=rogue.example; dkim=pass header.d=TENANT.Example" : v,
    ]);
    const o = await run({ config: STRICT, headers });
    assert.deepEqual(o.replies[0], added({ from: "tenant.example", dkim: true, aligned: true, x509: false, forwarded: false }));
  });

  it("dkim disabled in the policy -> not checked (dkim=False)", async () => {
    const o = await run({ config: STRICT, headers: msg("a@nodkim.example").filter(([n]) => n !== "Authentication-Results") });
    assert.deepEqual(o.replies, [added({ from: "nodkim.example", dkim: false, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("dkim disabled globally -> not checked even when the policy enables it", async () => {
    const o = await run({ config: { tenantIdRequired: true }, headers: msg().filter(([n]) => n !== "Authentication-Results") });
    assert.deepEqual(o.replies, [added({ from: "tenant.example", dkim: false, aligned: false, x509: false, forwarded: false }), { type: "continue" }]);
  });

  it("forwarded + DKIM: alignment is measured against the From domain", async () => {
    const o = await run({ config: STRICT, headers: msg("a@partner.example", [["Resent-From", "b@forwarder.example"]], "forwarder.example") });
    assert.deepEqual(o.replies, reject("DKIM alignment required!"));
  });
});

describe("steps 7-8: forged X-ExOTA headers removed, ours added", () => {
  it("existing X-ExOTA-Authentication-Results headers in any letter case are all deleted, last first", async () => {
    const o = await run({
      config: { x509Enabled: true, ...STRICT },
      cert: TRUSTED_CN,
      headers: [
        [EXOTA, "relay.example.net; auth=pass forged"],
        ...msg(),
        ["x-exota-authentication-results", "forged 2"],
        ["X-EXOTA-AUTHENTICATION-RESULTS", "forged 3"],
      ],
    });
    assert.deepEqual(o.replies, [
      { type: "chgheader", index: 3, name: EXOTA, value: "" },
      { type: "chgheader", index: 2, name: EXOTA, value: "" },
      { type: "chgheader", index: 1, name: EXOTA, value: "" },
      {
        type: "addheader",
        name: EXOTA,
        value: "relay.example.net;\n  auth=pass 5322_from_domain=tenant.example dkim=True dkim_aligned=True x509_client_trust=True forwarded=False",
      },
      { type: "continue" },
    ]);
  });

  it("deleted even when no header is added", async () => {
    const o = await run({ config: { addHeader: false }, headers: [...msg(), [EXOTA, "forged"]] });
    assert.deepEqual(o.replies, [{ type: "chgheader", index: 1, name: EXOTA, value: "" }, { type: "continue" }]);
  });

  it("nothing to delete, add-header off -> only continue", async () => {
    const o = await run({ config: { addHeader: false }, headers: msg() });
    assert.deepEqual(o.replies, [{ type: "continue" }]);
  });

  it("a rejected message gets no header changes", async () => {
    const o = await run({ headers: [[EXOTA, "forged"], ...msg("eve@unknown.example")] });
    assert.deepEqual(o.replies, reject("No policy for 5322.from_domain unknown.example"));
  });

  it("the added header uses the configured authserv-id", async () => {
    const o = await run({ config: { authservId: "smarthost.example.org" }, headers: msg() });
    assert.deepEqual(o.replies[0], added({ from: "tenant.example", dkim: false, aligned: false, x509: false, forwarded: false }, "smarthost.example.org"));
  });
});

describe("report-only mode", () => {
  const RO: Partial<FilterConfig> = { reportOnly: true };
  const would = (action: string, reason: string, from: string): Reply => ({
    type: "addheader",
    name: EXOTA,
    value: `relay.example.net;\n  auth=fail report_only=True would=${action} reason="${reason}" 5322_from_domain=${from}`,
  });

  it("a reject continues; forged headers go; the added header says what would have happened", async () => {
    const o = await run({ config: RO, headers: [[EXOTA, "forged 1"], ...msg("eve@unknown.example"), [EXOTA, "forged 2"]] });
    assert.deepEqual(o.replies, [
      { type: "chgheader", index: 2, name: EXOTA, value: "" },
      { type: "chgheader", index: 1, name: EXOTA, value: "" },
      would("reject", "No policy for 5322.from_domain unknown.example", "unknown.example"),
      { type: "continue" },
    ]);
    assert.equal(o.decided[0]!.verdict.action, "reject", "the verdict itself is logged unchanged");
  });

  it("a tempfail continues too", async () => {
    const o = await run({ config: RO, lookup: () => ({ kind: "backend_error", reason: "down" }), headers: msg() });
    assert.deepEqual(o.replies, [would("tempfail", "Policy backend problem", "tenant.example"), { type: "continue" }]);
  });

  it("without a From domain: 5322_from_domain=unknown", async () => {
    const o = await run({ config: RO, headers: [] });
    assert.deepEqual(o.replies, [would("reject", "5322.from header missing", "unknown"), { type: "continue" }]);
  });

  it("a lookup that throws: continues with would=tempfail (report-only lets everything through)", async () => {
    const o = await run({
      config: RO,
      lookup: () => {
        throw new Error("bug");
      },
      headers: msg(),
    });
    assert.deepEqual(o.replies, [would("tempfail", "Internal error", "unknown"), { type: "continue" }]);
    assert.equal(o.failed.length, 1);
  });

  it("a header section over the limits: forged headers past the limit are still removed", async () => {
    const o = await run({ config: { ...RO, maxHeaders: 3 }, headers: [[EXOTA, "forged 1"], ...msg(), [EXOTA, "forged 2"], ["x-exota-authentication-results", "forged 3"]] });
    assert.deepEqual(o.replies, [
      { type: "chgheader", index: 3, name: EXOTA, value: "" },
      { type: "chgheader", index: 2, name: EXOTA, value: "" },
      { type: "chgheader", index: 1, name: EXOTA, value: "" },
      would("tempfail", "Message header too large", "unknown"),
      { type: "continue" },
    ]);
  });

  it("add-header off: only forged headers removed, then continue", async () => {
    const o = await run({ config: { ...RO, addHeader: false }, headers: [...msg("eve@unknown.example"), [EXOTA, "forged"]] });
    assert.deepEqual(o.replies, [{ type: "chgheader", index: 1, name: EXOTA, value: "" }, { type: "continue" }]);
  });

  it("an accepted message is unchanged by report-only", async () => {
    const normal = await run({ config: STRICT, headers: msg() });
    const ro = await run({ config: { ...STRICT, ...RO }, headers: msg() });
    assert.deepEqual(ro.replies, normal.replies);
  });

  it("quotes in the reason become apostrophes; the From domain is named even when x509 fails first", async () => {
    const o = await run({ config: { ...RO, x509Enabled: true }, cert: 'evil"cn', headers: msg() });
    assert.deepEqual(o.replies, [would("reject", "Untrusted x509 client CN: evil'cn", "tenant.example"), { type: "continue" }]);
  });

  it("the From domain is unknown when the From header is missing", async () => {
    const o = await run({ config: { ...RO, x509Enabled: true }, cert: "evil", headers: [] });
    assert.deepEqual(o.replies, [would("reject", "Untrusted x509 client CN: evil", "unknown"), { type: "continue" }]);
  });

  it("control characters from the certificate cannot inject header lines", async () => {
    const o = await run({ config: { ...RO, x509Enabled: true }, cert: "evil\r\nX-Injected: yes", headers: msg() });
    const add = o.replies.find((r) => r.type === "addheader");
    assert.ok(add !== undefined && add.type === "addheader");
    // The only line break is the fold after the authserv-id, followed by white space.
    // deno-lint-ignore no-control-regex
    assert.deepEqual(add.value.match(/[\x00-\x1f\x7f]/g), ["\n"]);
    assert.match(add.value, /reason="Untrusted x509 client CN: evil {1,2}X-Injected: yes"/);
  });
});

describe("reply text", () => {
  it("queue id NOQUEUE when there is no i macro", async () => {
    const o = await run({ queueId: "", headers: [] });
    assert.deepEqual(o.replies, reject("5322.from header missing", "NOQUEUE"));
    assert.equal(o.decided[0]!.queueId, "NOQUEUE");
  });

  it("a % in the configured message survives the wire (%% on the wire)", async () => {
    const o = await run({ config: { rejectMessage: "100% policy" }, headers: [] });
    assert.deepEqual(o.replies, [{ type: "replycode", code: 550, text: "5.7.1 queue_id: Q1 - 100% policy - reason: 5322.from header missing" }]);
  });

  it("replyText format, control characters replaced by spaces", () => {
    assert.equal(replyText("Q1", "msg", "why"), "queue_id: Q1 - msg - reason: why");
    assert.equal(replyText("Q\r\n1", "m\tsg", "a\x00b\x7f"), "queue_id: Q  1 - m sg - reason: a b ");
  });

  it("verdictReplies for each action", () => {
    const cfg = { ...BASE, rejectMessage: "R", tempfailMessage: "T" };
    assert.deepEqual(verdictReplies({ action: "reject", reason: "x", fromDomain: undefined }, "Q", cfg, 0), [
      { type: "replycode", code: 550, text: "5.7.1 queue_id: Q - R - reason: x" },
    ]);
    assert.deepEqual(verdictReplies({ action: "tempfail", reason: "y", fromDomain: "a.example" }, "Q", cfg, 1), [
      { type: "replycode", code: 450, text: "4.7.1 queue_id: Q - T - reason: y" },
    ]);
    const cont: Verdict = {
      action: "continue",
      fromDomain: "a.example",
      policyDomain: "a.example",
      forwarded: false,
      dkimChecked: false,
      dkimAligned: false,
      x509Checked: false,
      changes: [{ kind: "delete", name: EXOTA, index: 2 }, { kind: "delete", name: EXOTA, index: 1 }, { kind: "add", name: EXOTA, value: "v" }],
    };
    assert.deepEqual(verdictReplies(cont, "Q", cfg, 2), [
      { type: "chgheader", index: 2, name: EXOTA, value: "" },
      { type: "chgheader", index: 1, name: EXOTA, value: "" },
      { type: "addheader", name: EXOTA, value: "v" },
      { type: "continue" },
    ]);
  });
});

describe("ExotaFilter on one connection", () => {
  it("negotiates CHGHDRS (+ADDHDRS when adding), the macros it needs, and no replies where possible", () => {
    const n = filterNeeds({ ...BASE, addHeader: false });
    assert.equal(n.actions, Action.CHGHDRS);
    assert.equal(filterNeeds(BASE).actions, Action.CHGHDRS | Action.ADDHDRS);
    assert.deepEqual(n.macros, new Map([
      [MacroStage.HELO, ["{cert_subject}", "{cert_issuer}", "{verify}"]],
      [MacroStage.ENVFROM, ["i"]],
      [MacroStage.EOM, ["i"]],
    ]));
    assert.equal(n.protocol & Proto.NR_HDR, Proto.NR_HDR);
    assert.equal(n.protocol & Proto.NOHDRS, 0, "headers are needed");
    assert.equal(n.protocol & Proto.NOCONNECT, 0, "the client address is needed");
    assert.equal(n.protocol & Proto.NOHELO, 0, "HELO carries {cert_subject}");
  });

  it("every message starts clean: after EOM and after ABORT", async () => {
    const { filter, outcome } = newFilter({ x509Enabled: true }, mapLookup(POLICIES));
    const wire = new Wire(new MilterSession(filter));
    await wire.send({ type: "optneg", version: 6, actions: 0x1ff, protocol: 0x1fffff });
    await wire.send({ type: "connect", hostname: "h", family: "inet", port: 1, address: "40.107.1.2" });
    await wire.send({ type: "macro", stage: "H", macros: [["{cert_subject}", TRUSTED_CN]] });
    await wire.send({ type: "helo", name: "h" });
    const message = async (id: string, headers: readonly Header[], end: "eom" | "abort") => {
      await wire.send({ type: "macro", stage: "M", macros: [["i", id]] });
      await wire.send({ type: "mail", args: ["<a@b>"] });
      for (const [name, value] of headers) await wire.send({ type: "header", name, value });
      return (await wire.send(end === "eom" ? { type: "eom", chunk: new Uint8Array(0) } : { type: "abort" })).replies;
    };
    // 1: accepted, had a forged header
    assert.deepEqual(await message("M1", [[EXOTA, "x"], ...msg()], "eom"), [
      { type: "chgheader", index: 1, name: EXOTA, value: "" },
      added({ from: "tenant.example", dkim: false, aligned: false, x509: true, forwarded: false }),
      { type: "continue" },
    ]);
    // 2: aborted half-way with a From header
    assert.deepEqual(await message("M2", [["From", "x@tenant.example"], [EXOTA, "y"]], "abort"), []);
    // 3: no From at all: nothing of 1 or 2 remains, the certificate still counts
    assert.deepEqual(await message("M3", [["Subject", "s"]], "eom"), reject("5322.from header missing", "M3"));
    // 4: after the reject, a new accepted message has no leftover header count
    assert.deepEqual(await message("M4", msg(), "eom"), [
      added({ from: "tenant.example", dkim: false, aligned: false, x509: true, forwarded: false }),
      { type: "continue" },
    ]);
    assert.deepEqual(outcome.decided.map((d) => [d.queueId, d.client, d.verdict.action]), [
      ["M1", "40.107.1.2", "continue"],
      ["M3", "40.107.1.2", "reject"],
      ["M4", "40.107.1.2", "continue"],
    ]);
  });

  it("a header section over the limits -> tempfail", async () => {
    const o = await run({ config: { maxHeaders: 3 }, headers: [...msg(), ["Subject", "x"]] });
    assert.deepEqual(o.replies, tempfail("Message header too large"));
    assert.equal(o.warned.length, 1);
    const o2 = await run({ config: { maxHeaderBytes: 100 }, headers: [["Subject", "x".repeat(200)], ...msg()] });
    assert.deepEqual(o2.replies, tempfail("Message header too large"));
  });

  it("a lookup is read at each end of message (reload takes effect)", () => {
    let current: PolicyLookup = () => ({ kind: "not_found" });
    const f = new ExotaFilter(BASE, () => current, { decided: () => {}, failed: () => {}, warn: () => {}, misconfigured: () => {} });
    const macros = { get: () => "Q" };
    for (const [n, v] of msg()) f.header(n, v);
    assert.deepEqual(f.endOfMessage(macros), [
      { type: "replycode", code: 550, text: `5.7.1 queue_id: Q - ${REJECT_MSG} - reason: No policy for 5322.from_domain tenant.example` },
    ]);
    f.resetMessage();
    current = mapLookup(POLICIES);
    for (const [n, v] of msg()) f.header(n, v);
    const r = f.endOfMessage(macros);
    assert.ok(Array.isArray(r));
    assert.equal(r.at(-1)?.type, "continue");
  });

  it("a trace hook receives lines and does not change the verdict", () => {
    const lines: string[] = [];
    const f = new ExotaFilter({ ...BASE, ...STRICT }, () => mapLookup(POLICIES), {
      decided: () => {},
      failed: () => {},
      warn: () => {},
      misconfigured: () => {},
      trace: (_q, l) => lines.push(l),
    });
    for (const [n, v] of msg("a@relaxed.example", [], "tenant.example")) f.header(n, v);
    const r = f.endOfMessage({ get: () => undefined });
    assert.ok(Array.isArray(r));
    assert.equal(r.at(-1)?.type, "continue");
    assert.ok(lines.includes("dkim: the policy waives alignment"), lines.join("\n"));
  });
});

describe("decision functions", () => {
  const facts = (headers: readonly Header[], over: Partial<MessageFacts> = {}): MessageFacts => {
    const h = new HeaderCollector();
    for (const [n, v] of headers) h.add(n, v);
    return { clientAddress: "40.107.1.2", certSubject: undefined, certIssuer: undefined, certVerify: undefined, headers: h, ...over };
  };
  const cfg = { ...BASE, ...STRICT };

  it("analyze: what a message says", () => {
    const a = analyze(facts([...msg("J <j@Tenant.Example>", [["Resent-From", "r@Fwd.example"], ["X-MS-Exchange-CrossTenant-Id", TENANT.toUpperCase()], [EXOTA, "x"]])]), cfg);
    assert.deepEqual(a, {
      x509: { ok: true, checked: false },
      from: { ok: true, domain: "tenant.example" },
      resentFrom: { ok: true, domain: "fwd.example" },
      tenantIds: [TENANT],
      dkimPasses: ["tenant.example"],
      misplacedAuthResults: 0,
      exotaResults: 1,
    });
  });

  it("analyze: tenant ids and DKIM are not read when not configured", () => {
    const a = analyze(facts(msg()), BASE);
    assert.deepEqual(a.tenantIds, []);
    assert.deepEqual(a.dkimPasses, []);
  });

  it("decide asks for the From policy, then the Resent-From policy", () => {
    const a = analyze(facts(msg("a@partner.example", [["Resent-From", "b@forwarder.example"]], "forwarder.example")), { ...cfg, dkimAlignmentRequired: false });
    assert.deepEqual(decide(a, cfg, {}), { action: "lookup", which: "from", domain: "partner.example" });
    assert.deepEqual(decide(a, cfg, { from: { kind: "not_found" } }), { action: "lookup", which: "resentFrom", domain: "forwarder.example" });
    const v = decide(a, { ...cfg, dkimAlignmentRequired: false }, { from: { kind: "not_found" }, resentFrom: { kind: "found", policy: policy() } });
    assert.deepEqual(v, {
      action: "continue",
      fromDomain: "partner.example",
      policyDomain: "forwarder.example",
      forwarded: true,
      dkimChecked: true,
      dkimAligned: false,
      x509Checked: false,
      changes: [{
        kind: "add",
        name: EXOTA,
        value: "relay.example.net;\n  auth=pass 5322_from_domain=partner.example dkim=True dkim_aligned=False x509_client_trust=False forwarded=True",
      }],
    });
  });

  it("runDecision stays synchronous with a synchronous lookup, and rejects carry the From domain", () => {
    const v = runDecision(facts(msg("x@unknown.example")), cfg, mapLookup(POLICIES));
    assert.ok(!(v instanceof Promise));
    assert.deepEqual(v, { action: "reject", reason: "No policy for 5322.from_domain unknown.example", fromDomain: "unknown.example" });
  });

  it("runDecision with an async lookup returns a Promise of the verdict", async () => {
    const v = runDecision(facts(msg()), cfg, (d) => Promise.resolve(mapLookup(POLICIES)(d)));
    assert.ok(v instanceof Promise);
    const r = await v;
    assert.equal(r.action, "continue");
  });

  it("x509 issuer check (when configured)", () => {
    const c = { ...BASE, x509Enabled: true, x509TrustedIssuer: "GlobalSign Organization Validation CA - SHA256 - G3" };
    const x = (issuer: string | undefined) => analyze(facts(msg(), { certSubject: TRUSTED_CN, certIssuer: issuer }), c).x509;
    assert.deepEqual(x(undefined), { ok: false, reason: "No x509 client certificate issuer found" });
    assert.deepEqual(x("CN=Evil CA,O=Evil"), { ok: false, reason: "Untrusted x509 client certificate issuer: Evil CA" });
    assert.deepEqual(x("/C=BE/O=GlobalSign nv-sa/CN=globalsign organization validation ca - sha256 - g3"), { ok: true, checked: true });
  });
});
