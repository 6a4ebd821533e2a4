/**
 * Every decision path of DESIGN.md section 2, end to end: the compiled binary,
 * configured by environment variables, driven over TCP like Postfix drives it.
 * (A policy backend failure cannot happen with the JSON file; unit tests cover it.)
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Action, Proto } from "../../src/milter/protocol.ts";
import {
  accepted,
  addedHeader,
  ALLOWLISTED_CLIENT,
  dkimPass,
  EXOTA,
  expectReplies,
  type Facts,
  message,
  NODKIM_TENANT,
  OTHER_TENANT,
  OUR_AUTHSERVID,
  policyFile,
  rejected,
  removeScratch,
  startTcpMilter,
  TENANT,
  type TcpMilter,
  TRUSTED_AUTHSERVID,
  TRUSTED_CN,
  TRUSTED_ISSUER,
  ALL_CHECKS_ENV,
} from "../lib/fixtures.ts";
import { MilterClient, POSTFIX_OFFER } from "../lib/milter-client.ts";
import type { Reply } from "../../src/milter/types.ts";

after(removeScratch);

/** Everything on: x509 (allow-list 192.0.2.10 and 198.51.100.0/24), tenant id, DKIM with alignment, add header. */
const FULL_ENV = { ...ALL_CHECKS_ENV, MILTER_X509_IP_WHITELIST: "192.0.2.10, 198.51.100.0/24" };

describe("decisions with every check enabled", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({ ...FULL_ENV, MILTER_POLICY_FILE: policyFile() });
  });
  after(async () => {
    await m?.proc.stop();
  });

  /** Trusted certificate, tenant.example, right tenant id, aligned DKIM pass: unless a fact is overridden. */
  const good = (f: Facts = {}) => message({ cn: TRUSTED_CN, ...f });
  const check = (f: Facts, expected: Reply[]) => expectReplies(() => m.connect(), good(f), expected);
  const ok = (a: Partial<Parameters<typeof addedHeader>[0]> = {}, deletions = 0) =>
    accepted(deletions, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509: true, forwarded: false, ...a }));

  it("negotiates what it needs with Postfix's offer: header changes, no reply to most steps, macros per stage", async () => {
    const c = await m.connect();
    try {
      const r = await c.negotiate(POSTFIX_OFFER);
      assert.equal(r.version, 6);
      assert.equal(r.actions & (Action.ADDHDRS | Action.CHGHDRS), Action.ADDHDRS | Action.CHGHDRS);
      // It must see headers and reach end of message.
      assert.equal(r.protocol & (Proto.NOHDRS | Proto.SKIP), 0);
      assert.equal((r.protocol & ~POSTFIX_OFFER.protocol) >>> 0, 0, "only offered flags are taken");
      // What it reads must be requested where Postfix lets it choose.
      assert.ok(r.macros?.get(1)?.includes("{cert_subject}"), "HELO macros include {cert_subject}");
      assert.ok(r.macros?.get(5)?.includes("i"), "EOM macros include i");
      await c.quit();
    } finally {
      c.destroy();
    }
  });

  it("accepts aligned DKIM, right tenant id, trusted CN: adds exactly one header", () => check({}, ok()));

  it("an MTA without set-macro-list (Postfix's default macros are sent) gets the same verdicts", async () => {
    const offer = { ...POSTFIX_OFFER, actions: 0xff };
    for (const [f, expected] of [[{}, ok()], [{ cn: "evil.example" }, rejected("4XYZ1234AB", "Untrusted x509 client CN: evil.example")]] as const) {
      const c = await m.connect();
      try {
        const r = await c.negotiate(offer);
        assert.equal(r.macros, undefined);
        assert.equal(r.actions & Action.SETSYMLIST, 0);
        assert.deepEqual(await c.sendMessage(good(f)), expected);
        await c.quit();
      } finally {
        c.destroy();
      }
    }
  });

  it("an old MTA (version 2, no NR_* or skip flags offered) gets a reply to every step and the same verdicts", async () => {
    const c = await m.connect();
    try {
      const r = await c.negotiate({ version: 2, actions: 0x3f, protocol: 0x7f });
      assert.equal(r.version, 2);
      assert.equal(r.protocol & ~0x7f, 0);
      assert.equal(c.expectsReply("header"), true);
      assert.deepEqual(await c.sendMessage(good({ queueId: "OLD1" })), ok());
      assert.deepEqual(await c.sendMessage(good({ queueId: "OLD2", session: false, tenantIds: [] })), rejected("OLD2", "Tenant-ID is missing!"));
      await c.quit();
    } finally {
      c.destroy();
    }
  });

  it("the queue id in the reply is the `i` macro", () =>
    check({ queueId: "9F3B2C01D7", from: "x@nowhere.example" }, rejected("9F3B2C01D7", "No policy for 5322.from_domain nowhere.example")));

  describe("x509 client certificate", () => {
    it("an allow-listed client skips the check (no certificate at all)", () =>
      check({ client: ALLOWLISTED_CLIENT, cn: undefined }, ok({ x509: false })));
    it("missing CN rejects", () => check({ cn: undefined }, rejected("4XYZ1234AB", "No trusted x509 client CN found")));
    it("empty CN rejects", () => check({ cn: "" }, rejected("4XYZ1234AB", "No trusted x509 client CN found")));
    it("wrong CN rejects and names it", () =>
      check({ cn: "mail.evil.example" }, rejected("4XYZ1234AB", "Untrusted x509 client CN: mail.evil.example")));
    it("the right CN in other letter case is trusted", () => check({ cn: "MAIL.Protection.Outlook.COM" }, ok()));
    it("a whole DN in OpenSSL's one-line form (Sendmail, xtext) counts by its CN when {verify}=OK", () =>
      check({ cn: "/C=US/ST=Washington/L=Redmond/O=Microsoft+20Corporation/CN=mail.protection.outlook.com", verify: "OK" }, ok()));
    it("a whole DN in RFC 4514 form counts by its CN when {verify}=OK", () =>
      check({ cn: "CN=mail.protection.outlook.com,O=Microsoft Corporation,L=Redmond,ST=Washington,C=US", verify: "OK" }, ok()));
    it("{verify} other than OK rejects (Sendmail: a certificate of a CA it does not trust)", () =>
      check(
        { cn: "/O=Microsoft+20Corporation/CN=mail.protection.outlook.com", verify: "FAIL" },
        rejected("4XYZ1234AB", "Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL)"),
      ));
    it("a whole DN without {verify} rejects; the WARNING with the sendmail.mc line is logged once per process", async () => {
      const noVerify = "Untrusted x509 client certificate: the MTA gives its whole DN but no {verify} macro, so it may not be verified";
      const from = m.proc.log().length;
      await check({ cn: "/O=Microsoft+20Corporation/CN=mail.protection.outlook.com" }, rejected("4XYZ1234AB", noVerify));
      await check({ cn: "/O=Microsoft+20Corporation/CN=mail.protection.outlook.com" }, rejected("4XYZ1234AB", noVerify));
      const line = await m.proc.waitForLog(/^.*add to sendmail\.mc: define\(`confMILTER_MACROS_HELO', confMILTER_MACROS_HELO`, \{verify\}'\)dnl.*$/m, 5000, from);
      assert.match(line, /WARNING/);
      assert.equal(m.proc.log().split("add to sendmail.mc").length - 1, 1, m.proc.log());
    });
    it("a padded CN is not the CN", () =>
      check({ cn: " mail.protection.outlook.com" }, rejected("4XYZ1234AB", "Untrusted x509 client CN:  mail.protection.outlook.com")));
    it("a DN with another CN is rejected, naming the CN", () =>
      check(
        { cn: "CN=mail.evil.example,O=Microsoft Corporation,C=US" },
        rejected("4XYZ1234AB", "Untrusted x509 client CN: mail.evil.example"),
      ));
    it("an O= that looks like the trusted CN does not count", () =>
      check({ cn: "/O=mail.protection.outlook.com/CN=evil.example" }, rejected("4XYZ1234AB", "Untrusted x509 client CN: evil.example")));
    it("nothing in a CN can break the reply line; a % in it is doubled on the wire", async () => {
      const c = await m.connect();
      try {
        assert.deepEqual(
          await c.sendMessage(good({ cn: "100%evil\r\n250 ok.example" })),
          rejected("4XYZ1234AB", "Untrusted x509 client CN: 100%evil  250 ok.example"),
        );
        const wire = new TextDecoder().decode(c.frames[c.frames.length - 1]!.payload);
        assert.ok(wire.endsWith("Untrusted x509 client CN: 100%%evil  250 ok.example\0"), wire);
        await c.quit();
      } finally {
        c.destroy();
      }
    });
    it("a client inside an allow-listed range skips the check", () =>
      check({ client: { ...ALLOWLISTED_CLIENT, address: "198.51.100.77" }, cn: undefined }, ok({ x509: false })));
    it("a client just outside the range does not", () =>
      check({ client: { ...ALLOWLISTED_CLIENT, address: "198.51.101.1" }, cn: undefined }, rejected("4XYZ1234AB", "No trusted x509 client CN found")));
    it("an IPv4-mapped IPv6 client address matches its IPv4 entry", () =>
      check({ client: { ...ALLOWLISTED_CLIENT, family: "inet6", address: "::ffff:192.0.2.10" }, cn: undefined }, ok({ x509: false })));
    it("an IPv6 client not on the list needs a certificate", () =>
      check(
        { client: { ...ALLOWLISTED_CLIENT, family: "inet6", address: "2001:db8::25" }, cn: undefined },
        rejected("4XYZ1234AB", "No trusted x509 client CN found"),
      ));
    it("is checked first: a missing CN wins over a missing From", () =>
      check({ cn: undefined, from: null }, rejected("4XYZ1234AB", "No trusted x509 client CN found")));
  });

  describe("From", () => {
    it("missing From rejects", () => check({ from: null }, rejected("4XYZ1234AB", "5322.from header missing")));
    it("two From headers reject", () =>
      check({ extraHeaders: [["From", "mallory@tenant.example"]] }, rejected("4XYZ1234AB", "Multiple 5322.from headers")));
    it("an unparsable From rejects", () => check({ from: "not an address" }, rejected("4XYZ1234AB", "Invalid 5322.from header")));
    it("a From domain with a trailing dot rejects (it is not the policy's domain)", () =>
      check({ from: "Alice <alice@tenant.example.>" }, rejected("4XYZ1234AB", "Invalid 5322.from header")));
    it("the From domain is looked up in lower case", () => check({ from: "Alice <Alice@TENANT.Example>" }, ok()));
    it("an internationalised From domain (UTF-8) matches the policy by its A-label", () =>
      check(
        { from: "Jörg <joerg@BÜCHER.example>", authResults: [dkimPass("xn--bcher-kva.example")] },
        ok({ domain: "xn--bcher-kva.example" }),
      ));
    it("header names in any letter case count (FROM, x-ms-exchange-crosstenant-id)", () =>
      check({ from: null, tenantIds: [], extraHeaders: [["FROM", "alice@tenant.example"], ["x-ms-exchange-crosstenant-id", TENANT]] }, ok()));
  });

  describe("policy lookup", () => {
    it("no policy for the From domain rejects", () =>
      check(
        { from: "eve@unknown.example", authResults: [dkimPass("unknown.example")] },
        rejected("4XYZ1234AB", "No policy for 5322.from_domain unknown.example"),
      ));
    it("forwarded: the Resent-From domain's policy decides, the header says forwarded=True", () =>
      check(
        {
          from: "Carol <carol@customer.example>",
          resentFrom: "Fwd <fwd@relaxed.example>",
          tenantIds: [OTHER_TENANT],
          authResults: [dkimPass("relaxed.example")],
        },
        accepted(0, addedHeader({ domain: "customer.example", dkim: true, aligned: false, x509: true, forwarded: true })),
      ));
    it("forwarded: the tenant id must match the Resent-From domain's policy", () =>
      check(
        { from: "carol@customer.example", resentFrom: "fwd@relaxed.example", tenantIds: [TENANT], authResults: [dkimPass("relaxed.example")] },
        rejected("4XYZ1234AB", "No policy match for tenant-id"),
      ));
    it("forwarded: no policy for the Resent-From domain either rejects", () =>
      check(
        { from: "carol@customer.example", resentFrom: "fwd@stranger.example" },
        rejected("4XYZ1234AB", "No policy for 5322.resent_from_domain stranger.example"),
      ));
    it("a Resent-From is not used when the From domain has a policy", () =>
      check({ resentFrom: "fwd@relaxed.example" }, ok()));
    it("several Resent-From: the topmost (the latest resend) decides", () =>
      check(
        { from: "carol@customer.example", resentFrom: "fwd@stranger.example", extraHeaders: [["Resent-From", "fwd@relaxed.example"]] },
        rejected("4XYZ1234AB", "No policy for 5322.resent_from_domain stranger.example"),
      ));
    it("an unparsable topmost Resent-From rejects; a parsable one below does not stand in", () =>
      check(
        {
          from: "carol@customer.example",
          resentFrom: "fwd@relaxed.example.",
          tenantIds: [OTHER_TENANT],
          authResults: [dkimPass("relaxed.example")],
          extraHeaders: [["Resent-From", "fwd@relaxed.example"]],
        },
        rejected("4XYZ1234AB", "Invalid 5322.resent-from header"),
      ));
    it("a Resent-From domain with a trailing dot is invalid", () =>
      check(
        { from: "carol@customer.example", resentFrom: "Fwd <fwd@relaxed.example.>", tenantIds: [OTHER_TENANT], authResults: [dkimPass("relaxed.example")] },
        rejected("4XYZ1234AB", "Invalid 5322.resent-from header"),
      ));
  });

  describe("tenant id", () => {
    it("missing tenant id rejects", () => check({ tenantIds: [] }, rejected("4XYZ1234AB", "Tenant-ID is missing!")));
    it("another tenant's id rejects", () => check({ tenantIds: [OTHER_TENANT] }, rejected("4XYZ1234AB", "No policy match for tenant-id")));
    it("two different values reject", () =>
      check({ tenantIds: [TENANT, OTHER_TENANT] }, rejected("4XYZ1234AB", "Multiple/different tenant-ID headers found!")));
    it("two different values are checked before the policy lookup", () =>
      check(
        { from: "eve@unknown.example", tenantIds: [TENANT, OTHER_TENANT] },
        rejected("4XYZ1234AB", "Multiple/different tenant-ID headers found!"),
      ));
    it("the same value twice, in other letter case, is one tenant id", () =>
      check({ tenantIds: [TENANT, TENANT.toUpperCase()] }, ok()));
    it("the policy lookup comes before the tenant id check", () =>
      check({ from: "eve@unknown.example", tenantIds: [] }, rejected("4XYZ1234AB", "No policy for 5322.from_domain unknown.example")));
  });

  describe("DKIM", () => {
    it("no Authentication-Results rejects", () =>
      check({ authResults: [] }, rejected("4XYZ1234AB", "No valid DKIM authentication results found")));
    it("a DKIM fail rejects", () =>
      check(
        { authResults: [`${TRUSTED_AUTHSERVID}; dkim=fail header.d=tenant.example`] },
        rejected("4XYZ1234AB", "No valid DKIM authentication results found"),
      ));
    it("a pass from an untrusted authserv-id does not count", () =>
      check({ authResults: [dkimPass("tenant.example", "mx.attacker.example")] }, rejected("4XYZ1234AB", "No valid DKIM authentication results found")));
    it("a trusted pass below a Received header does not count (forged by the sender) and is logged", async () => {
      const from = m.proc.log().length;
      await expectReplies(
        () => m.connect(),
        good({
          queueId: "FORGED01",
          authResults: [],
          extraHeaders: [["Authentication-Results", dkimPass("tenant.example")]],
        }),
        rejected("FORGED01", "No valid DKIM authentication results found"),
      );
      await m.proc.waitForLog(/WARNING .*ignored 1 Authentication-Results header\(s\) of the trusted authserv-id below a Received header.* qid=FORGED01/, 2000, from);
    });
    it("a pass only inside a comment does not count", () =>
      check(
        { authResults: [`${TRUSTED_AUTHSERVID}; (dkim=pass header.d=tenant.example) dkim=none`] },
        rejected("4XYZ1234AB", "No valid DKIM authentication results found"),
      ));
    it("tenant id is checked before DKIM", () =>
      check({ authResults: [], tenantIds: [] }, rejected("4XYZ1234AB", "Tenant-ID is missing!")));
    it("not aligned is rejected when the policy requires alignment", () =>
      check({ authResults: [dkimPass("tenant.onmicrosoft.com")] }, rejected("4XYZ1234AB", "DKIM alignment required!")));
    it("a pass whose header.d has a trailing dot is not aligned (a d= tag has no trailing dot)", () =>
      check({ authResults: [dkimPass("tenant.example.")] }, rejected("4XYZ1234AB", "DKIM alignment required!")));
    it("such a pass counts only as a pass of no domain where the policy waives alignment", () =>
      check(
        { from: "a@relaxed.example", tenantIds: [OTHER_TENANT], authResults: [dkimPass("relaxed.example.")] },
        accepted(0, addedHeader({ domain: "relaxed.example", dkim: true, aligned: false, x509: true, forwarded: false })),
      ));
    it("alignment is required by default (policy without the key)", () =>
      check(
        { from: "a@defaults.example", authResults: [dkimPass("tenant.onmicrosoft.com")] },
        rejected("4XYZ1234AB", "DKIM alignment required!"),
      ));
    it("not aligned is accepted when the policy waives alignment", () =>
      check(
        { from: "a@relaxed.example", tenantIds: [OTHER_TENANT], authResults: [dkimPass("relaxed.onmicrosoft.com")] },
        accepted(0, addedHeader({ domain: "relaxed.example", dkim: true, aligned: false, x509: true, forwarded: false })),
      ));
    it("aligned is accepted: any passing signature aligned with From counts", () =>
      check(
        { authResults: [dkimPass("tenant.onmicrosoft.com"), `${TRUSTED_AUTHSERVID}; dkim=pass header.d=tenant.example`] },
        ok(),
      ));
    it("aligned is accepted when the policy waives alignment, and says so", () =>
      check(
        { from: "a@relaxed.example", tenantIds: [OTHER_TENANT], authResults: [dkimPass("relaxed.example")] },
        accepted(0, addedHeader({ domain: "relaxed.example", dkim: true, aligned: true, x509: true, forwarded: false })),
      ));
    it("a policy with dkim_enabled false needs no DKIM result", () =>
      check(
        { from: "a@no-dkim.example", tenantIds: [NODKIM_TENANT], authResults: [] },
        accepted(0, addedHeader({ domain: "no-dkim.example", dkim: false, aligned: false, x509: true, forwarded: false })),
      ));
  });

  describe("X-ExOTA-Authentication-Results", () => {
    it("forged headers in any letter case are deleted (indexes n..1, empty value) and exactly one is added", () =>
      check(
        {
          extraHeaders: [
            ["X-ExOTA-Authentication-Results", `${OUR_AUTHSERVID}; auth=pass 5322_from_domain=tenant.example`],
            ["Subject-Extra", "x"],
            ["x-exota-authentication-results", `${OUR_AUTHSERVID}; auth=pass`],
            ["X-EXOTA-AUTHENTICATION-RESULTS", "forged"],
          ],
        },
        ok({}, 3),
      ));
    it("a forged header alone is deleted", () =>
      check({ extraHeaders: [["x-ExOTA-authentication-RESULTS", "forged"]] }, ok({}, 1)));
    it("a rejected message gets no header changes", () =>
      check(
        { tenantIds: [], extraHeaders: [["X-ExOTA-Authentication-Results", "forged"]] },
        rejected("4XYZ1234AB", "Tenant-ID is missing!"),
      ));
  });

  it("concurrent connections each get their own verdict (no cross-talk)", async () => {
    const clients = await Promise.all([m.connect(), m.connect(), m.connect()]);
    try {
      const results = await Promise.all(clients.map((c, i) =>
        c.sendMessage(good(i === 1 ? { queueId: `Q${i}`, tenantIds: [] } : { queueId: `Q${i}` }))
      ));
      assert.deepEqual(results, [ok(), rejected("Q1", "Tenant-ID is missing!"), ok()]);
      for (const c of clients) await c.quit();
    } finally {
      for (const c of clients) c.destroy();
    }
  });
});

describe("decisions with custom messages, DKIM without alignment, results anywhere, no added header, header limits", () => {
  let m: TcpMilter;
  const MESSAGE = "Relay denied: 100% sure, see https://relay.example/why?a=b";
  const TMPFAIL = "Try again in 5 minutes";
  before(async () => {
    m = await startTcpMilter({
      MILTER_REJECT_MESSAGE: MESSAGE,
      MILTER_TMPFAIL_MESSAGE: TMPFAIL,
      MILTER_TRUSTED_AUTHRES_ANYWHERE: "on",
      MILTER_MAX_HEADERS: "20",
      MILTER_MAX_HEADER_BYTES: "4096",
      MILTER_DKIM_ENABLED: "Yes",
      MILTER_TRUSTED_AUTHSERVID: "DKIM.Relay.Example",
      MILTER_POLICY_FILE: policyFile(),
    });
  });
  after(async () => {
    await m?.proc.stop();
  });
  const check = (f: Facts, expected: Reply[]) => expectReplies(() => m.connect(), message(f), expected);

  it("the reject text is MILTER_REJECT_MESSAGE; a % goes over the wire as %%", async () => {
    const c = await m.connect();
    try {
      const r = await c.sendMessage(message({ from: "x@unknown.example" }));
      assert.deepEqual(r, rejected("4XYZ1234AB", "No policy for 5322.from_domain unknown.example", MESSAGE));
      const last = c.frames[c.frames.length - 1]!;
      assert.equal(String.fromCharCode(last.code), "y");
      assert.equal(
        new TextDecoder().decode(last.payload),
        `550 5.7.1 queue_id: 4XYZ1234AB - ${MESSAGE.replace("%", "%%")} - reason: No policy for 5322.from_domain unknown.example\0`,
      );
      await c.quit();
    } finally {
      c.destroy();
    }
  });

  it("x509 and tenant id are off: no certificate, no tenant id needed", () =>
    check({ cn: undefined, tenantIds: [] }, accepted(0)));

  it("DKIM on: no trusted pass rejects with the custom message", () =>
    check({ authResults: [] }, rejected("4XYZ1234AB", "No valid DKIM authentication results found", MESSAGE)));

  it("the trusted authserv-id is compared case-insensitively", () =>
    check({ authResults: [dkimPass("tenant.example", "dkim.RELAY.example")] }, accepted(0)));

  it("alignment not required globally: a non-aligned pass is accepted even if the policy asks for alignment", () =>
    check({ authResults: [dkimPass("tenant.onmicrosoft.com")] }, accepted(0)));

  it("forged X-ExOTA headers are deleted even when no header is added", () =>
    check({ extraHeaders: [[EXOTA, "forged"], [EXOTA.toLowerCase(), "forged"]] }, accepted(2)));

  it("MILTER_TRUSTED_AUTHRES_ANYWHERE: a trusted pass below the Received headers counts", () =>
    check({ authResults: [], extraHeaders: [["Authentication-Results", dkimPass("tenant.example")]] }, accepted(0)));

  /** The default message has 7 headers. */
  const filler = (n: number) => Array.from({ length: n }, (_, i) => [`X-Filler-${i}`, "x"] as const);
  const tooLarge = (qid: string) => [{ type: "replycode", code: 450, text: `4.7.1 queue_id: ${qid} - ${TMPFAIL} - reason: Message header too large` }] as Reply[];

  it("MILTER_MAX_HEADERS: exactly the limit is decided", () => check({ extraHeaders: filler(13) }, accepted(0)));

  it("MILTER_MAX_HEADERS: one more is tempfailed with MILTER_TMPFAIL_MESSAGE; the next message is decided again", async () => {
    const c = await m.connect();
    try {
      assert.deepEqual(await c.sendMessage(message({ queueId: "BIG1", extraHeaders: filler(14) })), tooLarge("BIG1"));
      assert.deepEqual(await c.sendMessage(message({ queueId: "SMALL1", session: false })), accepted(0));
      await c.quit();
    } finally {
      c.destroy();
    }
    await m.proc.waitForLog(/WARNING .*message header over the limits.* qid=BIG1/, 2000);
  });

  it("MILTER_MAX_HEADER_BYTES: a message with too many header bytes is tempfailed", () =>
    expectReplies(() => m.connect(), message({ queueId: "BIG2", extraHeaders: [["X-Long", "y".repeat(4000)]] }), tooLarge("BIG2")));

  it("does not ask for the add-header action when it adds none", async () => {
    const c = await MilterClient.connect({ host: "127.0.0.1", port: m.port });
    try {
      const r = await c.negotiate();
      assert.equal(r.actions & Action.ADDHDRS, 0);
      assert.equal(r.actions & Action.CHGHDRS, Action.CHGHDRS);
      await c.quit();
    } finally {
      c.destroy();
    }
  });
});

describe("decisions with a trusted certificate issuer", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({
      MILTER_X509_ENABLED: "true",
      MILTER_X509_TRUSTED_ISSUER: TRUSTED_ISSUER,
      MILTER_POLICY_FILE: policyFile(),
    });
  });
  after(async () => {
    await m?.proc.stop();
  });
  const check = (f: Facts, expected: Reply[]) => expectReplies(() => m.connect(), message({ cn: TRUSTED_CN, ...f }), expected);

  it("the trusted issuer (any letter case) is accepted", () => check({ issuer: TRUSTED_ISSUER.toUpperCase() }, accepted(0)));
  it("an issuer given as a whole DN counts by its CN", () =>
    check({ issuer: `/C=US/O=DigiCert Inc/CN=${TRUSTED_ISSUER}` }, accepted(0)));
  it("another issuer rejects, naming it", () =>
    check({ issuer: "Evil CA" }, rejected("4XYZ1234AB", "Untrusted x509 client certificate issuer: Evil CA")));
  it("no issuer rejects", () => check({ issuer: null }, rejected("4XYZ1234AB", "No x509 client certificate issuer found")));
  it("the CN is checked before the issuer", () =>
    check({ cn: "evil.example", issuer: "Evil CA" }, rejected("4XYZ1234AB", "Untrusted x509 client CN: evil.example")));
  it("the default allow-list (127.0.0.1, ::1) skips the whole check", async () => {
    await check({ client: { hostname: "localhost", family: "inet", address: "127.0.0.1", port: 1025 }, cn: undefined }, accepted(0));
    await check({ client: { hostname: "localhost", family: "inet6", address: "::1", port: 1025 }, cn: undefined }, accepted(0));
  });
});
