/**
 * `exota-milter tenant-id` and `check --verify-tenants` (the compiled
 * binary) against a stand-in for Microsoft's OpenID configuration endpoint
 * on 127.0.0.1 that answers as login.microsoftonline.com does: a verified
 * domain's document (issuer https://login.microsoftonline.com/<tenant>/v2.0),
 * HTTP 400 with AADSTS90002 for an unknown domain, and the faults a real
 * endpoint shows now and then (5xx, slowness, malformed JSON), plus a port
 * nobody listens on. Policies come from a file and from a throwaway slapd.
 */
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import { freePort, runMilter, tempDir, writePolicy } from "../lib/milter-process.ts";
import { BASE, samplePolicyEnv, type Slapd, startSlapd } from "../lib/slapd.ts";

const T = { timeout: 20_000 };
const TENANT_A = "1234abcd-18c5-45e8-88de-123456789abc";
const TENANT_B = "5678abcd-18c5-45e8-88de-123456789abc";
const MOVED_TO = "9999abcd-18c5-45e8-88de-123456789abc";

/** domain -> what the stand-in does. */
const BEHAVIOUR: Record<string, "tenant-a" | "tenant-b" | "moved" | "flaky" | "down" | "slow" | "garbage" | "delay"> = {
  "tenant.example": "tenant-a",
  "relaxed.example": "tenant-b",
  "moved.example": "moved",
  "flaky.example": "flaky",
  "down.example": "down",
  "slow.example": "slow",
  "garbage.example": "garbage",
};

const hits = new Map<string, number>();
/** Requests the stand-in has had, for any path. */
const requests = () => [...hits.values()].reduce((a, b) => a + b, 0);
let inFlight = 0;
let maxInFlight = 0;

const openid = (tenant: string) =>
  JSON.stringify({
    token_endpoint: `https://login.microsoftonline.com/${tenant}/oauth2/v2.0/token`,
    issuer: `https://login.microsoftonline.com/${tenant}/v2.0`,
    tenant_region_scope: "EU",
    cloud_instance_name: "microsoftonline.com",
  });

const UNKNOWN = (domain: string) =>
  JSON.stringify({
    error: "invalid_tenant",
    error_description: `AADSTS90002: Tenant '${domain}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.\r\nTrace ID: 0\r\nCorrelation ID: 0\r\nTimestamp: 2026-12-04 10:00:00Z`,
    error_codes: [90002],
    error_uri: "https://login.microsoftonline.com/error?code=90002",
  });

let server: Server;
let base = "";
let slapd: Slapd | undefined;
const scratch = tempDir("exota-tenants-");

before(async () => {
  server = createServer((req, res) => {
    const m = /^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/.exec(req.url ?? "");
    const domain = m?.[1] ?? "";
    hits.set(domain, (hits.get(domain) ?? 0) + 1);
    const send = (status: number, body: string) => {
      res.writeHead(status, { "content-type": "application/json; charset=utf-8" }).end(body);
    };
    const b = BEHAVIOUR[domain] ?? (domain.startsWith("many") ? "delay" : undefined);
    if (m === null) return send(404, "{}");
    switch (b) {
      case "tenant-a":
        return send(200, openid(TENANT_A));
      case "tenant-b":
        return send(200, openid(TENANT_B));
      case "moved":
        return send(200, openid(MOVED_TO));
      case "flaky":
        return hits.get(domain)! % 2 === 1 ? send(503, "Service Unavailable") : send(200, openid(TENANT_A));
      case "down":
        return send(500, "<html>oops</html>");
      case "slow":
        return void setTimeout(() => send(200, openid(TENANT_A)), 3000);
      case "garbage":
        return send(200, '{"issuer": "https://login.microsoftonline.com/');
      case "delay":
        // Counted here only: an earlier test's slow answer may still be pending.
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        return void setTimeout(() => {
          inFlight--;
          send(200, openid(TENANT_A));
        }, 150);
      default:
        return send(400, UNKNOWN(domain));
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await slapd?.destroy();
  rmSync(scratch, { recursive: true, force: true });
});

const env = (extra: Record<string, string> = {}) => ({ MILTER_TENANT_LOOKUP_URL: base, ...extra });

describe("tenant-id DOMAIN...", () => {
  it("a verified domain: its tenant id from the issuer; exit 0", T, async () => {
    const r = await runMilter(["tenant-id", "tenant.example", "relaxed.example"], env());
    assert.equal(r.code, 0, r.output);
    assert.equal(r.output, `tenant.example   ${TENANT_A}\nrelaxed.example  ${TENANT_B}\n`);
  });

  it("an unknown domain (HTTP 400, AADSTS90002): not a Microsoft 365 domain; exit 1", T, async () => {
    const r = await runMilter(["tenant-id", "tenant.example", "nobody.example"], env());
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /^nobody\.example {2}not a Microsoft 365 domain$/m);
  });

  it("5xx then OK: retried, the answer counts", T, async () => {
    const r = await runMilter(["tenant-id", "flaky.example"], env());
    assert.equal(r.code, 0, r.output);
    assert.equal(r.output, `flaky.example  ${TENANT_A}\n`);
    assert.equal(hits.get("flaky.example"), 2);
  });

  it("5xx every time: an error after 3 tries; exit 2", T, async () => {
    const r = await runMilter(["tenant-id", "down.example"], env());
    assert.equal(r.code, 2, r.output);
    assert.equal(r.output, `down.example  error: HTTP 500 from ${base}, 3 tries\n`);
    assert.equal(hits.get("down.example"), 3);
  });

  it("slow: gives up after MILTER_TENANT_LOOKUP_TIMEOUT", T, async () => {
    const started = Date.now();
    const r = await runMilter(["tenant-id", "slow.example"], env({ MILTER_TENANT_LOOKUP_TIMEOUT: "0.5" }));
    assert.equal(r.code, 2, r.output);
    assert.equal(r.output, `slow.example  error: no answer from ${base} within 0.5 s\n`);
    assert.ok(Date.now() - started < 2500, "did not wait for the slow answer");
  });

  it("malformed JSON: an error saying so", T, async () => {
    const r = await runMilter(["tenant-id", "garbage.example"], env());
    assert.equal(r.code, 2, r.output);
    assert.match(r.output, /^garbage\.example {2}error: malformed answer \(HTTP 200, not JSON\)/);
  });

  it("nothing listens at the URL: a clear error", T, async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const r = await runMilter(["tenant-id", "tenant.example"], env({ MILTER_TENANT_LOOKUP_URL: url }));
    assert.equal(r.code, 2, r.output);
    assert.match(r.output, new RegExp(`^tenant\\.example {2}error: cannot reach ${url.replace(/\./g, "\\.")}: `));
  });

  it("not a domain name: said so, nothing asked", T, async () => {
    const asked = requests();
    const r = await runMilter(["tenant-id", "a/b"], env());
    assert.equal(r.code, 2, r.output);
    assert.equal(r.output, 'a/b  error: "a/b" is not a domain name\n');
    assert.equal(requests(), asked, "no request reached the stand-in");
  });

  it("--json, one array in the order asked", T, async () => {
    const r = await runMilter(["tenant-id", "--json", "tenant.example", "nobody.example", "down.example"], env());
    assert.equal(r.code, 2, r.output);
    assert.deepEqual(JSON.parse(r.output), [
      { domain: "tenant.example", status: "tenant", tenant_id: TENANT_A },
      { domain: "nobody.example", status: "unknown", tenant_id: null },
      { domain: "down.example", status: "error", tenant_id: null, error: `HTTP 500 from ${base}, 3 tries` },
    ]);
  });

  it("at most 8 requests in flight", T, async () => {
    maxInFlight = 0;
    const domains = Array.from({ length: 24 }, (_, i) => `many${i}.example`);
    const r = await runMilter(["tenant-id", ...domains], env());
    assert.equal(r.code, 0, r.output);
    assert.equal(r.output.trim().split("\n").length, 24);
    assert.ok(maxInFlight > 1 && maxInFlight <= 8, `max in flight ${maxInFlight}`);
  });

  it("no domain: a usage error", T, async () => {
    const r = await runMilter(["tenant-id"], env());
    assert.equal(r.code, 1);
    assert.match(r.output, /tenant-id needs at least one domain/);
  });
});

describe("check --verify-tenants", () => {
  const POLICY = {
    "tenant.example": { tenant_id: TENANT_A },
    "moved.example": { tenant_id: TENANT_A },
    "nobody.example": { tenant_id: TENANT_B },
    "relaxed.example": { tenant_id: "" },
  };

  it("policy file: lists the mismatch and the unknown domain; exit 1", T, async () => {
    const file = writePolicy(POLICY, scratch);
    const r = await runMilter(["check", "--verify-tenants"], env({ MILTER_POLICY_FILE: file }));
    assert.equal(r.code, 1, r.output);
    assert.equal(
      r.output,
      `tenants: 4 policy entries checked against ${base}: 1 match\n` +
        `  moved.example  mismatch: policy says ${TENANT_A}, Microsoft says ${MOVED_TO} (mail from moved.example is rejected when the tenant id is required)\n` +
        "  nobody.example  unknown domain: not a Microsoft 365 domain (no tenant has verified it)\n" +
        `  relaxed.example  no tenant id in the policy; Microsoft says ${TENANT_B}\n`,
    );
  });

  it("--json", T, async () => {
    const file = writePolicy(POLICY, scratch);
    const r = await runMilter(["check", "--verify-tenants", "--json"], env({ MILTER_POLICY_FILE: file }));
    assert.equal(r.code, 1, r.output);
    const rows = JSON.parse(r.output) as Array<{ domain: string; verdict: string; tenant_id: string | null; policy_tenant_id: string | null }>;
    assert.deepEqual(rows.map((x) => [x.domain, x.verdict, x.tenant_id, x.policy_tenant_id]), [
      ["tenant.example", "match", TENANT_A, TENANT_A],
      ["moved.example", "mismatch", MOVED_TO, TENANT_A],
      ["nobody.example", "unknown-domain", null, TENANT_B],
      ["relaxed.example", "no-tenant-in-policy", TENANT_B, null],
    ]);
  });

  it("every entry matches: exit 0; the endpoint unreachable: exit 2", T, async () => {
    const file = writePolicy({ "tenant.example": { tenant_id: TENANT_A }, "relaxed.example": { tenant_id: TENANT_B } }, scratch);
    const good = await runMilter(["check", "--verify-tenants"], env({ MILTER_POLICY_FILE: file }));
    assert.equal(good.code, 0, good.output);
    assert.equal(good.output, `tenants: 2 policy entries checked against ${base}: 2 match\n`);
    const url = `http://127.0.0.1:${await freePort()}`;
    const down = await runMilter(["check", "--verify-tenants"], env({ MILTER_POLICY_FILE: file, MILTER_TENANT_LOOKUP_URL: url }));
    assert.equal(down.code, 2, down.output);
    assert.match(down.output, /tenant\.example {2}could not check: cannot reach/);
  });

  it("LDAP: every entry of the directory (the sample policies), one moved to another tenant", T, async () => {
    slapd = await startSlapd(
      `dn: cn=moved.example,ou=domains,${BASE}\nobjectClass: applicationProcess\nobjectClass: domainRelatedObject\n` +
        `objectClass: exotaMilterPolicy\ncn: moved.example\nassociatedDomain: moved.example\nexotaMilterTenantId: ${TENANT_A}\n`,
    );
    const r = await runMilter(["check", "--verify-tenants", "--json"], env(samplePolicyEnv(slapd)));
    assert.equal(r.code, 1, r.output);
    const rows = JSON.parse(r.output) as Array<{ domain: string; verdict: string }>;
    assert.deepEqual(rows.map((x) => [x.domain, x.verdict]).sort(), [
      ["moved.example", "mismatch"],
      ["relaxed.example", "match"],
      ["tenant.example", "match"],
    ]);
  });
});
