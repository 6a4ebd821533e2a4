/**
 * The LDAP policy backend end to end: a throwaway slapd (Debian's) on a
 * loopback port, the compiled binary with MILTER_POLICY_SOURCE=ldap, driven
 * over the milter protocol the way Postfix drives it.
 *
 * Covered: found / not found / forwarded / duplicate entries / defaults of
 * missing attributes; custom attribute names holding malformed values; filter
 * metacharacters in the From domain; start-up errors (wrong password, bad
 * base); the password file; fail-over between URIs; slapd going away and
 * coming back, also frozen and thawed (SIGSTOP, SIGCONT); a server that
 * accepts TCP but never answers; the answer cache (reused within its
 * lifetime, never served after it).
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { getLogger } from "@logtape/logtape";
import { LdapPolicyBackend } from "../../src/policy/ldap-backend.ts";
import type { Reply } from "../../src/milter/types.ts";
import {
  accepted,
  addedHeader,
  dkimPass,
  type Facts,
  message,
  OTHER_TENANT,
  rejected,
  removeScratch,
  scratchDir,
  startTcpMilter,
  type TcpMilter,
  TENANT,
  ALL_CHECKS_ENV,
} from "../lib/fixtures.ts";
import type { MessageSpec } from "../lib/milter-client.ts";
import { freePort, runMilter, sleep } from "../lib/milter-process.ts";
import { BASE, BIND_DN, BIND_PW, type Slapd, startSlapd } from "../lib/slapd.ts";

const QID = "4XYZ1234AB";
const DOMAINS = `ou=domains,${BASE}`;
const POLICY_QUERY = "(&(objectClass=exotaMilterPolicy)(associatedDomain=%d))";
const UPPER_TENANT = TENANT.toUpperCase();

/** One entry under ou=domains (LDIF). */
function entry(cn: string, classes: readonly string[], attrs: ReadonlyArray<readonly [string, string]>, domain = cn): string {
  return [
    `dn: cn=${cn},${DOMAINS}`,
    ...classes.map((c) => `objectClass: ${c}`),
    `cn: ${cn}`,
    `associatedDomain: ${domain}`,
    ...attrs.map(([k, v]) => `${k}: ${v}`),
    "",
    "",
  ].join("\n");
}
const POLICY_CLASSES = ["applicationProcess", "domainRelatedObject", "exotaMilterPolicy"];
/** applicationProcess allows l, ou and description (directory strings): anything can be stored there. */
const PLAIN_CLASSES = ["applicationProcess", "domainRelatedObject"];

/** On top of ldap/sample-policies.ldif (tenant.example, relaxed.example). */
const EXTRA_LDIF = [
  // No policy attribute at all: every default.
  entry("defaults.example", POLICY_CLASSES, []),
  entry("nodkim.example", POLICY_CLASSES, [["exotaMilterTenantId", TENANT], ["exotaMilterDkimEnabled", "FALSE"]]),
  entry("upper.example", POLICY_CLASSES, [["exotaMilterTenantId", UPPER_TENANT]]),
  // Two entries for one domain (both returned), and three (the search's size limit of 2 is hit).
  entry("twice-1", POLICY_CLASSES, [["exotaMilterTenantId", TENANT]], "twice.example"),
  entry("twice-2", POLICY_CLASSES, [["exotaMilterTenantId", TENANT]], "twice.example"),
  entry("thrice-1", POLICY_CLASSES, [["exotaMilterTenantId", TENANT]], "thrice.example"),
  entry("thrice-2", POLICY_CLASSES, [["exotaMilterTenantId", TENANT]], "thrice.example"),
  entry("thrice-3", POLICY_CLASSES, [["exotaMilterTenantId", TENANT]], "thrice.example"),
  // Custom attribute names: tenant id in description, dkim_enabled in l, alignment in ou.
  entry("custom-ok.example", PLAIN_CLASSES, [["description", TENANT], ["l", "TRUE"], ["ou", "FALSE"]]),
  entry("custom-nodkim.example", PLAIN_CLASSES, [["description", TENANT], ["l", "FALSE"]]),
  entry("custom-defaults.example", PLAIN_CLASSES, []),
  entry("bad-tenant.example", PLAIN_CLASSES, [["description", "not-a-uuid"]]),
  entry("short-tenant.example", PLAIN_CLASSES, [["description", "1234abcd-18c5-45e8-88de-123456789ab"]]),
  entry("yes-bool.example", PLAIN_CLASSES, [["description", TENANT], ["l", "yes"]]),
  entry("lower-bool.example", PLAIN_CLASSES, [["description", TENANT], ["ou", "true"]]),
  entry("multi.example", PLAIN_CLASSES, [["description", TENANT], ["description", OTHER_TENANT]]),
].join("");

/** Everything but x509: tenant id, DKIM with alignment, our header. */
const CHECKS = { ...ALL_CHECKS_ENV, MILTER_X509_ENABLED: "false" };

function ldapEnv(slapd: Slapd, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...CHECKS,
    MILTER_POLICY_SOURCE: "ldap",
    MILTER_LDAP_SERVER_URI: slapd.url,
    MILTER_LDAP_BINDDN: BIND_DN,
    MILTER_LDAP_BINDPW: BIND_PW,
    MILTER_LDAP_SEARCH_BASE: BASE,
    MILTER_LDAP_QUERY: POLICY_QUERY,
    ...extra,
  };
}

/** A message From alice@`domain`, DKIM-signed (trusted, passing) by `signer` (default: aligned). */
function from(domain: string, f: Facts & { signer?: string } = {}): MessageSpec {
  const { signer, ...facts } = f;
  return message({ from: `Alice <alice@${domain}>`, authResults: [dkimPass(signer ?? domain)], ...facts });
}

/** One message on a fresh connection; returns the end-of-message replies. */
async function exchange(m: TcpMilter, spec: MessageSpec): Promise<Reply[]> {
  const c = await m.connect();
  try {
    const r = await c.sendMessage(spec);
    await c.quit();
    return r;
  } finally {
    c.destroy();
  }
}

const ok = (domain: string, dkim = true, aligned = true, forwarded = false) =>
  accepted(0, addedHeader({ domain, dkim, aligned, x509: false, forwarded }));
const reject = (reason: string) => rejected(QID, reason);
const TEMPFAILED: Reply[] = [{
  type: "replycode",
  code: 450,
  text: `4.7.1 queue_id: ${QID} - Service temporarily not available! Please try again later. - reason: Policy backend problem`,
}];

let slapd: Slapd;
before(async () => {
  slapd = await startSlapd(EXTRA_LDIF);
});
after(async () => {
  await slapd?.destroy();
  removeScratch();
});

describe("LDAP policy lookups (shipped schema)", () => {
  let m: TcpMilter;
  let relaxed: TcpMilter;
  before(async () => {
    m = await startTcpMilter(ldapEnv(slapd));
    // Tenant id not required: shows what the directory says about DKIM alone.
    relaxed = await startTcpMilter(ldapEnv(slapd, { MILTER_TENANT_ID_REQUIRED: "false" }));
  });
  after(async () => {
    await m?.proc.stop();
    await relaxed?.proc.stop();
  });

  it("logs the LDAP connection at start-up", () => {
    assert.match(m.proc.log(), new RegExp(`LDAP connected to ${slapd.url.replaceAll(".", "\\.")}`));
  });

  it("policy found: accepted with DKIM aligned and the tenant id of the entry", async () => {
    assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
  });

  it("the entry's tenant id is enforced", async () => {
    assert.deepEqual(await exchange(m, from("tenant.example", { tenantIds: [OTHER_TENANT] })), reject("No policy match for tenant-id"));
  });

  it("the entry's alignment TRUE is enforced, FALSE waives it", async () => {
    assert.deepEqual(await exchange(m, from("tenant.example", { signer: "esp.example" })), reject("DKIM alignment required!"));
    assert.deepEqual(
      await exchange(m, from("relaxed.example", { signer: "esp.example", tenantIds: [OTHER_TENANT] })),
      ok("relaxed.example", true, false),
    );
  });

  it("the entry's dkim_enabled FALSE: accepted without any DKIM result", async () => {
    assert.deepEqual(await exchange(m, from("nodkim.example", { authResults: [] })), ok("nodkim.example", false, false));
  });

  it("an upper-case tenant id in the directory matches the lower-case header", async () => {
    assert.deepEqual(await exchange(m, from("upper.example")), ok("upper.example"));
  });

  it("not found -> reject", async () => {
    assert.deepEqual(await exchange(m, from("unknown.example")), reject("No policy for 5322.from_domain unknown.example"));
  });

  it("not found, but the Resent-From domain is -> accepted as forwarded", async () => {
    assert.deepEqual(
      await exchange(m, from("unknown.example", { resentFrom: "Forwarder <fwd@tenant.example>" })),
      ok("unknown.example", true, true, true),
    );
  });

  it("not found, and neither is the Resent-From domain -> reject", async () => {
    assert.deepEqual(
      await exchange(m, from("unknown.example", { resentFrom: "fwd@other-unknown.example" })),
      reject("No policy for 5322.resent_from_domain other-unknown.example"),
    );
  });

  it("two entries for a domain -> invalid policy", async () => {
    assert.deepEqual(await exchange(m, from("twice.example")), reject("Invalid policy for 5322.from_domain twice.example"));
  });

  it("three entries for a domain (the search's size limit is hit) -> invalid policy", async () => {
    assert.deepEqual(await exchange(m, from("thrice.example")), reject("Invalid policy for 5322.from_domain thrice.example"));
  });

  it("an entry without policy attributes takes the defaults: tenant id empty, DKIM and alignment on", async () => {
    // Empty tenant id: a message's tenant id never matches it.
    assert.deepEqual(await exchange(m, from("defaults.example")), reject("No policy match for tenant-id"));
    // Without the tenant id check: valid, and DKIM with alignment is required.
    assert.deepEqual(await exchange(relaxed, from("defaults.example")), ok("defaults.example"));
    assert.deepEqual(
      await exchange(relaxed, from("defaults.example", { authResults: [] })),
      reject("No valid DKIM authentication results found"),
    );
    assert.deepEqual(await exchange(relaxed, from("defaults.example", { signer: "esp.example" })), reject("DKIM alignment required!"));
  });

  it("a cached answer gives the same verdict (several messages on one connection)", async () => {
    const c = await m.connect();
    try {
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await c.sendMessage(from("tenant.example", { session: i === 0 })), ok("tenant.example"));
        assert.deepEqual(await c.sendMessage(from("unknown.example", { session: false })), reject("No policy for 5322.from_domain unknown.example"));
      }
      await c.quit();
    } finally {
      c.destroy();
    }
  });
});

describe("LDAP custom attribute names (directory strings of core schema)", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter(ldapEnv(slapd, {
      MILTER_LDAP_QUERY: "(&(objectClass=applicationProcess)(associatedDomain=%d))",
      MILTER_LDAP_TENANT_ID_ATTR: "description",
      MILTER_LDAP_DKIM_ENABLED_ATTR: "l",
      MILTER_LDAP_DKIM_ALIGNMENT_REQUIRED_ATTR: "ou",
    }));
  });
  after(async () => {
    await m?.proc.stop();
  });

  it("well-formed values are read from the configured attributes", async () => {
    // ou FALSE waives alignment; description holds the tenant id.
    assert.deepEqual(await exchange(m, from("custom-ok.example", { signer: "esp.example" })), ok("custom-ok.example", true, false));
    assert.deepEqual(await exchange(m, from("custom-ok.example", { tenantIds: [OTHER_TENANT] })), reject("No policy match for tenant-id"));
    // l FALSE: no DKIM needed.
    assert.deepEqual(await exchange(m, from("custom-nodkim.example", { authResults: [] })), ok("custom-nodkim.example", false, false));
  });

  it("the shipped attributes are not read any more", async () => {
    // tenant.example has exotaMilterTenantId but no description: tenant id empty.
    assert.deepEqual(await exchange(m, from("tenant.example")), reject("No policy match for tenant-id"));
  });

  it("missing custom attributes take the defaults", async () => {
    assert.deepEqual(await exchange(m, from("custom-defaults.example", { signer: "esp.example" })), reject("No policy match for tenant-id"));
  });

  for (
    const [domain, what] of [
      ["bad-tenant.example", "a tenant id that is no UUID"],
      ["short-tenant.example", "a tenant id one digit short"],
      ["yes-bool.example", "a boolean 'yes'"],
      ["lower-bool.example", "a boolean 'true' (not TRUE)"],
      ["multi.example", "two tenant ids"],
    ] as const
  ) {
    it(`${what} -> invalid policy -> reject`, async () => {
      assert.deepEqual(await exchange(m, from(domain)), reject(`Invalid policy for 5322.from_domain ${domain}`));
    });
  }
});

describe("LDAP filter metacharacters in the From domain", () => {
  let m: TcpMilter;
  let or: TcpMilter;
  before(async () => {
    m = await startTcpMilter(ldapEnv(slapd), { metrics: true });
    // Were %d put in unescaped, `x)(cn=tenant.example` would match tenant.example's entry here.
    or = await startTcpMilter(ldapEnv(slapd, { MILTER_LDAP_QUERY: "(|(associatedDomain=%d)(cn=nonexistent))" }), { metrics: true });
  });
  after(async () => {
    await m?.proc.stop();
    await or?.proc.stop();
  });

  it("the OR query finds a policy", async () => {
    assert.deepEqual(await exchange(or, from("tenant.example")), ok("tenant.example"));
    assert.deepEqual(await exchange(or, from("unknown.example")), reject("No policy for 5322.from_domain unknown.example"));
  });

  // Each is rejected by the address parser before any lookup: a From domain
  // must be a host name (letters, digits, hyphens, dots).
  const hostile = [
    "alice@*",
    "alice@*.example",
    "<alice@tenant.example)(cn=*>",
    "<alice@x)(|(associatedDomain=*>",
    "alice@tenant.example\\2a",
    "alice@tenant.example\\29(cn=*",
    "alice@\"*\"",
    "alice@tenant.example*",
    "alice@ü*.example",
    "alice@tenant.example%00",
    "alice@tenant.example$'",
    "alice@[*]",
  ];
  /** LDAP searches the milter has sent. */
  const searches = async (milter: TcpMilter) => (await milter.scrape()).get("exota_milter_ldap_queries_total")!;

  for (const fromValue of hostile) {
    it(`From ${fromValue}: rejected as an invalid From, never accepted, never looked up`, async () => {
      for (const milter of [m, or]) {
        const before = await searches(milter);
        const replies = await exchange(milter, message({ from: fromValue, authResults: [dkimPass("tenant.example")] }));
        assert.deepEqual(replies, reject("Invalid 5322.from header"));
        assert.equal(await searches(milter), before, "no LDAP search");
      }
    });
  }

  it("a hostile Resent-From is never looked up: rejected as invalid", async () => {
    for (const [milter, domain] of [[m, "resent-m.example"], [or, "resent-or.example"]] as const) {
      const before = await searches(milter);
      // A From domain of its own: its search is not answered from the cache.
      const replies = await exchange(milter, from(domain, { resentFrom: "fwd@*" }));
      assert.deepEqual(replies, reject("Invalid 5322.resent-from header"));
      assert.equal(await searches(milter) - before, 1, "one LDAP search: the From domain's, not the Resent-From's");
    }
  });

  it("the backend escapes %d: no domain value changes the filter (direct lookups)", async () => {
    for (const query of [POLICY_QUERY, "(|(associatedDomain=%d)(cn=nonexistent))"]) {
      const b = new LdapPolicyBackend({
        uris: [slapd.url],
        bindDn: BIND_DN,
        bindPassword: BIND_PW,
        searchBase: BASE,
        query,
        receiveTimeoutMs: 2000,
        connectTimeoutMs: 2000,
        startTls: false,
        caFile: "",
        attributes: {
          tenantId: "exotaMilterTenantId",
          dkimEnabled: "exotaMilterDkimEnabled",
          dkimAlignmentRequired: "exotaMilterDkimAlignmentRequired",
        },
        cacheTtlMs: 0,
      }, getLogger(["exota-test", "ldap"]));
      try {
        await b.start();
        assert.deepEqual(await b.lookup("tenant.example"), { kind: "found", policy: { tenantId: TENANT, dkimEnabled: true, dkimAlignmentRequired: true } }, query);
        for (
          const d of [
            "*", // unescaped: every entry (several -> invalid)
            "tenant.*",
            "x)(cn=tenant.example", // unescaped with the OR query: tenant.example's entry
            "x)(associatedDomain=*",
            "tenant.example)(|(cn=*",
            "\\2a",
            // Replacement patterns of String.replace: must stay literal text.
            "$'",
            "$`",
            "$&",
            "x$'$`tenant.example",
          ]
        ) {
          assert.deepEqual(await b.lookup(d), { kind: "not_found" }, `${query} with %d = ${JSON.stringify(d)}`);
        }
        // Still connected and answering: no lookup above broke the connection.
        assert.equal(b.stats.errors, 0);
        assert.deepEqual(await b.lookup("twice.example"), { kind: "invalid", reason: "2 directory entries for twice.example" });
      } finally {
        await b.close();
      }
    }
  });
});

describe("LDAP start-up", () => {
  let port: number;
  before(async () => {
    port = await freePort();
  });
  const env = (extra: Record<string, string>) => ({ ...ldapEnv(slapd, extra), MILTER_SOCKET: `inet:${port}@127.0.0.1` });

  it("a wrong bind password stops start-up with an error naming LDAP and invalid credentials", async () => {
    const r = await runMilter([], env({ MILTER_LDAP_BINDPW: "wrong-secret" }));
    assert.notEqual(r.code, 0, r.output);
    assert.match(r.output, /LDAP/);
    assert.match(r.output, /invalid credentials/i);
    assert.doesNotMatch(r.output, / listening on /);
  });

  it("a search base that does not exist stops start-up", async () => {
    const r = await runMilter([], env({ MILTER_LDAP_SEARCH_BASE: `ou=nowhere,${BASE}` }));
    assert.notEqual(r.code, 0, r.output);
    assert.match(r.output, /LDAP/);
    assert.match(r.output, /no such object/i);
    assert.doesNotMatch(r.output, / listening on /);
  });

  it("MILTER_LDAP_BINDPW_FILE: the password from a file, trailing newline dropped", async () => {
    const file = join(scratchDir(), "bindpw");
    writeFileSync(file, `${BIND_PW}\n`);
    const { MILTER_LDAP_BINDPW: _, ...rest } = ldapEnv(slapd, { MILTER_LDAP_BINDPW_FILE: file });
    const m = await startTcpMilter(rest);
    try {
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
    } finally {
      await m.proc.stop();
    }
    // The same file with a wrong password: start-up fails.
    writeFileSync(file, "wrong-secret\n");
    const r = await runMilter([], { ...rest, MILTER_SOCKET: `inet:${port}@127.0.0.1` });
    assert.notEqual(r.code, 0, r.output);
    assert.match(r.output, /invalid credentials/i);
  });

  it("fail-over: a closed port first, then slapd", async () => {
    const closed = await freePort();
    const m = await startTcpMilter(ldapEnv(slapd, { MILTER_LDAP_SERVER_URI: `ldap://127.0.0.1:${closed} ${slapd.url}` }));
    try {
      assert.match(m.proc.log(), new RegExp(`LDAP connected to ${slapd.url.replaceAll(".", "\\.")}`));
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      assert.deepEqual(await exchange(m, from("unknown.example")), reject("No policy for 5322.from_domain unknown.example"));
    } finally {
      await m.proc.stop();
    }
  });
});

describe("LDAP server outages", () => {
  // A slapd of its own: stopping it must not disturb the other tests.
  let s: Slapd;
  before(async () => {
    s = await startSlapd();
  });
  after(async () => {
    await s?.destroy();
  });

  it("slapd stopped -> tempfail; started again -> the same process accepts again, bound", async () => {
    const m = await startTcpMilter(ldapEnv(s, { MILTER_LDAP_CACHE_TTL: "0" }));
    try {
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      await s.stop();
      assert.deepEqual(await exchange(m, from("tenant.example")), TEMPFAILED);
      assert.deepEqual(await exchange(m, from("unknown.example")), TEMPFAILED, "not found is no answer while down");
      await s.start();
      // Back-off: poll. Until the backend is back every reply is a tempfail;
      // a reject here would mean an unauthenticated search (anonymous sees nothing).
      const until = Date.now() + 15_000;
      let last: Reply[] = [];
      while (Date.now() < until) {
        last = await exchange(m, from("tenant.example"));
        if (last.at(-1)?.type === "continue") break;
        assert.deepEqual(last, TEMPFAILED);
        await sleep(500);
      }
      assert.deepEqual(last, ok("tenant.example"), "accepted again after slapd came back");
      assert.deepEqual(await exchange(m, from("unknown.example")), reject("No policy for 5322.from_domain unknown.example"));
    } finally {
      await m.proc.stop();
      await s.start();
    }
  });

  it("slapd restarted between two messages (connection closed while idle) -> the next message is searched bound", async () => {
    const m = await startTcpMilter(ldapEnv(s, { MILTER_LDAP_CACHE_TTL: "0" }));
    try {
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      await s.stop();
      await s.start();
      // An unauthenticated reconnect would see no entry (the ACL gives anonymous nothing): "No policy".
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      assert.deepEqual(await exchange(m, from("relaxed.example", { tenantIds: [OTHER_TENANT] })), ok("relaxed.example"));
    } finally {
      await m.proc.stop();
      await s.start();
    }
  });

  it("slapd frozen, thawed while the reconnect back-off waits: the next message is decided at once, not tempfailed", { timeout: 30_000 }, async () => {
    const m = await startTcpMilter(
      ldapEnv(s, { MILTER_LDAP_CACHE_TTL: "0", MILTER_LDAP_RECEIVE_TIMEOUT: "1", MILTER_LDAP_CONNECT_TIMEOUT: "1", LOG_LEVEL: "debug" }),
    );
    try {
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      await s.freeze();
      const frozen = m.proc.log().length;
      // The search times out; the backend reconnects in the background with back-off.
      assert.deepEqual(await exchange(m, from("tenant.example")), TEMPFAILED);
      // While down, a message waits at most for one connection attempt (connect timeout 1 s).
      let t = Date.now();
      assert.deepEqual(await exchange(m, from("tenant.example")), TEMPFAILED);
      assert.ok(Date.now() - t < 2500, `tempfailed after ${Date.now() - t} ms`);
      // Two background attempts have failed: the next waits 2 s of back-off, and none is in flight.
      await m.proc.waitForLog(/LDAP \S+ still failing[^]*LDAP \S+ still failing/, 10_000, frozen);
      s.thaw();
      await sleep(300);
      const thawed = m.proc.log().length;
      t = Date.now();
      // Three messages at once, each for another domain (one search each): one connection attempt serves them all.
      const replies = await Promise.all([
        exchange(m, from("tenant.example")),
        exchange(m, from("relaxed.example", { tenantIds: [OTHER_TENANT] })),
        exchange(m, from("unknown.example")),
      ]);
      assert.deepEqual(
        replies,
        [ok("tenant.example"), ok("relaxed.example"), reject("No policy for 5322.from_domain unknown.example")],
        "decided normally right after slapd answers again",
      );
      assert.ok(Date.now() - t < 1500, `decided after ${Date.now() - t} ms`);
      // Info lines leave up to 50 ms after their event, in order: once the three
      // decisions are logged, so is every connection made before them.
      await m.proc.waitForLog(/decision conn=[^]*decision conn=[^]*decision conn=/, 2000, thawed);
      assert.equal(m.proc.log().slice(thawed).match(/LDAP connected/g)?.length, 1, m.proc.log().slice(thawed));
    } finally {
      s.thaw();
      await m.proc.stop();
    }
  });

  it("cache: a found answer is reused while slapd is down, never after its lifetime", async () => {
    const m = await startTcpMilter(ldapEnv(s, { MILTER_LDAP_CACHE_TTL: "2" }));
    try {
      const t0 = Date.now();
      assert.deepEqual(await exchange(m, from("tenant.example")), ok("tenant.example"));
      const t1 = Date.now();
      await s.stop();
      const replies = await exchange(m, from("tenant.example"));
      assert.ok(Date.now() - t0 < 1900, `timing: slapd took too long to stop (${Date.now() - t0} ms)`);
      assert.deepEqual(replies, ok("tenant.example"), "cached answer while slapd is down");
      // Not cached: no answer.
      assert.deepEqual(await exchange(m, from("relaxed.example", { tenantIds: [OTHER_TENANT] })), TEMPFAILED);
      // The lifetime passes with slapd still down: the stale answer is not served.
      await sleep(Math.max(0, t1 + 2000 + 150 - Date.now()));
      assert.deepEqual(await exchange(m, from("tenant.example")), TEMPFAILED, "stale cache entry served");
      assert.deepEqual(await exchange(m, from("tenant.example")), TEMPFAILED);
    } finally {
      await m.proc.stop();
      await s.start();
    }
  });
});

describe("LDAP server that accepts connections but never answers", () => {
  let server: Server;
  let port: number;
  const sockets = new Set<Socket>();
  let connections = 0;
  before(async () => {
    server = createServer((sock) => {
      connections++;
      sockets.add(sock);
      sock.on("data", () => {});
      sock.on("error", () => {});
      sock.on("close", () => sockets.delete(sock));
    });
    await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
    port = (server.address() as { port: number }).port;
  });
  after(async () => {
    for (const sock of sockets) sock.destroy();
    await new Promise((res) => server.close(res));
  });

  const silentEnv = (extra: Record<string, string> = {}) =>
    ldapEnv(slapd, {
      MILTER_LDAP_SERVER_URI: `ldap://127.0.0.1:${port}`,
      MILTER_LDAP_RECEIVE_TIMEOUT: "1",
      MILTER_LDAP_CONNECT_TIMEOUT: "1",
      MILTER_LDAP_CACHE_TTL: "0",
      ...extra,
    });

  async function timedTempfails(m: TcpMilter, count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const t = Date.now();
      const replies = await exchange(m, from("tenant.example"));
      const ms = Date.now() - t;
      assert.deepEqual(replies, TEMPFAILED, `message ${i}`);
      assert.ok(ms < 3000, `message ${i}: end-of-message reply after ${ms} ms`);
    }
  }

  // Each message waits for one connection attempt, up to the connect timeout (1 s).
  it("with a bind DN: starts, logs LDAP unreachable, tempfails within a few seconds", { timeout: 20_000 }, async () => {
    const m = await startTcpMilter(silentEnv());
    try {
      assert.match(m.proc.log(), /LDAP server unreachable at start-up.*timed out/);
      assert.ok(connections > 0, "the milter connected to the silent server");
      await timedTempfails(m, 3);
      // While a reconnect (bind) waits for its timeout.
      await sleep(700);
      await timedTempfails(m, 2);
    } finally {
      await m.proc.stop();
    }
  });

  it("anonymous (no bind): the search itself times out -> tempfail within a few seconds", { timeout: 20_000 }, async () => {
    const m = await startTcpMilter(silentEnv({ MILTER_LDAP_BINDDN: "", MILTER_LDAP_BINDPW: "" }));
    try {
      assert.match(m.proc.log(), /LDAP server unreachable at start-up.*timed out/);
      // Nothing was answered, so nothing may claim a connection.
      assert.doesNotMatch(m.proc.log(), /LDAP connected/);
      await sleep(700);
      await timedTempfails(m, 3);
    } finally {
      await m.proc.stop();
    }
  });
});
