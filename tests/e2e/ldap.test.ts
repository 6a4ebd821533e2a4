/**
 * The LDAP policy backend in the real chain: swaks -> Postfix -> OpenDKIM ->
 * exota-milter (MILTER_POLICY_SOURCE=ldap) -> smtp-sink, with a throwaway
 * slapd (tests/lib/slapd.ts) holding the shipped sample policies
 * (ldap/sample-policies.ldif: tenant.example, relaxed.example).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { buildMessage, Chain, exotaEnv, RELAXED_TENANT } from "./chain.ts";
import { assertAccepted, assertRejected, assertTempfailed } from "./helpers.ts";
import { samplePolicyEnv, type Slapd, startSlapd } from "../lib/slapd.ts";
import { sleep } from "../lib/milter-process.ts";

/** Per test: bun's default is 5 s. */
const T = { timeout: 30_000 };

// Set up at module level (bun gives hooks 5 s); after() stops everything, also when a test failed.
let started: Chain | undefined;
let slapd: Slapd | undefined;
after(async () => {
  await Promise.all([started?.stop(), slapd?.destroy()]);
});

async function setUp(): Promise<Chain> {
  slapd = await startSlapd();
  const chain = (started = await Chain.create());
  const sock = join(chain.dir, "exota-ldap.sock");
  await chain.startMilter(exotaEnv({
    MILTER_SOCKET: `unix:${sock}`,
    MILTER_SOCKET_MODE: "0666",
    ...samplePolicyEnv(slapd),
    // Every message asks the directory: a stopped slapd must show at once.
    MILTER_LDAP_CACHE_TTL: "0",
    MILTER_LDAP_CONNECT_TIMEOUT: "1",
    MILTER_LDAP_RECEIVE_TIMEOUT: "1",
  }));
  await chain.startPostfix({ routes: { ldap: ["opendkim", `unix:${sock}`] } });
  return chain;
}

const chain = await setUp().catch(async (e) => {
  await Promise.all([started?.stop(), slapd?.destroy()]);
  throw e;
});

const valid = () => chain.sign(buildMessage({ from: "Alice <alice@tenant.example>" }), "tenant.example");
const TENANT_OK = { domain: "tenant.example", aligned: true, signer: "tenant.example" } as const;

describe("policy from LDAP", () => {
  it("tenant.example from the directory: accepted", T, async () => {
    await assertAccepted(chain, await chain.swaks("ldap", await valid()), TENANT_OK);
  });

  it("relaxed.example (exotaMilterDkimAlignmentRequired FALSE): not aligned, accepted", T, async () => {
    const m = await chain.sign(buildMessage({ from: "carol@relaxed.example", tenantId: RELAXED_TENANT }), "other.example");
    await assertAccepted(chain, await chain.swaks("ldap", m), { domain: "relaxed.example", aligned: false, signer: "other.example" });
  });

  it("tenant.example with another tenant's id: 550", T, async () => {
    const m = await chain.sign(buildMessage({ from: "alice@tenant.example", tenantId: RELAXED_TENANT }), "tenant.example");
    assertRejected(await chain.swaks("ldap", m), "No policy match for tenant-id");
  });

  it("a domain the directory does not know: 550", T, async () => {
    const m = await chain.sign(buildMessage({ from: "mallory@nopolicy.example" }), "nopolicy.example");
    assertRejected(await chain.swaks("ldap", m), "No policy for 5322.from_domain nopolicy.example");
  });

  it("slapd stopped: 450 from the milter, nothing queued; slapd back: accepted again", T, async () => {
    const m = await valid();
    await slapd!.stop();
    const r = await chain.swaks("ldap", m);
    assertTempfailed(r, "Policy backend problem");
    assert.equal(r.queueId, undefined);

    await slapd!.start();
    // The backend reconnects in the background with back-off (first retries after 0.5 s, 1 s, 2 s).
    const until = Date.now() + 20_000;
    let last = r;
    while (last.code !== 250 && Date.now() < until) {
      await sleep(500);
      last = await chain.swaks("ldap", m);
      if (last.code !== 250) assertTempfailed(last, "Policy backend problem");
    }
    await assertAccepted(chain, last, TENANT_OK);
  });
});
