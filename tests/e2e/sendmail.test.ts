/**
 * exota-milter under a real Sendmail 8.17 (Debian's, unpacked, not installed):
 * swaks (plays Exchange Online) -> Sendmail -> OpenDKIM -> exota-milter ->
 * smtp-sink. Sendmail passes the certificate macros for every presented
 * certificate, as an xtext-encoded DN, and whether it verified the chain only
 * in {verify}: a certificate of a foreign CA must never be trusted.
 *
 * Two Sendmail instances: one with the sendmail.mc line README gives
 * ({verify} added to confMILTER_MACROS_HELO), one with Sendmail's default
 * macros (exota-milter asks for {verify} itself). Each has two routes:
 *   plain    exota-milter checks the CN
 *   issuer   exota-milter also checks the issuer CN (MILTER_X509_TRUSTED_ISSUER)
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { buildMessage, Chain, type Cert, exotaEnv, POLICY, TRUSTED_CA_CN } from "./chain.ts";
import { assertAccepted, assertRejected, QUEUE_ID } from "./helpers.ts";
import { Sendmail } from "./sendmail.ts";
import { freePort, ROOT, writePolicy } from "../lib/milter-process.ts";
import { SENDMAIL_VERIFY_MACRO_LINE } from "../../src/policy/decide.ts";

const T = { timeout: 30_000 };

let chain: Chain | undefined;
const sendmails: Sendmail[] = [];
after(async () => {
  for (const s of sendmails) await s.stop();
  await chain?.stop();
});

async function setUp() {
  const c = (chain = await Chain.create());
  const policy = writePolicy(POLICY, c.dir);
  const [plainPort, issuerPort] = [await freePort(), await freePort()];
  const [plain, issuer] = await Promise.all([
    c.startMilter(exotaEnv({ MILTER_POLICY_FILE: policy, MILTER_SOCKET: `inet:${plainPort}@127.0.0.1` })),
    c.startMilter(exotaEnv({ MILTER_POLICY_FILE: policy, MILTER_SOCKET: `inet:${issuerPort}@127.0.0.1`, MILTER_X509_TRUSTED_ISSUER: TRUSTED_CA_CN })),
  ]);
  const routes = { plain: ["opendkim", `inet:${plainPort}@127.0.0.1`], issuer: ["opendkim", `inet:${issuerPort}@127.0.0.1`] };
  const [configured, defaults] = await Promise.all([
    Sendmail.start(c, { name: "verify", verifyMacro: true, routes }),
    Sendmail.start(c, { name: "default", verifyMacro: false, routes }),
  ]);
  sendmails.push(configured, defaults);
  return { chain: c, plain, issuer, configured, defaults };
}

const env = await setUp().catch(async (e) => {
  for (const s of sendmails) await s.stop();
  await chain?.stop();
  throw e;
});
const c = env.chain;
const signed = c.sign(buildMessage({ from: "Alice <alice@tenant.example>" }), "tenant.example");

const reject = (reason: string) => async (reply: Promise<import("./chain.ts").SmtpReply>) => assertRejected(await reply, reason, QUEUE_ID.sendmail);
const NOT_VERIFIED = reject("Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL)");

describe("the two Sendmail configurations", () => {
  it("the mc line of README and of the WARNING adds {verify} to Sendmail's HELO macros; the default has none", () => {
    assert.ok(readFileSync(join(ROOT, "README.md"), "utf8").includes(`    ${SENDMAIL_VERIFY_MACRO_LINE}\n`), "README gives the line");
    const helo = (s: Sendmail) => s.cf().split("\n").find((l) => l.startsWith("O Milter.macros.helo="));
    assert.equal(helo(env.configured), "O Milter.macros.helo={tls_version}, {cipher}, {cipher_bits}, {cert_subject}, {cert_issuer}, {verify}");
    assert.equal(helo(env.defaults), "O Milter.macros.helo={tls_version}, {cipher}, {cipher_bits}, {cert_subject}, {cert_issuer}");
  });
});

for (const [setup, sm] of [["with {verify} in sendmail.mc", env.configured], ["with Sendmail's default macros", env.defaults]] as const) {
  for (const route of ["plain", "issuer"] as const) {
    const what = route === "issuer" ? ", MILTER_X509_TRUSTED_ISSUER set" : "";
    describe(`Sendmail ${setup}${what}`, () => {
      const send = async (cert: Cert) => c.swaks(sm.port(route), await signed, cert);

      it("the trusted CA's certificate with the trusted CN: accepted, x509_client_trust=True", T, async () => {
        await assertAccepted(c, await send(c.pki.trusted), { domain: "tenant.example", aligned: true, signer: "tenant.example" });
      });

      it("another CA, same CN: rejected (Sendmail says {verify}=FAIL)", T, () => NOT_VERIFIED(send(c.pki.untrustedCa)));

      it("another CA whose name is the trusted CA's, same CN: rejected", T, () => NOT_VERIFIED(send(c.pki.sameIssuerName)));

      it("the trusted CA, another CN: rejected naming the CN", T, () => reject("Untrusted x509 client CN: other.example.net")(send(c.pki.otherCn)));

      it("STARTTLS without a certificate: rejected", T, () => reject("No trusted x509 client CN found")(send("none")));

      it("no TLS at all: rejected", T, () => reject("No trusted x509 client CN found")(send("no-tls")));
    });
  }
}

describe("what exota-milter saw from Sendmail", () => {
  it("the xtext DN decoded, {verify} read, no WARNING about a missing {verify}", () => {
    for (const m of [env.plain, env.issuer]) {
      const log = m.log();
      assert.match(log, /x509: trusted client CN mail\.protection\.outlook\.com \(\{verify\}=OK\)/);
      assert.doesNotMatch(log, /add to sendmail\.mc/);
    }
  });
});
