/**
 * Hostile messages, as an attacker with an Exchange Online tenant of their
 * own (rogue.example) would send them to claim a victim's domain
 * (tenant.example), and the verdict each must get. Legitimate forms of
 * Exchange Online mail are in the same table: they must still pass.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { HeaderCollector } from "../../src/mail/headers.ts";
import { type DecisionConfig, runDecision, type Verdict } from "../../src/policy/decide.ts";
import { parseRange } from "../../src/policy/ip-allowlist.ts";
import { mapLookup } from "../../src/policy/policy-file.ts";
import type { Policy } from "../../src/policy/types.ts";

const VICTIM_TENANT = "1234abcd-18c5-45e8-88de-123456789abc";
const ROGUE_TENANT = "0badbeef-0000-4000-8000-000000000bad";
const strict: Policy = { tenantId: VICTIM_TENANT, dkimEnabled: true, dkimAlignmentRequired: true };
const lookup = mapLookup(
  new Map([
    ["tenant.example", strict],
    ["xn--mller-kva.example", strict],
    ["rogue.example", { tenantId: ROGUE_TENANT, dkimEnabled: true, dkimAlignmentRequired: true }],
  ]),
);

const config: DecisionConfig = {
  x509Enabled: true,
  x509TrustedCn: "mail.protection.outlook.com",
  x509AllowList: ["127.0.0.1", "::1"].map((a) => parseRange(a)!),
  x509TrustedIssuer: "",
  tenantIdRequired: true,
  dkimEnabled: true,
  dkimAlignmentRequired: true,
  trustedAuthservId: "relay.example.net",
  authResultsAnywhere: false,
  addHeader: true,
  authservId: "relay.example.net",
};

const MS_RECEIVED = "from DB9PR01MB0001.eurprd01.prod.outlook.com (2603:10a6::1) by AM0PR01MB0002.outlook.office365.com";
const pass = (d: string) => `relay.example.net; dkim=pass (2048-bit key) header.d=${d} header.i=@${d} header.b="abcd1234"`;

interface Case {
  readonly name: string;
  /** Headers in message order; the verifier's Authentication-Results is first, as Postfix + OpenDKIM deliver it. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly certSubject?: string;
  /** The `{verify}` macro; undefined: not sent (Postfix). */
  readonly certVerify?: string;
  readonly client?: string;
  readonly expect: { action: Verdict["action"]; reason?: string; fromDomain?: string };
  readonly config?: Partial<DecisionConfig>;
}

/** A legitimate message of the victim tenant, with `extra` headers swapped in. */
function message(from: string, extra: ReadonlyArray<readonly [string, string]> = [], dkim = "tenant.example"): Array<readonly [string, string]> {
  return [
    ["Authentication-Results", pass(dkim)],
    ["Received", MS_RECEIVED],
    ["From", from],
    ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT],
    ...extra,
  ];
}

const reject = (reason: string) => ({ action: "reject" as const, reason });
const accept = (fromDomain: string) => ({ action: "continue" as const, fromDomain });

const CASES: Case[] = [
  // Legitimate Exchange Online forms
  { name: "plain address", headers: message("john@tenant.example"), expect: accept("tenant.example") },
  { name: "quoted display name with comma", headers: message('"Doe, John" <john.doe@tenant.example>'), expect: accept("tenant.example") },
  { name: "RFC 2047 display name", headers: message("=?utf-8?B?SsO2cmcgTcO8bGxlcg==?= <j@tenant.example>"), expect: accept("tenant.example") },
  { name: "UTF-8 display name", headers: message('"Müller, Jörg" <j@tenant.example>'), expect: accept("tenant.example") },
  { name: "comment after address", headers: message("john@tenant.example (John Doe)"), expect: accept("tenant.example") },
  { name: "folded header", headers: message("John Doe\r\n <john@TENANT.example>"), expect: accept("tenant.example") },
  {
    name: "IDN domain in U-label form matches its A-label policy",
    headers: message("j@müller.example", [], "xn--mller-kva.example"),
    expect: accept("xn--mller-kva.example"),
  },
  { name: "quoted local part", headers: message('"john doe"@tenant.example'), expect: accept("tenant.example") },

  // From confusion
  { name: "two From headers, victim last", headers: [...message("eve@rogue.example"), ["From", "ceo@tenant.example"]], expect: reject("Multiple 5322.from headers") },
  { name: "two From headers, victim first", headers: [["From", "ceo@tenant.example"], ...message("eve@rogue.example")], expect: reject("Multiple 5322.from headers") },
  { name: "From in other letter case counts as From", headers: [...message("eve@rogue.example"), ["FROM", "ceo@tenant.example"]], expect: reject("Multiple 5322.from headers") },
  { name: "victim address as quoted display name", headers: message('"ceo@tenant.example" <eve@rogue.example>', [], "rogue.example"), expect: reject("No policy match for tenant-id") },
  { name: "quoted victim then bare address", headers: message('"ceo@tenant.example" eve@rogue.example'), expect: reject("Invalid 5322.from header") },
  { name: "CVE-2023-27043: ) before <", headers: message("alice@rogue.example)<ceo@tenant.example>"), expect: reject("Invalid 5322.from header") },
  { name: "unquoted address as display name", headers: message("ceo@tenant.example <eve@rogue.example>"), expect: reject("Invalid 5322.from header") },
  { name: "address list", headers: message("ceo@tenant.example, eve@rogue.example"), expect: reject("Invalid 5322.from header") },
  { name: "group", headers: message("board: ceo@tenant.example;"), expect: reject("Invalid 5322.from header") },
  { name: "empty group", headers: message("undisclosed-recipients:;"), expect: reject("Invalid 5322.from header") },
  { name: "bare phrase", headers: message("CEO of Tenant"), expect: reject("Invalid 5322.from header") },
  { name: "victim only in a comment", headers: message("eve@rogue.example (ceo@tenant.example)", [], "rogue.example"), expect: reject("No policy match for tenant-id") },
  { name: "victim in an encoded word", headers: message("=?utf-8?q?ceo=40tenant.example?= <eve@rogue.example>", [], "rogue.example"), expect: reject("No policy match for tenant-id") },
  { name: "source route", headers: message("<@tenant.example:eve@rogue.example>"), expect: reject("Invalid 5322.from header") },
  { name: "address literal", headers: message("eve@[192.0.2.1]"), expect: reject("Invalid 5322.from header") },
  { name: "text after the angle address", headers: message("<eve@rogue.example> ceo@tenant.example"), expect: reject("Invalid 5322.from header") },
  { name: "unterminated comment", headers: message("ceo@tenant.example (eve"), expect: reject("Invalid 5322.from header") },
  { name: "empty From", headers: message(""), expect: reject("Invalid 5322.from header") },
  { name: "trailing dot in the From domain", headers: message("john@tenant.example."), expect: reject("Invalid 5322.from header") },

  // Forged DKIM results
  {
    name: "forged trusted result below Received",
    headers: [["Received", MS_RECEIVED], ["From", "ceo@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT], ["Authentication-Results", pass("tenant.example")]],
    expect: reject("No valid DKIM authentication results found"),
  },
  {
    name: "forged trusted result below Received is counted when configured so",
    headers: [["Received", MS_RECEIVED], ["From", "ceo@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT], ["Authentication-Results", pass("tenant.example")]],
    config: { authResultsAnywhere: true },
    expect: accept("tenant.example"),
  },
  {
    name: "real fail on top, forged pass below",
    headers: [
      ["Authentication-Results", "relay.example.net; dkim=fail header.d=tenant.example"],
      ["Received", MS_RECEIVED],
      ["From", "ceo@tenant.example"],
      ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT],
      ["Authentication-Results", pass("tenant.example")],
    ],
    expect: reject("No valid DKIM authentication results found"),
  },
  {
    name: "dkim=pass only inside a comment",
    headers: [["Authentication-Results", "relay.example.net; dkim=fail (dkim=pass header.d=tenant.example) header.d=tenant.example"], ["From", "ceo@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT]],
    expect: reject("No valid DKIM authentication results found"),
  },
  {
    name: "trusted authserv-id only inside a comment",
    headers: [["Authentication-Results", "(relay.example.net) evil.example; dkim=pass header.d=tenant.example"], ["From", "ceo@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT]],
    expect: reject("No valid DKIM authentication results found"),
  },
  {
    name: "authserv-id that merely starts with the trusted one",
    headers: [["Authentication-Results", "relay.example.net.evil.example; dkim=pass header.d=tenant.example"], ["From", "ceo@tenant.example"], ["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT]],
    expect: reject("No valid DKIM authentication results found"),
  },
  { name: "attacker's own DKIM pass is not aligned", headers: message("ceo@tenant.example", [], "rogue.example"), expect: reject("DKIM alignment required!") },
  {
    name: "header.i of the victim does not count when header.d is the attacker's",
    headers: message("ceo@tenant.example", [], "rogue.example").map(([n, v]) => [n, n === "Authentication-Results" ? v.replace("header.i=@rogue.example", "header.i=@tenant.example") : v] as const),
    expect: reject("DKIM alignment required!"),
  },

  { name: "header.d with a trailing dot is not aligned", headers: message("ceo@tenant.example", [], "tenant.example."), expect: reject("DKIM alignment required!") },
  {
    name: "header.d with a trailing dot is no pass for that domain even where header.i names it",
    headers: message("ceo@tenant.example", [], "tenant.example.").map(([n, v]) => [n, n === "Authentication-Results" ? v.replace("header.i=@tenant.example.", "header.i=@tenant.example") : v] as const),
    expect: reject("DKIM alignment required!"),
  },

  {
    name: "a pass without header.d counts for the domain of header.i",
    headers: message("ceo@tenant.example").map(([n, v]) => [n, n === "Authentication-Results" ? "relay.example.net; dkim=pass header.i=@tenant.example" : v] as const),
    expect: accept("tenant.example"),
  },

  // Tenant id
  { name: "second, different tenant id", headers: message("ceo@tenant.example", [["X-MS-Exchange-CrossTenant-Id", ROGUE_TENANT]]), expect: reject("Multiple/different tenant-ID headers found!") },
  { name: "same tenant id twice in other case", headers: message("ceo@tenant.example", [["X-MS-Exchange-CrossTenant-Id", VICTIM_TENANT.toUpperCase()]]), expect: accept("tenant.example") },
  {
    name: "white space around the tenant id is ignored",
    headers: message("ceo@tenant.example").map(([n, v]) => [n, n === "X-MS-Exchange-CrossTenant-Id" ? ` ${v} \t` : v] as const),
    expect: accept("tenant.example"),
  },
  {
    name: "attacker's tenant id",
    headers: message("ceo@tenant.example").map(([n, v]) => [n, n === "X-MS-Exchange-CrossTenant-Id" ? ROGUE_TENANT : v] as const),
    expect: reject("No policy match for tenant-id"),
  },

  // Client certificate
  { name: "no certificate", headers: message("ceo@tenant.example"), certSubject: "", client: "40.107.1.1", expect: reject("No trusted x509 client CN found") },
  { name: "CN with trusted suffix appended", headers: message("ceo@tenant.example"), certSubject: "mail.protection.outlook.com.rogue.example", client: "40.107.1.1", expect: reject("Untrusted x509 client CN: mail.protection.outlook.com.rogue.example") },
  { name: "DN with the trusted name in O", headers: message("ceo@tenant.example"), certSubject: "CN=rogue.example,O=mail.protection.outlook.com", client: "40.107.1.1", expect: reject("Untrusted x509 client CN: rogue.example") },
  { name: "Sendmail DN with the trusted CN, verified", headers: message("ceo@tenant.example"), certSubject: "/C=US/O=Microsoft+20Corporation/CN=mail.protection.outlook.com", certVerify: "OK", client: "40.107.1.1", expect: accept("tenant.example") },
  { name: "Sendmail DN with the trusted CN from a foreign CA", headers: message("ceo@tenant.example"), certSubject: "/C=US/O=Microsoft+20Corporation/CN=mail.protection.outlook.com", certVerify: "FAIL", client: "40.107.1.1", expect: reject("Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL)") },
  { name: "Sendmail DN with the trusted CN, no {verify}", headers: message("ceo@tenant.example"), certSubject: "/C=US/O=Microsoft+20Corporation/CN=mail.protection.outlook.com", client: "40.107.1.1", expect: reject("Untrusted x509 client certificate: the MTA gives its whole DN but no {verify} macro, so it may not be verified") },
  { name: "CN padded with a space", headers: message("ceo@tenant.example"), certSubject: " mail.protection.outlook.com", client: "40.107.1.1", expect: reject("Untrusted x509 client CN:  mail.protection.outlook.com") },
  { name: "IPv4-mapped loopback is allow-listed", headers: message("ceo@tenant.example"), certSubject: "", client: "::ffff:127.0.0.1", expect: accept("tenant.example") },
  { name: "127.0.0.2 is not 127.0.0.1", headers: message("ceo@tenant.example"), certSubject: "", client: "127.0.0.2", expect: reject("No trusted x509 client CN found") },
];

describe("hostile and legitimate messages", () => {
  for (const c of CASES) {
    it(c.name, () => {
      const headers = new HeaderCollector();
      for (const [n, v] of c.headers) headers.add(n, v);
      const facts = {
        clientAddress: c.client ?? "40.107.1.1",
        certSubject: c.certSubject ?? "mail.protection.outlook.com",
        certIssuer: undefined,
        certVerify: c.certVerify,
        headers,
      };
      const v = runDecision(facts, { ...config, ...c.config }, lookup);
      assert.ok(!(v instanceof Promise));
      assert.equal(v.action, c.expect.action, v.action === "continue" ? "accepted" : v.reason);
      if (c.expect.reason !== undefined) assert.equal(v.action !== "continue" && v.reason, c.expect.reason);
      if (c.expect.fromDomain !== undefined) assert.equal(v.fromDomain, c.expect.fromDomain);
    });
  }
});
