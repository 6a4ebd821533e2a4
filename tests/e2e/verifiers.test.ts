/**
 * exota-milter behind the other DKIM verifiers a postmaster picks instead of
 * OpenDKIM: swaks -> Postfix -> dkimpy-milter or Rspamd (proxy worker, milter
 * mode) -> exota-milter -> smtp-sink. exota-milter trusts the results of the
 * verifier in front of it (MILTER_TRUSTED_AUTHSERVID) and nothing a sender wrote.
 */
import { after, describe, it } from "node:test";
import { alterBody, buildMessage, Chain, exotaEnv, POLICY } from "./chain.ts";
import { assertAccepted, assertRejected } from "./helpers.ts";
import { DKIMPY_AUTHSERVID, RSPAMD_AUTHSERVID, startDkimpy, startRspamd } from "./verifiers.ts";
import { freePort, writePolicy } from "../lib/milter-process.ts";

const T = { timeout: 30_000 };

let started: Chain | undefined;
after(async () => {
  await started?.stop();
});

const VERIFIERS = { dkimpy: DKIMPY_AUTHSERVID, rspamd: RSPAMD_AUTHSERVID } as const;

async function setUp(): Promise<Chain> {
  const chain = (started = await Chain.create());
  const policy = writePolicy(POLICY, chain.dir);
  const [dkimpy, rspamd, exotaDkimpy, exotaRspamd] = await Promise.all([startDkimpy(chain), startRspamd(chain), freePort(), freePort()]);
  await Promise.all([
    chain.startMilter(exotaEnv({ MILTER_POLICY_FILE: policy, MILTER_SOCKET: `inet:${exotaDkimpy}@127.0.0.1`, MILTER_TRUSTED_AUTHSERVID: DKIMPY_AUTHSERVID })),
    chain.startMilter(exotaEnv({ MILTER_POLICY_FILE: policy, MILTER_SOCKET: `inet:${exotaRspamd}@127.0.0.1`, MILTER_TRUSTED_AUTHSERVID: RSPAMD_AUTHSERVID })),
  ]);
  await chain.startPostfix({
    routes: {
      dkimpy: [`inet:127.0.0.1:${dkimpy}`, `inet:127.0.0.1:${exotaDkimpy}`],
      rspamd: [`inet:127.0.0.1:${rspamd}`, `inet:127.0.0.1:${exotaRspamd}`],
    },
  });
  return chain;
}

const chain = await setUp().catch(async (e) => {
  await started?.stop();
  throw e;
});
const signed = chain.sign(buildMessage({ from: "Alice <alice@tenant.example>" }), "tenant.example");

for (const [route, verifier] of Object.entries(VERIFIERS)) {
  describe(`Postfix -> ${route} -> exota-milter`, () => {
    it("valid signature: accepted, the verifier's pass and our header as delivered", T, async () => {
      await assertAccepted(chain, await chain.swaks(route, await signed), { domain: "tenant.example", aligned: true, signer: "tenant.example", verifier });
    });

    it("body altered after signing: 550", T, async () => {
      assertRejected(await chain.swaks(route, alterBody(await signed)), "No valid DKIM authentication results found");
    });

    it("unsigned: 550", T, async () => {
      assertRejected(await chain.swaks(route, buildMessage({ from: "alice@tenant.example" })), "No valid DKIM authentication results found");
    });

    it("forged Authentication-Results of the verifier's authserv-id on top of an unsigned message: 550", T, async () => {
      const m = buildMessage({ from: "alice@tenant.example", top: [`Authentication-Results: ${verifier}; dkim=pass header.d=tenant.example header.s=sel`] });
      assertRejected(await chain.swaks(route, m), "No valid DKIM authentication results found");
    });

    it("forged Authentication-Results among the sender's headers of an unsigned message: 550", T, async () => {
      const m = buildMessage({ from: "alice@tenant.example", extra: [`Authentication-Results: ${verifier}; dkim=pass header.d=tenant.example header.s=sel`] });
      assertRejected(await chain.swaks(route, m), "No valid DKIM authentication results found");
    });
  });
}
