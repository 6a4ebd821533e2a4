/**
 * packaging/: install.sh and uninstall.sh into a DESTDIR (binary, units,
 * settings, README, man page), the systemd units
 * (systemd-analyze verify, and the sockets the unit passes served by the
 * compiled binary), the shipped env file with the example policy.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { accepted, dkimPass, message, rejected, removeScratch, scratchDir } from "../lib/fixtures.ts";
import { MilterClient, type Target } from "../lib/milter-client.ts";
import { BINARY, freePort, ROOT, runMilter, RUNTIME, startMilter } from "../lib/milter-process.ts";
import { serviceEnvironment, unitValues } from "../lib/service-unit.ts";

after(removeScratch);

/** The packages carry the compiled Bun executable: nothing to test with Deno running the sources. */
const BUN_ONLY = { skip: RUNTIME === "deno" ? "packaging ships the Bun executable" : false };

const PACKAGING = join(ROOT, "packaging");
const UNITS = join(PACKAGING, "systemd");

function sh(script: string, args: string[], env: Record<string, string>): { code: number | null; out: string } {
  const r = spawnSync(script, args, {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    encoding: "utf8",
    timeout: 30_000,
  });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");
const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

/** Every file under `dir`, relative, sorted. */
function tree(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === "" ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory()) out.push(`${rel}/`, ...tree(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

/** KEY=VALUE lines of an env file (as systemd's EnvironmentFile= and `set -a; .` read this simple form). */
function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(t);
    assert.ok(m, `not KEY=VALUE: ${line}`);
    env[m[1]!] = m[2]!;
  }
  return env;
}

/** Per test: bun's default is 5 s; an install copies the 110 MB binary and runs it. */
const T = { timeout: 30_000 };

describe("install.sh and uninstall.sh with DESTDIR", BUN_ONLY, () => {
  let dest: string;
  before(() => {
    dest = join(scratchDir(), "root");
  });
  const at = (p: string) => join(dest, p);
  const ENV_FILE = "etc/exota-milter/exota-milter.env";
  const POLICY = "etc/exota-milter/policy.json";

  it("installs the binary, the units, the env file, the policy, the README and the man page", T, () => {
    const r = sh(join(PACKAGING, "install.sh"), [BINARY], { DESTDIR: dest });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, new RegExp(`install.sh: installed into ${dest.replace(/[.\\]/g, "\\$&")}\\n$`));
    assert.doesNotMatch(r.out, /keeping existing/);
    assert.deepEqual(tree(dest), [
      "etc/",
      "etc/exota-milter/",
      "etc/exota-milter/exota-milter.env",
      "etc/exota-milter/policy.json",
      "etc/systemd/",
      "etc/systemd/system/",
      "etc/systemd/system/exota-milter.service",
      "etc/systemd/system/exota-milter.socket",
      "usr/",
      "usr/local/",
      "usr/local/bin/",
      "usr/local/bin/exota-milter",
      "usr/local/share/",
      "usr/local/share/doc/",
      "usr/local/share/doc/exota-milter/",
      "usr/local/share/doc/exota-milter/README.md",
      "usr/local/share/man/",
      "usr/local/share/man/man8/",
      "usr/local/share/man/man8/exota-milter.8",
    ]);
    assert.equal(mode(at("usr/local/bin/exota-milter")), "755");
    assert.equal(statSync(at("usr/local/bin/exota-milter")).size, statSync(BINARY).size);
    assert.equal(sha256(at("usr/local/bin/exota-milter")), sha256(BINARY));
    for (const unit of ["exota-milter.service", "exota-milter.socket"]) {
      assert.equal(readFileSync(at(`etc/systemd/system/${unit}`), "utf8"), readFileSync(join(UNITS, unit), "utf8"));
      assert.equal(mode(at(`etc/systemd/system/${unit}`)), "644");
    }
    assert.equal(readFileSync(at(ENV_FILE), "utf8"), readFileSync(join(PACKAGING, "exota-milter.env"), "utf8"));
    assert.equal(readFileSync(at(POLICY), "utf8"), readFileSync(join(ROOT, "policy.example.json"), "utf8"));
    assert.equal(readFileSync(at("usr/local/share/man/man8/exota-milter.8"), "utf8"), spawnSync(BINARY, ["--man"], { encoding: "utf8" }).stdout);
    assert.equal(mode(at("usr/local/share/man/man8/exota-milter.8")), "644");
    // Settings may hold the LDAP password: not world-readable.
    assert.equal(mode(at(ENV_FILE)), "640");
    assert.equal(mode(at(POLICY)), "640");
  });

  it("the installed binary runs: --version, and `check` with the installed env file and policy", async () => {
    const version = spawnSync(at("usr/local/bin/exota-milter"), ["--version"], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } });
    assert.equal(version.status, 0);
    assert.match(version.stdout, /^exota-milter \d+\.\d+\.\d+\S* \(bun-linux-\w+, Bun \d+\.\d+\.\d+\)\n$/);
    const env = parseEnvFile(readFileSync(at(ENV_FILE), "utf8"));
    assert.equal(env.MILTER_POLICY_FILE, "/etc/exota-milter/policy.json", "the env file points at the installed policy");
    const r = await runMilter(["check"], { ...env, MILTER_POLICY_FILE: at(POLICY) });
    assert.equal(r.code, 0, r.output);
    assert.ok(r.output.split("\n").includes("  4 domain(s), valid"), r.output);
    assert.ok(r.output.split("\n").includes("  MILTER_REPORT_ONLY=true  (environment)"), r.output);
  });

  it("a second install keeps a modified env file and policy, and replaces the binary", T, () => {
    writeFileSync(at(ENV_FILE), "# mine\nMILTER_POLICY_FILE=/etc/exota-milter/policy.json\nMILTER_REPORT_ONLY=false\n");
    writeFileSync(at(POLICY), '{ "mine.example": {} }\n');
    writeFileSync(at("usr/local/bin/exota-milter"), "#!/bin/sh\necho old\n");
    const r = sh(join(PACKAGING, "install.sh"), [BINARY], { DESTDIR: dest });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /install.sh: keeping existing \/etc\/exota-milter\/exota-milter.env\n/);
    assert.match(r.out, /install.sh: keeping existing \/etc\/exota-milter\/policy.json\n/);
    assert.equal(readFileSync(at(ENV_FILE), "utf8"), "# mine\nMILTER_POLICY_FILE=/etc/exota-milter/policy.json\nMILTER_REPORT_ONLY=false\n");
    assert.equal(readFileSync(at(POLICY), "utf8"), '{ "mine.example": {} }\n');
    assert.equal(sha256(at("usr/local/bin/exota-milter")), sha256(BINARY));
  });

  it("uninstall.sh removes the binary, units, README and man page, and keeps /etc/exota-milter", () => {
    const r = sh(join(PACKAGING, "uninstall.sh"), [], { DESTDIR: dest });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /uninstall.sh: removed from .*; \/etc\/exota-milter was kept\n$/);
    for (const p of ["usr/local/bin/exota-milter", "etc/systemd/system/exota-milter.service", "etc/systemd/system/exota-milter.socket", "usr/local/share/doc/exota-milter", "usr/local/share/man/man8/exota-milter.8"]) {
      assert.equal(existsSync(at(p)), false, `${p} still there`);
    }
    assert.equal(readFileSync(at(ENV_FILE), "utf8"), "# mine\nMILTER_POLICY_FILE=/etc/exota-milter/policy.json\nMILTER_REPORT_ONLY=false\n");
    assert.equal(readFileSync(at(POLICY), "utf8"), '{ "mine.example": {} }\n');
    // Twice is fine.
    assert.equal(sh(join(PACKAGING, "uninstall.sh"), [], { DESTDIR: dest }).code, 0);
  });

  it("a binary that cannot run here (another CPU), not executable yet: installed 0755, the man page beside it, or none", T, () => {
    const dir = scratchDir();
    const foreign = join(dir, "exota-milter");
    // Not executable, as a download is: installed 0755 all the same.
    writeFileSync(foreign, "#!/bin/sh\nexit 126\n", { mode: 0o644 });
    const root = join(dir, "root");
    let r = sh(join(PACKAGING, "install.sh"), [foreign], { DESTDIR: root });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /\ninstall.sh: no man page: .* --man did not run here and there is no exota-milter.8 beside it\n/);
    assert.equal(existsSync(join(root, "usr/local/share/man/man8/exota-milter.8")), false);
    assert.equal(mode(join(root, "usr/local/bin/exota-milter")), "755");
    writeFileSync(join(dir, "exota-milter.8"), ".TH EXOTA-MILTER 8\n");
    r = sh(join(PACKAGING, "install.sh"), [foreign], { DESTDIR: root });
    assert.equal(r.code, 0, r.out);
    assert.equal(readFileSync(join(root, "usr/local/share/man/man8/exota-milter.8"), "utf8"), ".TH EXOTA-MILTER 8\n");
  });

  it("install.sh without a built binary fails with a message and installs nothing", () => {
    const empty = join(scratchDir(), "root");
    const missing = join(scratchDir(), "exota-milter");
    const r = sh(join(PACKAGING, "install.sh"), [missing], { DESTDIR: empty });
    assert.equal(r.code, 1);
    assert.equal(r.out, `install.sh: ${missing} not found; run npm run build first\n`);
    assert.equal(existsSync(empty), false);
  });
});

describe("systemd units", BUN_ONLY, () => {
  const service = readFileSync(join(UNITS, "exota-milter.service"), "utf8");
  const socket = readFileSync(join(UNITS, "exota-milter.socket"), "utf8");

  const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
  const haveAnalyze = analyze.status === 0;

  it("pass systemd-analyze verify (binary path replaced by dist/exota-milter), without a warning", (t) => {
    if (!haveAnalyze) {
      t.skip("systemd-analyze is not installed (Debian package systemd)");
      return;
    }
    const dir = scratchDir();
    assert.equal(service.match(/\/usr\/local\/bin\/exota-milter/g)?.length, 1, "one ExecStart with the installed path");
    writeFileSync(join(dir, "exota-milter.service"), service.replace("/usr/local/bin/exota-milter", BINARY));
    copyFileSync(join(UNITS, "exota-milter.socket"), join(dir, "exota-milter.socket"));
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", "exota-milter.socket", "exota-milter.service"], {
      cwd: dir,
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.equal(`${r.stdout}${r.stderr}`, "", "no warnings (unknown keys are only warnings)");
  });

  it("systemd-analyze verify does notice a broken unit (the check above can fail)", (t) => {
    if (!haveAnalyze) {
      t.skip("systemd-analyze is not installed (Debian package systemd)");
      return;
    }
    const dir = scratchDir();
    writeFileSync(join(dir, "exota-milter.service"), service);
    copyFileSync(join(UNITS, "exota-milter.socket"), join(dir, "exota-milter.socket"));
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", "exota-milter.socket", "exota-milter.service"], { cwd: dir, encoding: "utf8" });
    assert.notEqual(r.status, 0);
    assert.match(`${r.stdout}${r.stderr}`, /\/usr\/local\/bin\/exota-milter is not executable/);
  });

  it("the service runs the daemon with the installed env file, reloads by SIGHUP, waits longer than the shutdown timeout", () => {
    assert.deepEqual(unitValues(service, "Service", "ExecStart"), ["/usr/local/bin/exota-milter run"]);
    assert.deepEqual(unitValues(service, "Service", "EnvironmentFile"), ["/etc/exota-milter/exota-milter.env"]);
    assert.deepEqual(unitValues(service, "Service", "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert.deepEqual(unitValues(service, "Unit", "Requires"), ["exota-milter.socket"]);
    const stop = unitValues(service, "Service", "TimeoutStopSec");
    assert.equal(stop.length, 1);
    assert.ok(parseInt(stop[0]!, 10) > 10, `TimeoutStopSec=${stop[0]} must exceed MILTER_SHUTDOWN_TIMEOUT's default 10 s`);
  });

  it("the socket unit listens where the README and Postfix expect, and passes the sockets under one name", () => {
    assert.deepEqual(unitValues(socket, "Socket", "ListenStream"), ["127.0.0.1:4321", "/run/exota-milter/exota-milter.sock"]);
    // systemd.socket(5): FileDescriptorName= names all sockets of the unit; a
    // second assignment does not name the second socket, it renames both.
    assert.ok(unitValues(socket, "Socket", "FileDescriptorName").length <= 1, "one FileDescriptorName= at most per socket unit");
    assert.deepEqual(unitValues(socket, "Socket", "Accept"), [], "one daemon for all connections (Accept=no)");
  });

  describe("the compiled binary serves the sockets as this unit passes them", () => {
    const started: Array<{ stop(): Promise<number | null> }> = [];
    after(async () => {
      for (const p of started) await p.stop();
    });

    it("TCP and unix under the unit's socket name", async () => {
      const name = unitValues(socket, "Socket", "FileDescriptorName")[0] ?? "exota-milter.socket";
      const port = await freePort();
      const path = join(scratchDir(), "exota-milter.sock");
      const policy = join(scratchDir(), "policy.json");
      copyFileSync(join(ROOT, "policy.example.json"), policy);
      const proc = await startMilter({
        command: ["python3", join(ROOT, "tests/lib/socket-activate.py"), "--tcp", `${name}=127.0.0.1:${port}`, "--unix", `${name}=${path}`, "--", BINARY, "run"],
        env: {
          MILTER_POLICY_FILE: policy,
          MILTER_DKIM_ENABLED: "true",
          MILTER_TRUSTED_AUTHSERVID: "dkim.relay.example",
          LOG_FORMAT: "journal",
          JOURNAL_STREAM: "8:1",
        },
      });
      started.push(proc);
      assert.match(proc.log(), new RegExp(`^<6>exota-milter: \\S+ \\S+ listening on "systemd:${name.replace(/[.]/g, "\\.")}, systemd:${name.replace(/[.]/g, "\\.")}"`, "m"));
      for (const target of [{ host: "127.0.0.1", port }, { path }] as Target[]) {
        const c = await MilterClient.connect(target);
        try {
          assert.deepEqual(await c.sendMessage(message({ queueId: "PKG1", authResults: [dkimPass("tenant.example", "dkim.relay.example")] })), accepted(0));
          assert.deepEqual(
            await c.sendMessage(message({ queueId: "PKG2", session: false, from: "x@unknown.example" })),
            rejected("PKG2", "No policy for 5322.from_domain unknown.example"),
          );
          await c.quit();
        } finally {
          c.destroy();
        }
      }
      assert.equal(await proc.stop(), 0);
    });
  });
});

// mimalloc's option, and the thread that hands memory back, are Bun's: under Deno the setting does nothing.
describe("the service's environment", { skip: RUNTIME === "deno" ? "Bun's allocator only" : undefined }, () => {
  /** Names of the threads of a milter started with `extra` on top of a plain environment. */
  const threadsWith = async (extra: Record<string, string>): Promise<string[]> => {
    const proc = await startMilter({
      env: { MILTER_POLICY_FILE: join(ROOT, "policy.example.json"), MILTER_SOCKET: `unix:${join(scratchDir(), `t${Math.random()}.sock`)}`, ...extra },
    });
    try {
      const dir = `/proc/${proc.child.pid}/task`;
      return readdirSync(dir).map((t) => readFileSync(join(dir, t, "comm"), "utf8").trim());
    } finally {
      await proc.stop();
    }
  };

  it("keeps freed memory: MIMALLOC_PURGE_DELAY=-1 takes effect in the runtime this executable carries", async () => {
    const env = serviceEnvironment();
    assert.equal(env.MIMALLOC_PURGE_DELAY, "-1");
    // Without it Bun's allocator runs a thread that hands freed pages back after each message;
    // if a Bun upgrade renames the option, the thread comes back and this fails.
    assert.ok((await threadsWith({})).includes("mi-scavenger"), "the default has the scavenger thread");
    assert.ok(!(await threadsWith(env)).includes("mi-scavenger"), "the service's environment turns it off");
  });
});
