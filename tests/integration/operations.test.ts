/**
 * Operating the compiled binary: policy reload (SIGHUP and file change, also
 * while mail flows), the `check` and `explain` subcommands, report-only mode,
 * graceful stop, log formats and the Prometheus metrics.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, renameSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import {
  accepted,
  addedHeader,
  dkimPass,
  EXO_CLIENT,
  EXOTA,
  type Facts,
  message,
  OTHER_TENANT,
  OUR_AUTHSERVID,
  POLICY,
  policyFile,
  rejected,
  removeScratch,
  scratchDir,
  startTcpMilter,
  type TcpMilter,
  TENANT,
  TRUSTED_AUTHSERVID,
  TRUSTED_CN,
  ALL_CHECKS_ENV,
} from "../lib/fixtures.ts";
import { MilterClient, POSTFIX_OFFER } from "../lib/milter-client.ts";
import { Proto } from "../../src/milter/protocol.ts";
import { freePort, type MilterProcess, runMilter, RUNTIME, sleep, startMilter } from "../lib/milter-process.ts";
import { httpGet, series } from "../lib/metrics.ts";
import type { Reply } from "../../src/milter/types.ts";

after(removeScratch);

// ---------------------------------------------------------------- helpers

/** The exit code once the process has exited (null when killed by a signal); sends nothing. */
function exitCode(p: MilterProcess): Promise<number | null> {
  const c = p.child;
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve(c.exitCode);
  return new Promise((res) => c.once("exit", (code) => res(code)));
}

/** Rejects when the process has not exited within `ms`. */
async function exitWithin(p: MilterProcess, ms: number): Promise<number | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      exitCode(p),
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new Error(`the milter did not exit within ${ms} ms; output:\n${p.log()}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Replaces a file atomically, as an editor or config management does: write elsewhere, rename over. */
function replaceAtomically(path: string, content: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, content);
  renameSync(tmp, path);
}

/** JSON records of a LOG_FORMAT=json log; every line must be one. */
function jsonLines(log: string): Array<Record<string, unknown>> {
  return log.split("\n").filter((l) => l !== "").map((l) => {
    try {
      return JSON.parse(l) as Record<string, unknown>;
    } catch {
      throw new Error(`not a JSON line: ${JSON.stringify(l)}`);
    }
  });
}

const CONTINUE: Reply[] = [{ type: "continue" }];
const EOM = { type: "eom", chunk: new Uint8Array(0) } as const;

/** A message from `domain` with tenant id TENANT. */
const from = (domain: string, f: Facts = {}) => message({ from: `Alice <alice@${domain}>`, ...f });

// ---------------------------------------------------------------- policy reload

/** Old policy: tenant.example belongs to TENANT. */
const POLICY_OLD = { "tenant.example": { tenant_id: TENANT } };
/** New policy: tenant.example moved to another tenant, new.example belongs to TENANT. */
const POLICY_NEW = { "tenant.example": { tenant_id: OTHER_TENANT }, "new.example": { tenant_id: TENANT } };
/**
 * Invalid at line 6. Had it been applied partly, evil.example (line 2)
 * would be accepted: a message accepted by no valid policy.
 */
const POLICY_INVALID = `{
  "evil.example": { "tenant_id": "${TENANT}" },
  "tenant.example": { "tenant_id": "${TENANT}" },
  "broken.example": {
    "tenant_id": "${TENANT}",
    "dkim_enabled": "yes"
  }
}
`;
const invalidError = (path: string) =>
  `${path}:6: domain "broken.example", key "dkim_enabled": must be true or false (a JSON boolean, not a string), got "yes"`;

/** Tenant id required; no DKIM, no x509, no added header: verdicts depend on the policy alone. */
const RELOAD_ENV = { MILTER_TENANT_ID_REQUIRED: "true", LOG_FORMAT: "json" };

const DOMAINS = ["tenant.example", "new.example", "evil.example", "broken.example"] as const;
type Domain = typeof DOMAINS[number];

function underOld(domain: Domain, qid: string): Reply[] {
  return domain === "tenant.example" ? CONTINUE : rejected(qid, `No policy for 5322.from_domain ${domain}`);
}
function underNew(domain: Domain, qid: string): Reply[] {
  if (domain === "new.example") return CONTINUE;
  if (domain === "tenant.example") return rejected(qid, "No policy match for tenant-id");
  return rejected(qid, `No policy for 5322.from_domain ${domain}`);
}
const isDeepEqual = (a: unknown, b: unknown) => {
  try {
    assert.deepEqual(a, b);
    return true;
  } catch {
    return false;
  }
};

describe("policy reload", () => {
  const procs: MilterProcess[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
  });
  const start = async (env: Record<string, string>, opts: { metrics?: boolean } = {}) => {
    const m = await startTcpMilter(env, opts);
    procs.push(m.proc);
    return m;
  };
  /** One message on a fresh connection, its EOM replies. */
  const decide = async (m: TcpMilter, domain: Domain, qid: string) => {
    const c = await m.connect();
    try {
      const r = await c.sendMessage(from(domain, { queueId: qid }));
      await c.quit();
      return r;
    } finally {
      c.destroy();
    }
  };

  it("while tenant ids are not required, start-up and each reload warn once per policy with dkim_enabled false", async () => {
    const path = policyFile(JSON.stringify({ "open.example": { dkim_enabled: false }, "signed.example": {} }));
    const m = await start({ MILTER_POLICY_FILE: path, MILTER_POLICY_WATCH: "false", LOG_FORMAT: "json" });
    const warnings = (from: number) =>
      jsonLines(m.proc.log().slice(from)).filter((l) => /has dkim_enabled false/.test(String(l.message))).map((l) => [l.level, l.domain]);
    assert.deepEqual(warnings(0), [["warning", "open.example"]]);
    // The text itself is the message, not a quoted value in it.
    assert.match(m.proc.log(), /"message":"policy of open\.example has dkim_enabled false while/);
    const mark = m.proc.log().length;
    replaceAtomically(path, JSON.stringify({ "open.example": { dkim_enabled: false }, "also-open.example": { dkim_enabled: false } }));
    m.proc.child.kill("SIGHUP");
    await m.proc.waitForLog(/policy of also-open\.example has dkim_enabled false/, 5000, mark);
    assert.match(m.proc.log().slice(mark), /"message":"policy reloaded from [^"]*: 2 domain\(s\)"/);
    assert.deepEqual(warnings(mark), [["warning", "open.example"], ["warning", "also-open.example"]]);
    // A big file: the first 100 are named, then how many more.
    const many = Object.fromEntries(Array.from({ length: 102 }, (_, i) => [`open${i}.example`, { dkim_enabled: false }]));
    const mark2 = m.proc.log().length;
    replaceAtomically(path, JSON.stringify(many));
    m.proc.child.kill("SIGHUP");
    await m.proc.waitForLog(/2 more policies with dkim_enabled false/, 5000, mark2);
    assert.deepEqual(warnings(mark2), Array.from({ length: 100 }, (_, i) => ["warning", `open${i}.example`]));
    const strict = await start({ MILTER_POLICY_FILE: path, MILTER_TENANT_ID_REQUIRED: "true", LOG_FORMAT: "json" });
    assert.doesNotMatch(strict.proc.log(), /dkim_enabled false/);
  });

  it("a file replaced every 100 ms without pause still reloads 3 s after the first change (the debounce's maximum wait)", { timeout: 30_000 }, async () => {
    const path = policyFile(POLICY_OLD);
    const m = await start({ MILTER_POLICY_FILE: path, LOG_FORMAT: "text" });
    // The watch begins 200 ms after start-up.
    await sleep(400);
    const mark = m.proc.log().length;
    const t0 = Date.now();
    let stamp: string | undefined;
    for (let i = 0; Date.now() - t0 < 6000 && stamp === undefined; i++) {
      replaceAtomically(path, JSON.stringify(i % 2 === 0 ? POLICY_NEW : POLICY_OLD));
      await sleep(100);
      stamp = /^(\S+) INFO exota-milter: policy reloaded from/m.exec(m.proc.log().slice(mark))?.[1];
    }
    assert.ok(stamp !== undefined, "no reload in 6 s of constant replacements");
    // By the log line's own time stamp, not by this loop's 100 ms steps; what
    // is past 3 s is the timer's lateness and the reading of the file.
    const after = Date.parse(stamp) - t0;
    assert.ok(after >= 3000 && after < 3300, `reloaded ${after} ms after the first replacement`);
  });

  it("SIGHUP reloads (the file alone does not with MILTER_POLICY_WATCH=false); an invalid or missing file is refused, the old policy stays", async () => {
    const path = policyFile(POLICY_OLD);
    const m = await start({ ...RELOAD_ENV, MILTER_POLICY_FILE: path, MILTER_POLICY_WATCH: "false" }, { metrics: true });
    assert.deepEqual(await decide(m, "tenant.example", "H1"), CONTINUE);

    // Replaced on disk, no signal: nothing changes (the watch would have fired after 300 ms).
    replaceAtomically(path, JSON.stringify(POLICY_NEW));
    await sleep(800);
    assert.deepEqual(await decide(m, "tenant.example", "H2"), CONTINUE);
    assert.deepEqual(await decide(m, "new.example", "H3"), underOld("new.example", "H3"));
    assert.doesNotMatch(m.proc.log(), /policy reloaded/);

    let mark = m.proc.log().length;
    m.proc.child.kill("SIGHUP");
    await m.proc.waitForLog(/"message":"policy reloaded from [^"]*: 2 domain\(s\)"/, 5000, mark);
    assert.deepEqual(await decide(m, "tenant.example", "H4"), rejected("H4", "No policy match for tenant-id"));
    assert.deepEqual(await decide(m, "new.example", "H5"), CONTINUE);

    mark = m.proc.log().length;
    replaceAtomically(path, POLICY_INVALID);
    m.proc.child.kill("SIGHUP");
    await m.proc.waitForLog(/"message":"policy reload refused/, 5000, mark);
    const refused = jsonLines(m.proc.log().slice(mark)).filter((l) => String(l.message).startsWith("policy reload refused"));
    assert.equal(refused.length, 1);
    assert.equal(refused[0]!.level, "error");
    assert.equal(refused[0]!.error, invalidError(path));
    assert.deepEqual(await decide(m, "new.example", "H6"), CONTINUE, "the last valid policy stays in force");
    assert.deepEqual(await decide(m, "evil.example", "H7"), underNew("evil.example", "H7"));
    assert.deepEqual(await decide(m, "tenant.example", "H8"), underNew("tenant.example", "H8"));

    mark = m.proc.log().length;
    rmSync(path);
    m.proc.child.kill("SIGHUP");
    await m.proc.waitForLog(/"message":"policy reload refused/, 5000, mark);
    assert.match(m.proc.log().slice(mark), new RegExp(`"error":"cannot read policy file ${path.replace(/[.\\]/g, "\\$&")}: ENOENT`));
    assert.deepEqual(await decide(m, "new.example", "H9"), CONTINUE);

    const s = await m.scrape();
    assert.deepEqual(series(s, "exota_milter_policy_reloads_total"), {
      'exota_milter_policy_reloads_total{result="ok"}': 1,
      'exota_milter_policy_reloads_total{result="failed"}': 2,
    });
    assert.equal(s.get("exota_milter_policy_entries"), 2);
  });

  it("a Kubernetes ConfigMap update (the ..data symlink swapped) reloads", async () => {
    // The layout kubelet writes: policy.json -> ..data/policy.json, ..data -> ..<timestamp>/
    const dir = join(scratchDir(), "configmap");
    mkdirSync(join(dir, "..2026_11_28_a"), { recursive: true });
    writeFileSync(join(dir, "..2026_11_28_a", "policy.json"), JSON.stringify(POLICY_OLD));
    symlinkSync("..2026_11_28_a", join(dir, "..data"));
    symlinkSync("..data/policy.json", join(dir, "policy.json"));
    const m = await start({ ...RELOAD_ENV, MILTER_POLICY_FILE: join(dir, "policy.json") });
    assert.deepEqual(await decide(m, "tenant.example", "K1"), CONTINUE);
    await sleep(400); // the watch starts 200 ms after the listeners

    const mark = m.proc.log().length;
    mkdirSync(join(dir, "..2026_11_28_b"));
    writeFileSync(join(dir, "..2026_11_28_b", "policy.json"), JSON.stringify(POLICY_NEW));
    symlinkSync("..2026_11_28_b", join(dir, "..data_tmp"));
    renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
    rmSync(join(dir, "..2026_11_28_a"), { recursive: true });
    await m.proc.waitForLog(/"message":"policy reloaded from [^"]*: 2 domain\(s\)"/, 5000, mark);
    assert.deepEqual(await decide(m, "new.example", "K2"), CONTINUE);
    assert.deepEqual(await decide(m, "tenant.example", "K3"), rejected("K3", "No policy match for tenant-id"));
  });

  it("a file change reloads (atomic replace): invalid then valid, while mail flows on several connections", async () => {
    // A directory of its own: the watch sees only this file's changes.
    const dir = join(scratchDir(), "etc");
    mkdirSync(dir);
    const path = join(dir, "policy.json");
    writeFileSync(path, JSON.stringify(POLICY_OLD, null, 2));
    const m = await start({ ...RELOAD_ENV, MILTER_POLICY_FILE: path }, { metrics: true });

    interface Result {
      readonly conn: number;
      readonly seq: number;
      readonly domain: Domain;
      readonly qid: string;
      readonly sentAt: number;
      readonly gotAt: number;
      readonly replies: Reply[];
    }
    const results: Result[] = [];
    let running = true;
    const sender = async (conn: number) => {
      const c = await m.connect();
      try {
        let seq = 0;
        while (running) {
          const domain = DOMAINS[(seq + conn) % DOMAINS.length]!;
          const qid = `C${conn}Q${seq}`;
          const sentAt = performance.now();
          const replies = await c.sendMessage(from(domain, { queueId: qid, session: seq === 0 }));
          results.push({ conn, seq, domain, qid, sentAt, gotAt: performance.now(), replies });
          seq++;
        }
        await c.quit();
      } finally {
        c.destroy();
      }
    };
    const senders = [1, 2, 3].map(sender);
    // Rejects as soon as a sender fails (a lost reply, a closed connection).
    const failed = Promise.race(senders.map((s) => s.then(() => new Promise<never>(() => {}))));
    failed.catch(() => {});

    const phase = async <T>(p: Promise<T>) => await Promise.race([p, failed]);
    let invalidSeen = 0;
    let validWritten = 0;
    let validSeen = 0;
    try {
      await phase(sleep(300));

      let mark = m.proc.log().length;
      replaceAtomically(path, POLICY_INVALID);
      await phase(m.proc.waitForLog(/"message":"policy reload refused/, 5000, mark));
      invalidSeen = performance.now();
      const refused = jsonLines(m.proc.log().slice(mark)).filter((l) => String(l.message).startsWith("policy reload refused"));
      assert.equal(refused.length, 1);
      assert.equal(refused[0]!.error, invalidError(path), "the log line names file, line, domain, key and reason");

      await phase(sleep(600));
      validWritten = performance.now();
      mark = m.proc.log().length;
      replaceAtomically(path, JSON.stringify(POLICY_NEW, null, 2));
      await phase(m.proc.waitForLog(/"message":"policy reloaded from [^"]*: 2 domain\(s\)"/, 5000, mark));
      validSeen = performance.now();
      await phase(sleep(300));
      running = false;
      await Promise.all(senders);
    } finally {
      running = false;
      await Promise.allSettled(senders);
    }
    // Let a late (spurious) reload show up before counting.
    await sleep(500);

    // No message lost: every EOM got its reply (a missing one throws in sendMessage), and the milter decided each once.
    const decisions = jsonLines(m.proc.log()).filter((l) => l.message === "decision");
    assert.equal(decisions.length, results.length);
    assert.deepEqual(new Set(decisions.map((d) => d.qid)), new Set(results.map((r) => r.qid)));

    // Every verdict is that of the old or of the new valid policy; never of the invalid one.
    let oldOnly = 0;
    let newOnly = 0;
    let oldDuringInvalid = 0;
    for (const conn of [1, 2, 3]) {
      let sawNew = false;
      for (const r of results.filter((x) => x.conn === conn).sort((a, b) => a.seq - b.seq)) {
        const o = isDeepEqual(r.replies, underOld(r.domain, r.qid));
        const n = isDeepEqual(r.replies, underNew(r.domain, r.qid));
        assert.ok(o || n, `${r.qid} (${r.domain}) decided by no valid policy: ${JSON.stringify(r.replies)}`);
        if (r.gotAt < validWritten) assert.ok(o, `${r.qid} (${r.domain}) not decided by the old policy before the new one was written`);
        if (r.sentAt > validSeen) assert.ok(n, `${r.qid} (${r.domain}) not decided by the new policy after its reload`);
        if (o && !n) {
          assert.ok(!sawNew, `${r.qid}: the old policy again after the new one on connection ${conn}`);
          oldOnly++;
          if (r.sentAt > invalidSeen && r.gotAt < validWritten) oldDuringInvalid++;
        }
        if (n && !o) {
          sawNew = true;
          newOnly++;
        }
      }
    }
    assert.ok(oldDuringInvalid > 0, "messages were decided while the invalid policy was on disk");
    assert.ok(oldOnly > 0 && newOnly > 0, `both policies decided messages (old ${oldOnly}, new ${newOnly})`);

    const s = await m.scrape();
    assert.deepEqual(series(s, "exota_milter_policy_reloads_total"), {
      'exota_milter_policy_reloads_total{result="ok"}': 1,
      'exota_milter_policy_reloads_total{result="failed"}': 1,
    });
    assert.equal(s.get("exota_milter_policy_entries"), 2);
    const total = Object.values(series(s, "exota_milter_messages_total")).reduce((a, b) => a + b, 0);
    assert.equal(total, results.length);
    assert.equal(jsonLines(m.proc.log()).filter((l) => /^policy reload/.test(String(l.message))).length, 2);
  });
});

// ---------------------------------------------------------------- check

describe("check", () => {
  it("tries what run does short of serving, and fails the same way: port in use, host name that does not resolve, socket directory missing, metrics port in use", { timeout: 30_000 }, async () => {
    const busy = createServer();
    const port = await new Promise<number>((res) => busy.listen(0, "127.0.0.1", () => res((busy.address() as { port: number }).port)));
    try {
      const free = await freePort();
      const cases: Array<[Record<string, string>, RegExp]> = [
        [{ MILTER_SOCKET: `inet:${port}@127.0.0.1` }, new RegExp(`cannot listen: 127\\.0\\.0\\.1:${port}: EADDRINUSE: address already in use`)],
        [{ MILTER_SOCKET: `inet:${free}@host.that-does-not-resolve.invalid` }, /cannot listen: host\.that-does-not-resolve\.invalid:\d+: /],
        [{ MILTER_SOCKET: `unix:${join(scratchDir(), "missing", "milter.sock")}` }, /cannot listen: \S+missing\/milter\.sock: ENOENT/],
        [{ MILTER_SOCKET: `inet:${free}@127.0.0.1`, MILTER_METRICS_LISTEN: `127.0.0.1:${port}` }, new RegExp(`cannot listen: .*${port}`)],
      ];
      for (const [env, why] of cases) {
        const c = await runMilter(["check"], { MILTER_POLICY_FILE: policyFile(), ...env });
        assert.equal(c.code, 1, c.output);
        const line = c.output.split("\n").find((l) => l.startsWith("error: "));
        assert.match(line ?? "", why, c.output);
        const r = await runMilter([], { MILTER_POLICY_FILE: policyFile(), ...env });
        assert.equal(r.code, 1, r.output);
        assert.ok(r.output.includes(`exota-milter: ${line!.slice("error: ".length)}\n`), `run:\n${r.output}\ncheck:\n${c.output}`);
      }
      // A usable socket is let go again: run can take it at once.
      const ok = await runMilter(["check"], { MILTER_POLICY_FILE: policyFile(), MILTER_SOCKET: `inet:${free}@127.0.0.1` });
      assert.equal(ok.code, 0, ok.output);
      const m = await startMilter({ env: { MILTER_POLICY_FILE: policyFile(), MILTER_SOCKET: `inet:${free}@127.0.0.1` } });
      await m.stop();
    } finally {
      busy.close();
    }
  });

  it("a socket held by a running milter (the service itself, or its socket unit) is a note, not an error: check on a live relay passes", { timeout: 30_000 }, async () => {
    const port = await freePort();
    const unixSocket = join(scratchDir(), "live.sock");
    for (const socket of [`inet:${port}@127.0.0.1`, `unix:${unixSocket}`]) {
      const env = { MILTER_POLICY_FILE: policyFile(), MILTER_SOCKET: socket };
      const live = await startMilter({ env });
      try {
        const c = await runMilter(["check"], env);
        assert.equal(c.code, 0, c.output);
        assert.ok(c.output.split("\n").some((l) => l.startsWith(`note: ${socket} is in use by a milter that answers`)), c.output);
        assert.ok(!c.output.includes("error: "), c.output);
        // The running milter still serves (check neither took nor removed its socket).
        const client = await MilterClient.connect(socket.startsWith("unix:") ? { path: unixSocket } : { host: "127.0.0.1", port });
        await client.negotiate(POSTFIX_OFFER);
        client.end();
      } finally {
        await live.stop();
      }
    }
  });

  it("warnings: a mistyped variable is named with the closest setting, by check (exit 0) and in the log at start", async () => {
    const env = { MILTER_POLICY_FILE: policyFile(), MILTER_DKIM_ENABLE: "true" };
    const r = await runMilter(["check"], env);
    assert.equal(r.code, 0, r.output);
    assert.ok(r.output.split("\n").includes("warning: MILTER_DKIM_ENABLE is not a setting and is ignored; did you mean MILTER_DKIM_ENABLED?"), r.output);
    const port = await freePort();
    const p = await startMilter({ env: { ...env, MILTER_SOCKET: `inet:${port}@127.0.0.1` } });
    try {
      assert.match(p.log(), /WARNING exota-milter: MILTER_DKIM_ENABLE is not a setting and is ignored; did you mean MILTER_DKIM_ENABLED\?\n.* listening on /);
    } finally {
      await p.stop();
    }
  });

  it("a valid file: exit 0, every setting with its source, the policy summary; secrets masked", async () => {
    const path = policyFile();
    const r = await runMilter(["check", "--add-header=yes", "--authservid=relay.example", "--ldap-binddn=cn=milter,dc=example"], {
      MILTER_POLICY_FILE: path,
      MILTER_DKIM_ENABLED: "true",
      MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID,
      MILTER_LDAP_BINDPW: "s3cr3t-Pa55",
    });
    assert.equal(r.code, 0, r.output);
    const lines = r.output.split("\n");
    assert.equal(lines[0], "settings in force:");
    for (
      const expected of [
        "  MILTER_NAME=exota-milter  (default)",
        "  MILTER_DKIM_ENABLED=true  (environment)",
        `  MILTER_TRUSTED_AUTHSERVID=${TRUSTED_AUTHSERVID}  (environment)`,
        "  MILTER_ADD_HEADER=yes  (flag)",
        "  MILTER_AUTHSERVID=relay.example  (flag)",
        "  MILTER_LDAP_BINDDN=cn=milter,dc=example  (flag)",
        "  MILTER_LDAP_BINDPW=(secret)  (environment)",
        `  MILTER_POLICY_FILE=${path}  (environment)`,
        "  MILTER_REPORT_ONLY=false  (default)",
        "  MILTER_SHUTDOWN_TIMEOUT=10  (default)",
        `policy: file ${path}`,
        "  5 domain(s), valid",
      ]
    ) assert.ok(lines.includes(expected), `missing line ${JSON.stringify(expected)} in:\n${r.output}`);
    assert.ok(!r.output.includes("s3cr3t-Pa55"), "the password must not be printed");
  });

  it("a password given as a flag is masked too; an empty one is shown as empty", async () => {
    const r = await runMilter(["check", "--ldap-bindpw=fl4g-Secret"], { MILTER_POLICY_FILE: policyFile() });
    assert.equal(r.code, 0, r.output);
    assert.ok(r.output.split("\n").includes("  MILTER_LDAP_BINDPW=(secret)  (flag)"), r.output);
    assert.ok(!r.output.includes("fl4g-Secret"));
    const empty = await runMilter(["check"], { MILTER_POLICY_FILE: policyFile() });
    assert.ok(empty.output.split("\n").includes("  MILTER_LDAP_BINDPW=  (default)"), empty.output);
  });

  it("names each policy with dkim_enabled false while tenant ids are not required, one line each; none when they are", async () => {
    const path = policyFile(JSON.stringify({
      "open.example": { dkim_enabled: false },
      "signed.example": {},
      "open-too.example": { tenant_id: TENANT, dkim_enabled: false },
    }));
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 0, r.output);
    assert.deepEqual(
      r.output.split("\n").filter((l) => l.includes("dkim_enabled false")),
      ["open.example", "open-too.example"].map((d) =>
        `  warning: policy of ${d} has dkim_enabled false while MILTER_TENANT_ID_REQUIRED is off: ` +
        `any Microsoft 365 tenant with the trusted certificate can send as ${d}, and via Resent-From as any domain without a policy`
      ),
    );
    const strict = await runMilter(["check"], { MILTER_POLICY_FILE: path, MILTER_TENANT_ID_REQUIRED: "true" });
    assert.equal(strict.code, 0, strict.output);
    assert.doesNotMatch(strict.output, /dkim_enabled false/);
  });

  it("an invalid policy file: exit 1 with file:line, domain, key and reason", async () => {
    const path = policyFile(POLICY_INVALID);
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.equal(r.output, `exota-milter: policy: ${invalidError(path)}\n`);
  });

  it("broken JSON: exit 1 with file:line:column", async () => {
    const path = policyFile('{\n  "tenant.example": { "tenant_id": "" },\n  "x.example": {\n}\n');
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`^exota-milter: policy: ${path.replace(/[.\\]/g, "\\$&")}:\\d+:\\d+: `));
  });

  it("a policy that is not a regular file (/dev/zero), or larger than MILTER_POLICY_MAX_SIZE: exit 1 at once, saying why", async () => {
    const zero = await runMilter(["check"], { MILTER_POLICY_FILE: "/dev/zero" });
    assert.equal(zero.code, 1, zero.output);
    assert.match(zero.output, /exota-milter: policy: policy file \/dev\/zero is not a regular file\n/);
    const big = join(scratchDir(), "big.json");
    writeFileSync(big, "");
    truncateSync(big, 65 * 1048576);
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: big });
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /policy file \S+big\.json is 65 MiB, more than MILTER_POLICY_MAX_SIZE \(64 MiB\)\n/);
    const run = await runMilter([], { MILTER_POLICY_FILE: big, MILTER_POLICY_MAX_SIZE: "2" });
    assert.equal(run.code, 1, run.output);
    assert.match(run.output, /is 65 MiB, more than MILTER_POLICY_MAX_SIZE \(2 MiB\)/);
  });

  it("a missing policy file: exit 1", async () => {
    const path = join(scratchDir(), "nope.json");
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.match(r.output, /^exota-milter: policy: cannot read policy file .*nope\.json: ENOENT/);
  });

  it("an invalid setting: exit 1 naming the variable", async () => {
    const r = await runMilter(["check"], { MILTER_POLICY_FILE: policyFile(), MILTER_DKIM_ENABLED: "yepp" });
    assert.equal(r.code, 1);
    assert.match(r.output, /MILTER_DKIM_ENABLED="yepp" is not valid/);
  });
});

// ---------------------------------------------------------------- explain

/** A saved message as it reached the relay: the verifier's result on top, Exchange Online's headers below. */
function eml(f: { from?: string; authResults?: string; tenantId?: string; extra?: string[] } = {}): string {
  const lines = [
    `Authentication-Results: ${f.authResults ?? dkimPass("tenant.example")}`,
    "Received: from DB9PR05MB1234.eurprd05.prod.outlook.com (2603:10a6:10:e3::18)",
    "\tby AM0PR05MB5678.eurprd05.prod.outlook.com",
    `From: ${f.from ?? "Alice <alice@tenant.example>"}`,
    "To: bob@destination.example",
    "Subject: quarterly report",
    `X-MS-Exchange-CrossTenant-Id: ${f.tenantId ?? TENANT}`,
    ...(f.extra ?? []),
    "",
    "Hello Bob,",
    "",
  ];
  return lines.join("\r\n");
}

describe("explain", () => {
  let dir: string;
  let POLICY_FILE: string;
  before(() => {
    dir = scratchDir();
    POLICY_FILE = policyFile();
  });
  /** Everything on; 192.0.2.10 skips the certificate check. */
  const env = (extra: Record<string, string> = {}) => ({
    MILTER_POLICY_FILE: POLICY_FILE,
    ...ALL_CHECKS_ENV,
    MILTER_X509_IP_WHITELIST: "192.0.2.10",
    ...extra,
  });
  const save = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const exo = ["--client-ip", EXO_CLIENT.address, "--cert-subject", TRUSTED_CN];

  it("an acceptable message: exit 0, the steps, the header changes", async () => {
    const file = save("ok.eml", eml({ extra: ["X-ExOTA-Authentication-Results: forged; auth=pass"] }));
    const r = await runMilter(["explain", "--message", file, ...exo, "--queue-id", "4CjqCQ2WRCzGjg6"], env());
    assert.equal(r.code, 0, r.output);
    assert.equal(
      r.output,
      [
        `message: ${file} (7 header fields)`,
        `client: ${EXO_CLIENT.address}`,
        `{cert_subject}: "${TRUSTED_CN}", bare CN, CN "${TRUSTED_CN}"`,
        "{cert_issuer}: (none)",
        "{verify}: (none: Postfix sends none, Sendmail only when configured)",
        `  x509: trusted client CN ${TRUSTED_CN}`,
        `  policy: tenant.example tenant_id=${TENANT} dkim_enabled=true dkim_alignment_required=true`,
        `  tenant-id: ${TENANT} matches the policy`,
        "  dkim: pass for tenant.example; aligned with tenant.example: true",
        "verdict: continue",
        `header: delete ${EXOTA} #1`,
        `header: add ${EXOTA}: ${OUR_AUTHSERVID};`,
        "      auth=pass 5322_from_domain=tenant.example dkim=True dkim_aligned=True x509_client_trust=True forwarded=False",
        "",
      ].join("\n"),
    );
  });

  it("a rejected message: exit 2, the reason and the 550 reply, no header changes", async () => {
    const file = save("untrusted-dkim.eml", eml({ authResults: dkimPass("tenant.example", "mx.elsewhere.example") }));
    const r = await runMilter(["explain", "--message", file, ...exo, "--queue-id", "Q2"], env());
    assert.equal(r.code, 2, r.output);
    const lines = r.output.split("\n");
    assert.ok(lines.includes("  authentication-results: ignored, authserv-id mx.elsewhere.example is not trusted"), r.output);
    assert.ok(lines.includes("verdict: reject (No valid DKIM authentication results found)"), r.output);
    assert.ok(
      lines.includes("reply: 550 5.7.1 queue_id: Q2 - Security policy violation! - reason: No valid DKIM authentication results found"),
      r.output,
    );
    assert.doesNotMatch(r.output, /^header:/m);
  });

  it("a From domain without policy: exit 2; no --queue-id gives NOQUEUE", async () => {
    const file = save("unknown.eml", eml({ from: "Mallory <m@unknown.example>", authResults: dkimPass("unknown.example") }));
    const r = await runMilter(["explain", "--message", file, ...exo], env());
    assert.equal(r.code, 2, r.output);
    assert.ok(r.output.split("\n").includes("verdict: reject (No policy for 5322.from_domain unknown.example)"), r.output);
    assert.ok(
      r.output.split("\n").includes(
        "reply: 550 5.7.1 queue_id: NOQUEUE - Security policy violation! - reason: No policy for 5322.from_domain unknown.example",
      ),
      r.output,
    );
  });

  it("x509: an untrusted CN, no certificate, an allow-listed client", async () => {
    const file = save("x509.eml", eml());
    const untrusted = await runMilter(
      ["explain", "--message", file, "--client-ip", EXO_CLIENT.address, "--cert-subject", "evil.example", "--queue-id", "X1"],
      env(),
    );
    assert.equal(untrusted.code, 2, untrusted.output);
    assert.ok(untrusted.output.split("\n").includes("verdict: reject (Untrusted x509 client CN: evil.example)"), untrusted.output);
    assert.ok(
      untrusted.output.split("\n").includes("reply: 550 5.7.1 queue_id: X1 - Security policy violation! - reason: Untrusted x509 client CN: evil.example"),
      untrusted.output,
    );

    const none = await runMilter(["explain", "--message", file, "--client-ip", EXO_CLIENT.address], env());
    assert.equal(none.code, 2, none.output);
    assert.ok(none.output.split("\n").includes("{cert_subject}: (none)"), none.output);
    assert.ok(none.output.split("\n").includes("verdict: reject (No trusted x509 client CN found)"), none.output);

    const listed = await runMilter(["explain", "--message", file, "--client-ip", "192.0.2.10"], env());
    assert.equal(listed.code, 0, listed.output);
    assert.ok(listed.output.split("\n").includes("  x509: client 192.0.2.10 is on the allow-list (192.0.2.10), certificate not checked"), listed.output);
    assert.match(listed.output, / x509_client_trust=False forwarded=False\n/);
  });

  it("x509 under Sendmail: the macros as given and decoded, {verify}, the verdict with and without {verify}", async () => {
    const file = save("sendmail.eml", eml());
    const subject = "/C=US/O=Microsoft+20Corporation/CN=mail.protection.outlook.com";
    const issuer = "/CN=ExOTA+20peers+20test+20CA";
    const sendmail = ["--client-ip", EXO_CLIENT.address, "--cert-subject", subject, "--cert-issuer", issuer];
    const issuerEnv = env({ MILTER_X509_TRUSTED_ISSUER: "ExOTA peers test CA" });
    const ok = await runMilter(["explain", "--message", file, ...sendmail, "--cert-verify", "OK"], issuerEnv);
    assert.equal(ok.code, 0, ok.output);
    const lines = ok.output.split("\n");
    assert.deepEqual(lines.slice(1, 5), [
      `client: ${EXO_CLIENT.address}`,
      `{cert_subject}: "${subject}", decoded "/C=US/O=Microsoft Corporation/CN=mail.protection.outlook.com", DN, CN "mail.protection.outlook.com"`,
      `{cert_issuer}: "${issuer}", decoded "/CN=ExOTA peers test CA", DN, CN "ExOTA peers test CA"`,
      '{verify}: "OK"',
    ], ok.output);
    assert.ok(lines.includes("  x509: trusted client CN mail.protection.outlook.com ({verify}=OK)"), ok.output);

    const failed = await runMilter(["explain", "--message", file, ...sendmail, "--cert-verify", "FAIL"], issuerEnv);
    assert.equal(failed.code, 2, failed.output);
    assert.ok(failed.output.split("\n").includes("verdict: reject (Untrusted x509 client certificate: the MTA did not verify it ({verify}=FAIL))"), failed.output);

    const unknown = await runMilter(["explain", "--message", file, ...sendmail], issuerEnv);
    assert.equal(unknown.code, 2, unknown.output);
    assert.ok(unknown.output.split("\n").includes("{verify}: (none: Postfix sends none, Sendmail only when configured)"), unknown.output);
    assert.match(unknown.output, /^verdict: reject \(Untrusted x509 client certificate: the MTA gives its whole DN but no \{verify\} macro/m);

    const padded = await runMilter(["explain", "--message", file, "--client-ip", EXO_CLIENT.address, "--cert-subject", ` ${TRUSTED_CN}`], env());
    assert.equal(padded.code, 2, padded.output);
    assert.ok(padded.output.split("\n").includes(`{cert_subject}: " ${TRUSTED_CN}", bare CN, CN " ${TRUSTED_CN}"`), padded.output);

    const malformed = await runMilter(["explain", "--message", file, "--client-ip", EXO_CLIENT.address, "--cert-subject", "/CN=mail+zz"], env());
    assert.ok(malformed.output.split("\n").includes('{cert_subject}: "/CN=mail+zz", not usable: malformed xtext escape in /CN=mail+zz'), malformed.output);
  });

  it("no trusted Authentication-Results at all, or no certificate: a hint names the Postfix audit; a plain reject has none", async () => {
    const file = save("no-trusted-ar.eml", eml({ authResults: dkimPass("tenant.example", "mx.elsewhere.example") }));
    const r = await runMilter(["explain", "--message", file, "--client-ip", EXO_CLIENT.address], env());
    assert.equal(r.code, 2, r.output);
    assert.match(r.output, new RegExp(`\nhint: no Authentication-Results of ${TRUSTED_AUTHSERVID.replace(/\./g, "\\.")} at all: .*exota-milter check --postfix. audits the milter order\n`));
    assert.match(r.output, /\nhint: if live mail is rejected for this, Postfix does not pass \{cert_subject\}; .exota-milter check --postfix. audits/);
    const plain = await runMilter(["explain", "--message", save("no-policy.eml", eml({ from: "m@unknown.example", authResults: dkimPass("unknown.example") })), ...exo], env());
    assert.equal(plain.code, 2, plain.output);
    assert.doesNotMatch(plain.output, /^hint:/m);
  });

  it("report-only mode: the verdict says the message would be let through, the header says would=reject", async () => {
    const file = save("report-only.eml", eml({ from: "Mallory <m@unknown.example>", extra: ["x-exota-authentication-results: forged"] }));
    const r = await runMilter(["explain", "--message", file, ...exo, "--queue-id", "R1"], env({ MILTER_REPORT_ONLY: "true" }));
    // The exit code tells the verdict, also in report-only mode.
    assert.equal(r.code, 2, r.output);
    const lines = r.output.split("\n");
    assert.ok(
      lines.includes("verdict: reject (No policy for 5322.from_domain unknown.example) - report-only mode: the message would be let through"),
      r.output,
    );
    assert.ok(lines.includes(`header: delete ${EXOTA} #1`), r.output);
    assert.ok(
      lines.includes(
        '      auth=fail report_only=True would=reject reason="No policy for 5322.from_domain unknown.example" 5322_from_domain=unknown.example',
      ),
      r.output,
    );
    assert.doesNotMatch(r.output, /^reply:/m, "no SMTP reply: the message continues");
  });

  it("a missing message file, or a directory: exit 1 with a message naming it", async () => {
    const missing = join(dir, "missing.eml");
    const r = await runMilter(["explain", "--message", missing], env());
    assert.equal(r.code, 1);
    assert.equal(r.output, `exota-milter: cannot read message file ${missing}: ENOENT: no such file or directory, open '${missing}'\n`);

    const r2 = await runMilter(["explain", "--message", dir], env());
    assert.equal(r2.code, 1);
    // Bun's node:fs fails at read(2), Deno's at open(2), and says so.
    const syscall = RUNTIME === "deno" ? `open '${dir}'` : "read";
    assert.equal(r2.output, `exota-milter: cannot read message file ${dir}: EISDIR: illegal operation on a directory, ${syscall}\n`);
  });

  it("--message missing, or given to another command: exit 1", async () => {
    const r = await runMilter(["explain", "--client-ip", "192.0.2.10"], env());
    assert.equal(r.code, 1);
    assert.equal(r.output, "exota-milter: explain needs --message FILE.eml (see --help)\n");
    const r2 = await runMilter(["check", "--message", "x.eml"], env());
    assert.equal(r2.code, 1);
    assert.equal(r2.output, "exota-milter: --message belongs to the explain command (see --help)\n");
  });
});

// ---------------------------------------------------------------- report-only over the milter protocol

describe("report-only mode over the milter protocol", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      ...ALL_CHECKS_ENV,
      MILTER_X509_ENABLED: "false",
      MILTER_REPORT_ONLY: "true",
      LOG_FORMAT: "text",
    });
  });
  after(() => m?.proc.stop());

  const forged: ReadonlyArray<readonly [string, string]> = [
    [EXOTA, `${OUR_AUTHSERVID}; auth=pass 5322_from_domain=unknown.example`],
    ["x-exota-authentication-results", "forged too"],
  ];

  it("a message that would be rejected continues: forged headers deleted, would=reject and the reason added, logged as report only", async () => {
    const c = await m.connect();
    try {
      const mark = m.proc.log().length;
      const replies = await c.sendMessage(
        message({ queueId: "RO1", from: "Mallory <m@unknown.example>", authResults: [dkimPass("unknown.example")], extraHeaders: forged }),
      );
      assert.deepEqual(replies, [
        { type: "chgheader", index: 2, name: EXOTA, value: "" },
        { type: "chgheader", index: 1, name: EXOTA, value: "" },
        {
          type: "addheader",
          name: EXOTA,
          value: `${OUR_AUTHSERVID};\n  auth=fail report_only=True would=reject reason="No policy for 5322.from_domain unknown.example" ` +
            "5322_from_domain=unknown.example",
        },
        { type: "continue" },
      ]);
      const line = await m.proc.waitForLog(/.*qid=RO1.*/, 2000, mark);
      assert.match(line, / INFO exota-milter: decision \(report only, message let through\) /);
      assert.match(line, / verdict="would reject" reason="No policy for 5322.from_domain unknown.example"/);
      assert.match(line, / from_domain=unknown\.example /);

      // Another would-be reject on the same connection: a tenant id of someone else.
      const r2 = await c.sendMessage(message({ queueId: "RO2", session: false, tenantIds: [OTHER_TENANT] }));
      assert.deepEqual(r2, [
        {
          type: "addheader",
          name: EXOTA,
          value: `${OUR_AUTHSERVID};\n  auth=fail report_only=True would=reject reason="No policy match for tenant-id" 5322_from_domain=tenant.example`,
        },
        { type: "continue" },
      ]);
      await c.quit();
    } finally {
      c.destroy();
    }
  });

  it("an acceptable message behaves as without report-only", async () => {
    const c = await m.connect();
    try {
      const mark = m.proc.log().length;
      assert.deepEqual(
        await c.sendMessage(message({ queueId: "RO3", extraHeaders: forged })),
        accepted(2, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509: false, forwarded: false })),
      );
      const line = await m.proc.waitForLog(/.*qid=RO3.*/, 2000, mark);
      assert.match(line, / INFO exota-milter: decision conn=\d+ qid=RO3 client=203\.0\.113\.5 from_domain=tenant\.example verdict=continue /);
      assert.doesNotMatch(line, /report only/);
      await c.quit();
    } finally {
      c.destroy();
    }
  });
});

// ---------------------------------------------------------------- graceful stop

describe("stopping", () => {
  const procs: MilterProcess[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
  });
  const ENV = { MILTER_POLICY_FILE: "", LOG_FORMAT: "text" };
  before(() => {
    ENV.MILTER_POLICY_FILE = policyFile();
  });
  const tcp = async (env: Record<string, string> = {}) => {
    const m = await startTcpMilter({ ...ENV, ...env });
    procs.push(m.proc);
    return m;
  };
  /**
   * A connection in the middle of a message: MAIL and the headers sent, no
   * end of message yet. Offered without NR_HDR (as an MTA of milter protocol
   * 2 to 5 does), so the filter acknowledges each header: when this returns,
   * the milter has seen them (with NR_HDR, a signal could overtake them).
   */
  const midMessage = async (connect: () => Promise<MilterClient>, queueId: string) => {
    const c = await connect();
    const agreed = await c.negotiate({ ...POSTFIX_OFFER, protocol: POSTFIX_OFFER.protocol & ~Proto.NR_HDR });
    assert.equal(agreed.protocol & Proto.NR_HDR, 0);
    assert.deepEqual(await c.sendMessage(message({ queueId, stopAfterHeaders: true })), []);
    return c;
  };
  /** Polls until `path` is gone. */
  const gone = async (path: string) => {
    for (let i = 0; i < 50 && existsSync(path); i++) await sleep(10);
    return !existsSync(path);
  };

  it("SIGTERM: the idle connection closes after 1 s without a next message, new ones are refused, the message in flight gets its verdict, exit 0", async () => {
    const m = await tcp();
    const busy = await midMessage(() => m.connect(), "INFLIGHT1");
    const idle = await m.connect();
    try {
      assert.deepEqual(await idle.sendMessage(message({ queueId: "IDLE1" })), CONTINUE);
      const mark = m.proc.log().length;
      const signalled = performance.now();
      m.proc.child.kill("SIGTERM");
      await m.proc.waitForLog(/SIGTERM: stopping, 2 connection\(s\) open, waiting up to 10 s for messages in flight/, 2000, mark);
      // Its last message ended just before the signal: it is given 1 s for a next one, not closed at once.
      await idle.waitClosed(2500);
      const waited = performance.now() - signalled;
      assert.ok(waited >= 900, `closed ${waited.toFixed(0)} ms after SIGTERM`);
      await assert.rejects(MilterClient.connect({ host: "127.0.0.1", port: m.port }, 2000), (e: NodeJS.ErrnoException) => {
        assert.equal(e.code, "ECONNREFUSED");
        return true;
      });
      assert.equal(m.proc.child.exitCode, null, "still running for the message in flight");
      // The rest of the message, after the signal.
      assert.deepEqual(await busy.step("eom", { i: "INFLIGHT1" }, EOM), CONTINUE);
      await busy.waitClosed(2000);
      assert.equal(await exitWithin(m.proc, 3000), 0);
      assert.match(m.proc.log(), /stopped: "all connections closed"/);
      assert.match(m.proc.log(), /decision conn=\d+ qid=INFLIGHT1 .*verdict=continue/);
    } finally {
      busy.destroy();
      idle.destroy();
    }
  });

  it("SIGTERM with no connection: exits 0 at once; SIGINT does the same", async () => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      const m = await tcp();
      const t0 = performance.now();
      m.proc.child.kill(signal);
      assert.equal(await exitWithin(m.proc, 2000), 0);
      assert.ok(performance.now() - t0 < 1500);
      assert.match(m.proc.log(), new RegExp(`${signal}: stopping, 0 connection\\(s\\) open`));
      assert.match(m.proc.log(), /stopped: "no connections open"/);
    }
  });

  // Ten starts: several seconds on a loaded machine, past the runner's default of 5.
  it("a signal sent as soon as the ready line appears is handled, not fatal", { timeout: 30_000 }, async () => {
    for (let i = 0; i < 5; i++) {
      const hup = await tcp();
      hup.proc.child.kill("SIGHUP");
      await hup.proc.waitForLog(/policy reloaded from .*: 5 domain\(s\)/, 2000);
      assert.deepEqual(await hup.connect().then(async (c) => {
        try {
          return await c.sendMessage(message({ queueId: `HUP${i}` }));
        } finally {
          c.destroy();
        }
      }), CONTINUE);
      const term = await tcp();
      term.proc.child.kill("SIGTERM");
      assert.equal(await exitWithin(term.proc, 2000), 0, term.proc.log());
      assert.match(term.proc.log(), /stopped: "no connections open"/);
    }
  });

  it("a message never finished: exit 0 after MILTER_SHUTDOWN_TIMEOUT; the unix socket file is removed", async () => {
    const path = join(scratchDir(), "milter.sock");
    const p = await startMilter({ env: { ...ENV, MILTER_SOCKET: `unix:${path}`, MILTER_SHUTDOWN_TIMEOUT: "1.5" } });
    procs.push(p);
    assert.ok(existsSync(path));
    const busy = await midMessage(() => MilterClient.connect({ path }), "NEVER1");
    try {
      const t0 = performance.now();
      p.child.kill("SIGTERM");
      await p.waitForLog(/SIGTERM: stopping, 1 connection\(s\) open, waiting up to 1.5 s/, 2000);
      assert.ok(await gone(path), "socket file removed when stopping");
      await assert.rejects(MilterClient.connect({ path }, 1000));
      assert.equal(await exitWithin(p, 5000), 0);
      const elapsed = performance.now() - t0;
      assert.ok(elapsed >= 1400 && elapsed < 3500, `exited after ${elapsed} ms, deadline 1500 ms`);
      assert.match(p.log(), /stopped: "deadline reached, 1 connection\(s\) dropped"/);
      await busy.waitClosed(1000);
      assert.equal(existsSync(path), false);
    } finally {
      busy.destroy();
    }
  });

  it("a second SIGTERM exits at once, non-zero", async () => {
    const m = await tcp();
    const busy = await midMessage(() => m.connect(), "SECOND1");
    try {
      m.proc.child.kill("SIGTERM");
      await m.proc.waitForLog(/SIGTERM: stopping, 1 connection\(s\) open/, 2000);
      await sleep(100);
      assert.equal(m.proc.child.exitCode, null, "waiting for the message in flight");
      const t0 = performance.now();
      m.proc.child.kill("SIGTERM");
      const code = await exitWithin(m.proc, 2000);
      assert.ok(performance.now() - t0 < 1500);
      assert.equal(code, 1);
      assert.match(m.proc.log(), /WARNING exota-milter: SIGTERM again: exiting at once, 1 connection\(s\) dropped/);
    } finally {
      busy.destroy();
    }
  });
});

// ---------------------------------------------------------------- log formats

describe("log formats", () => {
  const procs: MilterProcess[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
  });
  const DKIM_ENV = { MILTER_DKIM_ENABLED: "true", MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID };
  /** Starts with `env`, sends an accepted message (with a misplaced trusted result: a warning) and a rejected one, stops. */
  const run = async (env: Record<string, string>): Promise<string> => {
    const m = await startTcpMilter({ MILTER_POLICY_FILE: policyFile(), ...DKIM_ENV, ...env });
    procs.push(m.proc);
    const c = await m.connect();
    try {
      assert.deepEqual(
        await c.sendMessage(message({ queueId: "LOG1", extraHeaders: [["Authentication-Results", dkimPass("tenant.example")]] })),
        CONTINUE,
      );
      assert.deepEqual(
        await c.sendMessage(message({ queueId: "LOG2", session: false, from: "x@unknown.example" })),
        rejected("LOG2", "No policy for 5322.from_domain unknown.example"),
      );
      await c.quit();
    } finally {
      c.destroy();
    }
    assert.equal(await m.proc.stop(), 0);
    return m.proc.log();
  };

  it("LOG_FORMAT=json: one JSON object per line; the decision lines carry conn, qid and verdict", async () => {
    const records = jsonLines(await run({ LOG_FORMAT: "json" }));
    assert.ok(records.length >= 5);
    for (const r of records) {
      assert.match(String(r.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(r.name, "exota-milter");
      assert.equal(typeof r.message, "string");
    }
    const decisions = records.filter((r) => r.message === "decision");
    assert.equal(decisions.length, 2);
    const [ok, no] = decisions as [Record<string, unknown>, Record<string, unknown>];
    assert.equal(ok.level, "info");
    assert.equal(ok.conn, "1");
    assert.equal(ok.qid, "LOG1");
    assert.equal(ok.verdict, "continue");
    assert.equal(ok.from_domain, "tenant.example");
    assert.equal(ok.client, EXO_CLIENT.address);
    assert.equal(no.conn, "1");
    assert.equal(no.qid, "LOG2");
    assert.equal(no.verdict, "reject");
    assert.equal(no.reason, "No policy for 5322.from_domain unknown.example");
    // The policy's dkim_enabled false entry (tenant ids not required), then the misplaced result of LOG1.
    // The tests may run as root, which start-up rightly warns about.
    const warning = records.filter((r) => r.level === "warning" && !String(r.message).startsWith("running as root"));
    assert.deepEqual(warning.map((r) => r.domain ?? r.qid), ["no-dkim.example", "LOG1"]);
  });

  const checkJournal = (log: string) => {
    const lines = log.split("\n").filter((l) => l !== "");
    assert.ok(lines.length >= 5);
    for (const l of lines) {
      assert.match(l, /^<[0-7]>exota-milter: /, `not a journal line: ${l}`);
      assert.doesNotMatch(l, /\d{4}-\d\d-\d\dT\d\d:\d\d/, `a time stamp in ${l}`);
    }
    assert.ok(lines.some((l) => /^<6>exota-milter: decision conn=1 qid=LOG1 client=203\.0\.113\.5 from_domain=tenant\.example verdict=continue /.test(l)), log);
    assert.ok(
      lines.some((l) => l === '<6>exota-milter: decision conn=1 qid=LOG2 client=203.0.113.5 from_domain=unknown.example verdict=reject reason="No policy for 5322.from_domain unknown.example"'),
      log,
    );
    assert.ok(lines.some((l) => /^<4>exota-milter: ignored 1 Authentication-Results header\(s\) .* qid=LOG1/.test(l)), log);
  };

  it("JOURNAL_STREAM set (systemd) and LOG_FORMAT unset: <N> priority prefix, no time stamp", async () => {
    checkJournal(await run({ JOURNAL_STREAM: "8:123456" }));
  });

  it("LOG_FORMAT=journal without JOURNAL_STREAM: the same", async () => {
    checkJournal(await run({ LOG_FORMAT: "journal" }));
  });

  it("text elsewhere, and LOG_FORMAT=text wins over JOURNAL_STREAM", async () => {
    for (const env of [{}, { LOG_FORMAT: "text", JOURNAL_STREAM: "8:123456" }] as Array<Record<string, string>>) {
      const lines = (await run(env)).split("\n").filter((l) => l !== "");
      for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR|DEBUG) exota-milter: /, l);
      assert.ok(lines.some((l) => / INFO exota-milter: decision conn=1 qid=LOG2 .*verdict=reject /.test(l)));
    }
  });

  it("control characters in logged values are escaped: a MILTER_NAME or a queue id with a newline or a terminal escape cannot forge lines", async () => {
    for (const format of ["text", "journal"]) {
      const m = await startTcpMilter({ MILTER_POLICY_FILE: policyFile(), LOG_FORMAT: format, MILTER_NAME: "exota\n2026-01-01T00:00:00.000Z ERROR forged:" });
      procs.push(m.proc);
      const c = await m.connect();
      try {
        assert.deepEqual(await c.sendMessage(message({ queueId: "Q\x1b[31m\rX", from: "x@unknown.example" })), rejected("Q\x1b[31m\rX".replace(/[\x00-\x1f]/g, " "), "No policy for 5322.from_domain unknown.example"));
        await c.quit();
      } finally {
        c.destroy();
      }
      assert.equal(await m.proc.stop(), 0);
      const lines = m.proc.log().split("\n").filter((l) => l !== "");
      const start = format === "text" ? /^\d{4}-\d\d-\d\dT\S+ (INFO|WARNING) exota\\n2026-01-01T00:00:00\.000Z ERROR forged:: / : /^<[46]>exota\\n2026/;
      for (const l of lines) assert.match(l, start, l);
      assert.doesNotMatch(m.proc.log(), /[\x00-\x09\x0b-\x1f]/);
      assert.ok(lines.some((l) => l.includes("qid=\"Q\\u001b[31m\\rX\"")), m.proc.log());
    }
  });
});

// ---------------------------------------------------------------- metrics

describe("metrics", () => {
  let m: TcpMilter;
  let port: number;
  before(async () => {
    m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      MILTER_X509_ENABLED: "true",
      MILTER_DKIM_ENABLED: "true",
      MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID,
    }, { metrics: true });
    port = m.metricsPort!;
  });
  after(() => m?.proc.stop());

  it("is announced in the log", () => {
    assert.match(m.proc.log(), new RegExp(`metrics on http://127\\.0\\.0\\.1:${port}/metrics`));
  });

  it("counts known numbers of accepted and rejected messages exactly", async () => {
    const before = await m.scrape();
    assert.deepEqual(series(before, "exota_milter_messages_total"), {});
    assert.equal(before.get("exota_milter_decision_seconds_count"), 0);
    assert.equal(before.get("exota_milter_connections_open"), 0);
    assert.equal(before.get("exota_milter_connections_total"), 0);

    const a = await m.connect();
    const b = await m.connect();
    const idle = await m.connect();
    try {
      const good = { cn: TRUSTED_CN };
      const ok = CONTINUE;
      assert.deepEqual(await a.sendMessage(message({ ...good, queueId: "M1" })), ok);
      assert.deepEqual(await a.sendMessage(message({ ...good, queueId: "M2", session: false })), ok);
      assert.deepEqual(await a.sendMessage(message({ ...good, queueId: "M3", session: false })), ok);
      assert.deepEqual(
        await a.sendMessage(message({ ...good, queueId: "M4", session: false, from: "x@unknown1.example" })),
        rejected("M4", "No policy for 5322.from_domain unknown1.example"),
      );
      assert.deepEqual(
        await a.sendMessage(message({ ...good, queueId: "M5", session: false, from: "x@unknown2.example" })),
        rejected("M5", "No policy for 5322.from_domain unknown2.example"),
      );
      assert.deepEqual(
        await a.sendMessage(message({ ...good, queueId: "M6", session: false, authResults: [] })),
        rejected("M6", "No valid DKIM authentication results found"),
      );
      assert.deepEqual(
        await b.sendMessage(message({ cn: "evil.example", queueId: "M7" })),
        rejected("M7", "Untrusted x509 client CN: evil.example"),
      );
      await idle.negotiate();

      const s = await m.scrape();
      assert.deepEqual(series(s, "exota_milter_messages_total"), {
        'exota_milter_messages_total{verdict="continue",reason=""}': 3,
        'exota_milter_messages_total{verdict="reject",reason="No policy for 5322.from_domain"}': 2,
        'exota_milter_messages_total{verdict="reject",reason="No valid DKIM authentication results found"}': 1,
        'exota_milter_messages_total{verdict="reject",reason="Untrusted x509 client CN"}': 1,
      });
      assert.equal(s.get("exota_milter_decision_seconds_count"), 7);
      assert.equal(s.get('exota_milter_decision_seconds_bucket{le="+Inf"}'), 7);
      const buckets = Object.entries(series(s, "exota_milter_decision_seconds_bucket"));
      assert.equal(buckets.length, 14);
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]![1] >= buckets[i - 1]![1], `buckets cumulative: ${buckets}`);
      const sum = s.get("exota_milter_decision_seconds_sum")!;
      assert.ok(sum >= 0 && sum < 7, `sum ${sum}`);
      assert.equal(s.get('exota_milter_decision_seconds_bucket{le="5"}'), 7, "no decision takes 5 s");
      assert.equal(s.get("exota_milter_connections_open"), 3);
      assert.equal(s.get("exota_milter_connections_total"), 3);
      assert.equal(s.get("exota_milter_policy_entries"), Object.keys(POLICY).length);
      assert.deepEqual(series(s, "exota_milter_policy_reloads_total"), {
        'exota_milter_policy_reloads_total{result="ok"}': 0,
        'exota_milter_policy_reloads_total{result="failed"}': 0,
      });
      assert.equal(series(s, "exota_milter_ldap_queries_total")["exota_milter_ldap_queries_total"], undefined, "no LDAP metrics with a file");

      await a.quit();
      await b.quit();
      await idle.quit();
    } finally {
      a.destroy();
      b.destroy();
      idle.destroy();
    }
    // The milter notices the closes a moment later.
    let open: number | undefined;
    for (let i = 0; i < 50; i++) {
      open = (await m.scrape()).get("exota_milter_connections_open");
      if (open === 0) break;
      await sleep(20);
    }
    assert.equal(open, 0);
    assert.equal((await m.scrape()).get("exota_milter_connections_total"), 3);
  });

  it("the exposition has HELP and TYPE lines and the text content type", async () => {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const body = await r.text();
    assert.match(body, /^# TYPE exota_milter_messages_total counter$/m);
    assert.match(body, /^# TYPE exota_milter_decision_seconds histogram$/m);
    assert.match(body, /^# TYPE exota_milter_connections_open gauge$/m);
    assert.ok(body.endsWith("\n"));
  });

  it("404 for other paths and methods", async () => {
    for (const path of ["/foo", "/metrics/x", "/metricsx"]) assert.equal((await httpGet(port, path)).status, 404, path);
    assert.equal((await httpGet(port, "/metrics", "POST")).status, 404);
  });
});
