/**
 * exota-milter in the real chain: swaks and python3 smtplib (playing
 * Exchange Online) -> Postfix -> OpenDKIM (verify) -> exota-milter (the
 * compiled binary) -> smtp-sink. Each scenario asserts the SMTP reply the
 * client sees and, for accepted mail, the headers as delivered.
 *
 * Postfix, OpenDKIM and smtp-sink start once for the file; Postfix has one
 * smtpd listener per route:
 *   unix     OpenDKIM + exota-milter on a unix socket
 *   tcp      OpenDKIM + exota-milter on TCP
 *   foreign  OpenDKIM + exota-milter trusting another verifier's authserv-id
 *   down     OpenDKIM + exota-milter that a test stops
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  alterBody,
  buildMessage,
  Chain,
  type Delivered,
  exotaEnv,
  type MessageSpec,
  OPENDKIM_AUTHSERVID,
  POLICY,
  RELAXED_TENANT,
  UNKNOWN_TENANT,
  waitUntil,
} from "./chain.ts";
import { assertAccepted, assertRejected } from "./helpers.ts";
import type { MilterProcess } from "../lib/milter-process.ts";
import { freePort, runMilter, writePolicy } from "../lib/milter-process.ts";

/** Per test: bun's default is 5 s, and a test here signs with dkimsign and runs swaks or python3. */
const T = { timeout: 30_000 };

/** An authserv-id exota-milter is told to trust on the "foreign" route, which OpenDKIM does not know. */
const FOREIGN_AUTHSERVID = "verifier.e2e.test";

const milters: Record<"unix" | "tcp" | "foreign" | "down", MilterProcess | undefined> = { unix: undefined, tcp: undefined, foreign: undefined, down: undefined };
/** MILTER_SOCKET of the unix and tcp milters, for the Postfix audit of this chain's configuration. */
const sockets: string[] = [];

// Set up at module level: bun's node:test gives hooks 5 s and ignores their timeout option, and the
// chain takes a few seconds (RSA keys, postfix start). after() stops it, also when a test failed.
let started: Chain | undefined;
after(async () => {
  await started?.stop();
});

async function setUp(): Promise<Chain> {
  const chain = (started = await Chain.create());
  const policy = writePolicy(POLICY, chain.dir);
  const unixSock = join(chain.dir, "exota.sock");
  const foreignSock = join(chain.dir, "exota-foreign.sock");
  const downSock = join(chain.dir, "exota-down.sock");
  const tcpPort = await freePort();
  sockets.push(`unix:${unixSock}`, `inet:${tcpPort}@127.0.0.1`);
  const common = { MILTER_POLICY_FILE: policy, MILTER_SOCKET_MODE: "0666" };
  [milters.unix, milters.tcp, milters.foreign, milters.down] = await Promise.all([
    chain.startMilter(exotaEnv({ ...common, MILTER_SOCKET: `unix:${unixSock}` })),
    chain.startMilter(exotaEnv({ ...common, MILTER_SOCKET: `inet:${tcpPort}@127.0.0.1` })),
    chain.startMilter(exotaEnv({ ...common, MILTER_SOCKET: `unix:${foreignSock}`, MILTER_TRUSTED_AUTHSERVID: FOREIGN_AUTHSERVID })),
    chain.startMilter(exotaEnv({ ...common, MILTER_SOCKET: `local:${downSock}` })),
  ]);
  await chain.startPostfix({
    routes: {
      unix: ["opendkim", `unix:${unixSock}`],
      tcp: ["opendkim", `inet:127.0.0.1:${tcpPort}`],
      foreign: ["opendkim", `unix:${foreignSock}`],
      down: ["opendkim", `unix:${downSock}`],
    },
  });
  return chain;
}

const chain = await setUp().catch(async (e) => {
  await started?.stop();
  throw e;
});

/** tenant.example, signed by tenant.example, right tenant id: the message every scenario varies. */
const valid = (extra: Partial<MessageSpec> = {}) =>
  chain.sign(buildMessage({ from: "Alice <alice@tenant.example>", ...extra }), "tenant.example");

const TENANT_OK = { domain: "tenant.example", aligned: true, signer: "tenant.example" } as const;

/** Signed once, sent many times (every copy gets its own queue id). */
const once = <V>(f: () => Promise<V>) => {
  let p: Promise<V> | undefined;
  return () => (p ??= f());
};
const validOnce = once(() => valid());
/** tenant.example, but signed by other.example: "DKIM alignment required!". */
const unalignedOnce = once(() => chain.sign(buildMessage({ from: "alice@tenant.example" }), "other.example"));

for (const route of ["unix", "tcp"] as const) {
  describe(`exota-milter on ${route === "unix" ? "a unix socket" : "TCP"}`, () => {
    it("valid tenant: accepted, exactly one X-ExOTA-Authentication-Results as delivered", T, async () => {
      const d = await assertAccepted(chain, await chain.swaks(route, await validOnce()), TENANT_OK);
      // OpenDKIM's result stands above the Received headers of Exchange Online, where the milter trusts it.
      assert.ok(d.headers.findIndex(([n]) => n === "Authentication-Results") < d.headers.findIndex(([, v]) => v.includes("exchangelabs.com")));
    });

    it("body altered after signing: 550 (OpenDKIM says dkim=fail)", T, async () => {
      assertRejected(await chain.swaks(route, alterBody(await validOnce())), "No valid DKIM authentication results found");
    });

    it("unsigned message: 550", T, async () => {
      assertRejected(await chain.swaks(route, buildMessage({ from: "alice@tenant.example" })), "No valid DKIM authentication results found");
    });

    it("From domain without policy: 550", T, async () => {
      const m = await chain.sign(buildMessage({ from: "mallory@nopolicy.example" }), "nopolicy.example");
      assertRejected(await chain.swaks(route, m), "No policy for 5322.from_domain nopolicy.example");
    });

    it("DKIM pass but not aligned with the From domain: 550", T, async () => {
      const m = await chain.sign(buildMessage({ from: "alice@tenant.example" }), "other.example");
      assertRejected(await chain.swaks(route, m), "DKIM alignment required!");
    });

    it("DKIM not aligned, policy with dkim_alignment_required false: accepted", T, async () => {
      const m = await chain.sign(buildMessage({ from: "carol@relaxed.example", tenantId: RELAXED_TENANT }), "other.example");
      await assertAccepted(chain, await chain.swaks(route, m), { domain: "relaxed.example", aligned: false, signer: "other.example" });
    });

    it("tenant id of another tenant: 550", T, async () => {
      assertRejected(await chain.swaks(route, await valid({ tenantId: UNKNOWN_TENANT })), "No policy match for tenant-id");
    });

    it("tenant id header missing: 550", T, async () => {
      assertRejected(await chain.swaks(route, await valid({ tenantId: null })), "Tenant-ID is missing!");
    });

    it("client certificate with another CN: 550", T, async () => {
      assertRejected(await chain.swaks(route, await validOnce(), chain.pki.otherCn), "Untrusted x509 client CN: other.example.net");
    });

    it("STARTTLS without a client certificate: 550", T, async () => {
      assertRejected(await chain.swaks(route, await validOnce(), "none"), "No trusted x509 client CN found");
    });

    it("no STARTTLS at all: 550", T, async () => {
      assertRejected(await chain.swaks(route, await validOnce(), "no-tls"), "No trusted x509 client CN found");
    });

    it("certificate with the trusted CN from an untrusted CA: 550 (Postfix sets no {cert_subject})", T, async () => {
      assertRejected(await chain.swaks(route, await validOnce(), chain.pki.untrustedCa), "No trusted x509 client CN found");
    });

    it("forged X-ExOTA-Authentication-Results in any letter case: all removed, ours added", T, async () => {
      const m = await valid({
        top: ["X-Exota-Authentication-Results: relay.e2e.test; auth=pass forged=top"],
        extra: [
          "X-ExOTA-Authentication-Results: relay.e2e.test; auth=pass forged=1",
          "x-exota-authentication-results: relay.e2e.test;\n  auth=pass forged=2",
          "X-EXOTA-AUTHENTICATION-RESULTS: relay.e2e.test; auth=pass forged=3",
        ],
      });
      const d = await assertAccepted(chain, await chain.swaks(route, m), TENANT_OK);
      assert.doesNotMatch(d.raw, /forged=/);
    });

    it("forged Authentication-Results of the trusted authserv-id in an unsigned message: 550", T, async () => {
      // On top of the message, where a header of the verifier would stand. OpenDKIM deletes incoming
      // results that carry its own authserv-id, so the milter sees none.
      const m = buildMessage({
        from: "alice@tenant.example",
        top: [`Authentication-Results: ${OPENDKIM_AUTHSERVID}; dkim=pass header.d=tenant.example header.s=sel`],
      });
      assertRejected(await chain.swaks(route, m), "No valid DKIM authentication results found");
    });

    for (const id of ["MX.E2E.TEST", `"${OPENDKIM_AUTHSERVID}"`, `${OPENDKIM_AUTHSERVID} 1`, `(verified) ${OPENDKIM_AUTHSERVID}`]) {
      it(`forged Authentication-Results spelled ${id}: 550`, T, async () => {
        // Spellings that exota-milter reads as the trusted authserv-id: OpenDKIM must delete them too.
        const m = buildMessage({ from: "alice@tenant.example", top: [`Authentication-Results: ${id}; dkim=pass header.d=tenant.example`] });
        assertRejected(await chain.swaks(route, m), "No valid DKIM authentication results found");
      });
    }

    it("message signed by the attacker's own domain plus a forged pass for the victim: 550", T, async () => {
      const m = await chain.sign(
        buildMessage({
          from: "ceo@tenant.example",
          top: [`Authentication-Results: ${OPENDKIM_AUTHSERVID}; dkim=pass header.d=tenant.example`],
          extra: [`Authentication-Results: ${OPENDKIM_AUTHSERVID}; dkim=pass header.d=tenant.example`],
        }),
        "attacker.example",
      );
      assertRejected(await chain.swaks(route, m), "DKIM alignment required!");
    });

    it("forwarded: From without policy, Resent-From of the tenant, original signature intact: accepted", T, async () => {
      const m = await chain.sign(
        buildMessage({ from: "dave@external.example", resentFrom: "alice@tenant.example" }),
        "external.example",
      );
      await assertAccepted(chain, await chain.swaks(route, m), { domain: "external.example", aligned: true, forwarded: true, signer: "external.example" });
    });

    it("forwarded with a Resent-From domain without policy: 550", T, async () => {
      const m = await chain.sign(
        buildMessage({ from: "dave@external.example", resentFrom: "mallory@nopolicy.example" }),
        "external.example",
      );
      assertRejected(await chain.swaks(route, m), "No policy for 5322.resent_from_domain nopolicy.example");
    });

    describe("several messages in one SMTP session (state resets between them)", () => {
      const unaligned = unalignedOnce;
      const forgedHeaders = (n: number) => Array.from({ length: n }, (_, i) => `${i % 2 ? "x-exota" : "X-EXOTA"}-authentication-results: forged${i}`);

      const check = async (replies: Awaited<ReturnType<Chain["session"]>>, expected: Array<"accept" | "reject">) => {
        assert.equal(replies.length, expected.length);
        const delivered: Delivered[] = [];
        for (const [i, want] of expected.entries()) {
          if (want === "reject") assertRejected(replies[i]!, "DKIM alignment required!");
          else delivered.push(await assertAccepted(chain, replies[i]!, TENANT_OK));
        }
        return delivered;
      };

      it("reject, then accept", T, async () => {
        await check(await chain.session(route, [await unaligned(), await validOnce()]), ["reject", "accept"]);
      });

      it("accept, then reject", T, async () => {
        await check(await chain.session(route, [await validOnce(), await unaligned()]), ["accept", "reject"]);
      });

      it("accept, reject, accept", T, async () => {
        await check(await chain.session(route, [await validOnce(), await unaligned(), await validOnce()]), ["accept", "reject", "accept"]);
      });

      it("reject, accept, reject", T, async () => {
        await check(await chain.session(route, [await unaligned(), await validOnce(), await unaligned()]), ["reject", "accept", "reject"]);
      });

      it("forged headers counted per message: three, then one, then none", T, async () => {
        const msgs = [await valid({ extra: forgedHeaders(3) }), await valid({ extra: forgedHeaders(1) }), await validOnce()];
        const delivered = await check(await chain.session(route, msgs), ["accept", "accept", "accept"]);
        for (const d of delivered) assert.doesNotMatch(d.raw, /forged\d/);
      });

      it("ten messages: no ~40 ms stall per message", T, async () => {
        const m = await validOnce();
        const replies = await chain.session(route, Array.from({ length: 10 }, () => m));
        await check(replies, replies.map(() => "accept"));
        const ms = replies.map((r) => Math.round(r.seconds * 1000)).sort((a, b) => a - b);
        console.log(`e2e ${route}: MAIL to end of DATA per message, ms, sorted: ${ms.join(" ")}`);
        // A stall of Nagle + delayed ACK (~40 ms) hits every message; load on the machine only some.
        // With Postfix 3.7 on TCP it appeared after every command sent without a reply (NR_* flags,
        // macros of stages skipped by NORCPT/NODATA): the fastest message then took ~47 ms.
        assert.ok(ms[0]! < 30, `fastest message took ${ms[0]} ms`);
      });
    });
  });
}

describe("a trusted authserv-id that OpenDKIM does not own (milter trusts verifier.e2e.test)", () => {
  // OpenDKIM only deletes results carrying its own authserv-id. When the milter trusts another
  // verifier's id, nothing in this chain deletes a forgery of it; what remains is the milter's own
  // defence: results count only above the first Received header. Exchange Online puts its Received
  // headers above everything a tenant submits, so a tenant's forgery always stands below them. (A
  // forgery on top of the message cannot come from a tenant through Exchange Online: only the hop
  // that talks to this relay can put it there, so that case is not a test of the milter.)
  it("forged pass of the trusted id below Exchange Online's Received headers: 550, and the milter warns", T, async () => {
    const offset = milters.foreign!.log().length;
    const m = buildMessage({
      from: "alice@tenant.example",
      extra: [`Authentication-Results: ${FOREIGN_AUTHSERVID}; dkim=pass header.d=tenant.example header.s=sel`],
    });
    assertRejected(await chain.swaks("foreign", m), "No valid DKIM authentication results found");
    await milters.foreign!.waitForLog(/ignored 1 Authentication-Results header\(s\) of the trusted authserv-id below a Received header/, 5000, offset);
  });

  it("OpenDKIM's genuine pass does not count for a milter that trusts another id: 550", T, async () => {
    assertRejected(await chain.swaks("foreign", await validOnce()), "No valid DKIM authentication results found");
  });
});

describe("check --postfix on the configuration this chain runs with", () => {
  it("reports no problem for the unix and the tcp milter, exit 0; the other routes are notes", T, async () => {
    for (const socket of sockets) {
      const r = await runMilter(["check", `--postfix=${chain.postfixConfigDir}`], exotaEnv({ MILTER_SOCKET: socket }));
      assert.equal(r.code, 0, r.output);
      assert.match(r.output, /: 0 problem\(s\)\n/);
      assert.equal(r.output.match(/^note: service 127\.0\.0\.1:\d+\/inet does not pass mail to exota-milter/gm)?.length, 3, r.output);
    }
  });
});

describe("exota-milter stopped", () => {
  it("Postfix applies milter_default_action = tempfail: 4xx, nothing queued", T, async () => {
    await assertAccepted(chain, await chain.swaks("down", await validOnce()), TENANT_OK);
    await milters.down!.stop();
    const r = await chain.swaks("down", await validOnce());
    assert.ok(r.code >= 400 && r.code < 500, `expected 4xx, got: ${r.text}`);
    assert.equal(r.queueId, undefined);
    // postlogd writes the log line a moment after the reply: wait for it.
    const refused = /postfix\/down\/smtpd\[\d+\]: NOQUEUE: milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: 451 4\.7\.1/;
    await waitUntil("Postfix to log the refusal", () => refused.test(chain.postfixLog()), 5000, 50).catch(() => assert.match(chain.postfixLog(), refused));
  });
});
