/**
 * npm run release: both executables and both Debian packages with
 * SHA256SUMS; each executable (arm64 under qemu-user) answers --version and
 * decides a valid and a forged message; lintian; and, as root, the amd64
 * package on this machine: install, check with its files, reinstall and
 * upgrade keeping an edited policy, remove, purge. That part takes a lock
 * (dpkg is shared by every test run on the machine) and ends with a purge.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, existsSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { accepted, addedHeader, ALL_CHECKS_ENV, dkimPass, message, policyFile, rejected, removeScratch, scratchDir, TRUSTED_CN } from "../lib/fixtures.ts";
import { MilterClient } from "../lib/milter-client.ts";
import { freePort, ROOT, startMilter } from "../lib/milter-process.ts";

after(removeScratch);

const PATH = process.env.PATH ?? "/usr/bin:/bin";

function run(cmd: string, args: readonly string[], opts: { env?: Record<string, string>; cwd?: string; timeout?: number } = {}) {
  const r = spawnSync(cmd, [...args], {
    encoding: "utf8",
    env: { PATH, ...opts.env },
    cwd: opts.cwd,
    timeout: opts.timeout ?? 120_000,
    stdio: ["ignore", "pipe", "pipe"],
    maxBuffer: 64 << 20,
  });
  if (r.error !== undefined) throw new Error(`${cmd}: ${r.error.message} (scripts/test-deps.sh installs the test's Debian packages)`);
  return { code: r.status, out: r.stdout, err: r.stderr, all: `${r.stdout}${r.stderr}` };
}

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** The release, built by the first test. */
const release = { dir: "", version: "", debVersion: "" };
const exe = (arch: string) => join(release.dir, `exota-milter-${release.version}-linux-${arch}`);
const deb = (arch: string) => join(release.dir, `exota-milter_${release.debVersion}_${arch}.deb`);

describe("npm run release", () => {
  it("builds both executables, both Debian packages and SHA256SUMS over the four", { timeout: 900_000 }, () => {
    release.dir = join(scratchDir(), "release");
    // A strict umask must not leak into the packages' modes.
    const r = run("sh", ["-c", 'umask 077 && exec npm run --silent release -- --out "$0"', release.dir], { cwd: ROOT, timeout: 900_000, env: { HOME: process.env.HOME ?? "/root" } });
    assert.equal(r.code, 0, r.all);
    const names = readdirSync(release.dir).sort();
    const m = /^exota-milter-(.+)-linux-x64$/.exec(names.find((n) => n.endsWith("-linux-x64")) ?? "");
    assert.ok(m, names.join(" "));
    release.version = m[1]!;
    release.debVersion = `${release.version}-1`;
    const v = release.version;
    assert.deepEqual(names, [
      "SHA256SUMS",
      `exota-milter-${v}-linux-arm64`,
      `exota-milter-${v}-linux-x64`,
      `exota-milter_${v}-1_amd64.deb`,
      `exota-milter_${v}-1_arm64.deb`,
    ]);
    const check = run("sha256sum", ["--check", "--strict", "SHA256SUMS"], { cwd: release.dir });
    assert.equal(check.code, 0, check.all);
    assert.deepEqual(check.out.split("\n").filter((l) => l !== "").sort(), names.slice(1).map((n) => `${n}: OK`));
    for (const a of ["x64", "arm64"]) assert.equal(statSync(exe(a)).mode & 0o777, 0o755);
  });
});

describe("the release executables", () => {
  for (const [arch, target] of [["x64", "bun-linux-x64-baseline"], ["arm64", "bun-linux-arm64"]] as const) {
    // arm64 runs here under user-mode emulation, with Debian's arm64 glibc.
    const command = () => (arch === "arm64" ? ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", exe(arch)] : [exe(arch)]);

    it(`${arch}: --version names the version, the target ${target} and the Bun version`, { timeout: 120_000 }, () => {
      const [cmd, ...args] = command();
      const r = run(cmd!, [...args, "--version"]);
      assert.equal(r.code, 0, r.all);
      assert.equal(r.out, `exota-milter ${release.version} (${target}, Bun ${process.versions.bun})\n`);
      // ELF e_machine: EM_X86_64 62, EM_AARCH64 183.
      const header = Buffer.alloc(20);
      const fd = openSync(exe(arch), "r");
      readSync(fd, header, 0, 20, 0);
      closeSync(fd);
      assert.equal(header.readUInt16LE(18), arch === "x64" ? 62 : 183);
    });

    it(`${arch}: accepts a valid message and rejects a forged one`, { timeout: 240_000 }, async () => {
      const port = await freePort();
      const proc = await startMilter({
        command: command(),
        env: { ...ALL_CHECKS_ENV, MILTER_SOCKET: `inet:${port}@127.0.0.1`, MILTER_POLICY_FILE: policyFile() },
        readyTimeoutMs: 180_000,
      });
      try {
        const c = await MilterClient.connect({ host: "127.0.0.1", port });
        try {
          assert.deepEqual(
            await c.sendMessage(message({ queueId: "REL1", cn: TRUSTED_CN, extraHeaders: [["X-ExOTA-Authentication-Results", "forged"]] })),
            accepted(1, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509: true, forwarded: false })),
          );
          // The sender's own "pass" for the trusted verifier, below Exchange Online's Received headers.
          assert.deepEqual(
            await c.sendMessage(
              message({ queueId: "REL2", session: false, cn: TRUSTED_CN, authResults: [], extraHeaders: [["Authentication-Results", dkimPass("tenant.example")]] }),
            ),
            rejected("REL2", "No valid DKIM authentication results found"),
          );
          await c.quit();
        } finally {
          c.destroy();
        }
      } finally {
        assert.equal(await proc.stop(), 0, proc.log());
      }
    });
  }
});

describe("the Debian packages", () => {
  it("hold root's files: directories 0755, files 0644, the executable 0755, the settings 0640", { timeout: 60_000 }, () => {
    for (const arch of ["amd64", "arm64"]) {
      const listing = run("dpkg-deb", ["--contents", deb(arch)]).out.trim().split("\n").map((l) => l.split(/\s+/));
      const odd = listing.filter(([perms, owner, , , , path]) => {
        const expected = perms!.startsWith("d")
          ? "drwxr-xr-x"
          : path === "./usr/sbin/exota-milter" ? "-rwxr-xr-x" : path!.startsWith("./etc/") ? "-rw-r-----" : "-rw-r--r--";
        return perms !== expected || owner !== "root/root";
      });
      assert.deepEqual(odd, [], arch);
      assert.ok(listing.length > 20, arch);
    }
  });

  it("lintian: no error and no warning but the ones the package explains (its lintian-overrides)", { timeout: 600_000 }, () => {
    const r = run("lintian", ["--fail-on", "error,warning", "--no-tag-display-limit", deb("amd64"), deb("arm64")], { timeout: 600_000 });
    assert.deepEqual(r.out.split("\n").filter((l) => /^[EW]: /.test(l)), []);
    assert.equal(r.code, 0, r.all);
  });
});

// Paths this package or its scripts may leave: compared before install and after purge.
const SEARCHED = ["/etc", "/usr/sbin", "/usr/lib/systemd", "/lib/systemd/", "/usr/share/doc", "/usr/share/man/man8", "/usr/share/lintian/overrides", "/var/lib/systemd", "/var/lib/dpkg/info"];
const exotaPaths = () =>
  run("find", [...SEARCHED.filter((d) => existsSync(d)), "-path", "*exota-milter*"]).out.split("\n").filter((l) => l !== "").sort();

const ENV_FILE = "/etc/exota-milter/exota-milter.env";
const POLICY = "/etc/exota-milter/policy.json";
const ENABLED_LINK = "/etc/systemd/system/sockets.target.wants/exota-milter.socket";
const readlink = (p: string) => {
  try {
    return readlinkSync(p);
  } catch {
    return undefined;
  }
};
const status = () => run("dpkg-query", ["-W", "-f", "${Status} ${Version}", "exota-milter"]).out;
const dpkg = (...args: string[]) => run("dpkg", args, { env: { DEBIAN_FRONTEND: "noninteractive" }, timeout: 300_000 });

/** The service's user and group, from the system databases. */
const account = (db: "passwd" | "group") => run("getent", [db, "exota-milter"]).out.trim().split(":");

/** KEY=VALUE lines, as EnvironmentFile= reads them. */
const envFile = (text: string) =>
  Object.fromEntries(text.split("\n").filter((l) => /^[A-Z_][A-Z0-9_]*=/.test(l)).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));

describe("the amd64 package on this machine (dpkg, as root)", () => {
  const asRoot = process.getuid?.() === 0;
  let lock: ChildProcess | undefined;
  let baseline: string[] = [];
  const T = { timeout: 300_000 };

  after(() => {
    // Whatever failed: nothing installed, nothing enabled is left.
    if (lock !== undefined) {
      if (status() !== "") dpkg("--purge", "exota-milter");
      if (readlink(ENABLED_LINK) === "/lib/systemd/system/exota-milter.socket") rmSync(ENABLED_LINK);
      lock.stdin!.end();
    }
  });

  it("installs: executable, units, settings, docs, man page, the user exota-milter; nothing enabled", { timeout: 900_000 }, async (t) => {
    if (!asRoot) return t.skip("installing a package needs root");
    // One test run at a time on this machine; the lock goes with this process.
    lock = spawn("flock", ["--exclusive", "--timeout", "800", join(tmpdir(), "exota-milter-dpkg-test.lock"), "sh", "-c", "echo locked; exec cat"], { stdio: ["pipe", "pipe", "inherit"] });
    await new Promise<void>((res, rej) => {
      lock!.stdout!.once("data", () => res());
      lock!.once("exit", (code) => rej(new Error(`flock exited ${code}`)));
    });
    if (status() !== "") dpkg("--purge", "exota-milter"); // left by a run that was killed
    baseline = exotaPaths();

    const r = dpkg("--install", deb("amd64"));
    assert.equal(r.code, 0, r.all);
    assert.doesNotMatch(r.all, /warning/i);
    assert.equal(status(), `install ok installed ${release.debVersion}`);
    const listed = run("dpkg", ["--listfiles", "exota-milter"]).out.split("\n").filter((p) => p !== "" && lstatSync(p).isFile()).sort();
    assert.deepEqual(listed, [
      ENV_FILE,
      POLICY,
      "/lib/systemd/system/exota-milter.service",
      "/lib/systemd/system/exota-milter.socket",
      "/usr/sbin/exota-milter",
      "/usr/share/doc/exota-milter/README.md.gz",
      "/usr/share/doc/exota-milter/changelog.Debian.gz",
      "/usr/share/doc/exota-milter/copyright",
      "/usr/share/doc/exota-milter/exota-milter.ldif",
      "/usr/share/doc/exota-milter/exota-milter.schema",
      "/usr/share/doc/exota-milter/sample-policies.ldif",
      "/usr/share/lintian/overrides/exota-milter",
      "/usr/share/man/man8/exota-milter.8.gz",
    ]);
    assert.equal(sha256("/usr/sbin/exota-milter"), sha256(exe("x64")));
    assert.equal(statSync("/usr/sbin/exota-milter").mode & 0o777, 0o755);
    assert.deepEqual(run("dpkg-query", ["-W", "-f", "${Conffiles}", "exota-milter"]).out.trim().split("\n").map((l) => l.trim().split(" ")[0]), [ENV_FILE, POLICY]);

    const [user, , uid, gid, , home, shell] = account("passwd");
    assert.equal(user, "exota-milter");
    assert.ok(Number(uid) < 1000, `a system user: uid ${uid}`);
    assert.deepEqual([home, shell], ["/nonexistent", "/usr/sbin/nologin"]);
    assert.equal(account("group")[2], gid);
    for (const f of [ENV_FILE, POLICY]) {
      const s = statSync(f);
      assert.deepEqual([s.mode & 0o777, s.uid, s.gid], [0o640, 0, Number(gid)], f);
    }

    const service = readFileSync("/lib/systemd/system/exota-milter.service", "utf8");
    assert.match(service, /^ExecStart=\/usr\/sbin\/exota-milter run$/m);
    assert.match(service, /^Documentation=man:exota-milter\(8\)$/m);
    assert.doesNotMatch(service + readFileSync("/lib/systemd/system/exota-milter.socket", "utf8"), /\/usr\/local/);
    const verify = run("systemd-analyze", ["verify", "--man=no", "/lib/systemd/system/exota-milter.socket", "/lib/systemd/system/exota-milter.service"]);
    assert.equal(verify.all, "");
    assert.equal(verify.code, 0);
    // Installing changes no mail path: the postmaster enables the socket.
    for (const unit of ["exota-milter.socket", "exota-milter.service"]) {
      assert.equal(run("systemctl", ["is-enabled", unit]).out, "disabled\n", unit);
    }
    assert.equal(run("man", ["-w", "exota-milter"]).out, "/usr/share/man/man8/exota-milter.8.gz\n");
    const page = run("man", ["exota-milter"], { env: { LC_ALL: "C.UTF-8", MANWIDTH: "80" } });
    assert.equal(page.code, 0, page.all);
    assert.match(page.out, /^EXOTA-MILTER\(8\) /);
  });

  it("exota-milter check works with the installed settings and policy, as the user exota-milter", T, (t) => {
    if (!asRoot) return t.skip("needs root");
    const env = envFile(readFileSync(ENV_FILE, "utf8"));
    assert.equal(env.MILTER_POLICY_FILE, POLICY);
    const r = run("runuser", ["-u", "exota-milter", "--", "/usr/sbin/exota-milter", "check"], { env });
    assert.equal(r.code, 0, r.all);
    assert.ok(r.out.split("\n").includes("  4 domain(s), valid"), r.out);
  });

  it("a reinstall and an upgrade keep the edited policy; the unedited settings follow the package, with their group", T, (t) => {
    if (!asRoot) return t.skip("needs root");
    const mine = '{ "mine.example": { "tenant_id": "1234abcd-18c5-45e8-88de-123456789abc" } }\n';
    writeFileSync(POLICY, mine);
    // As the postmaster would: purge must remove the link again.
    const enable = run("systemctl", ["enable", "exota-milter.socket"]);
    assert.equal(enable.code, 0, enable.all);
    assert.ok(existsSync(ENABLED_LINK));

    let r = dpkg("--install", deb("amd64"));
    assert.equal(r.code, 0, r.all);
    assert.equal(readFileSync(POLICY, "utf8"), mine);

    // The next version: the package's settings file changed, its policy not.
    const tree = join(scratchDir(), "next");
    assert.equal(run("dpkg-deb", ["--raw-extract", deb("amd64"), tree]).code, 0);
    const control = join(tree, "DEBIAN/control");
    writeFileSync(control, readFileSync(control, "utf8").replace(/^Version: .*$/m, `Version: ${release.version}-2`));
    const nextEnv = `${readFileSync(join(tree, "etc/exota-milter/exota-milter.env"), "utf8")}# the next version\n`;
    writeFileSync(join(tree, "etc/exota-milter/exota-milter.env"), nextEnv);
    const next = join(scratchDir(), "next.deb");
    assert.equal(run("dpkg-deb", ["--root-owner-group", "-Znone", "--build", tree, next]).code, 0);
    r = dpkg("--install", next);
    assert.equal(r.code, 0, r.all);
    assert.equal(status(), `install ok installed ${release.version}-2`);
    assert.equal(readFileSync(POLICY, "utf8"), mine);
    assert.equal(readFileSync(ENV_FILE, "utf8"), nextEnv);
    const gid = Number(account("group")[2]);
    for (const f of [ENV_FILE, POLICY]) assert.deepEqual([statSync(f).mode & 0o777, statSync(f).gid], [0o640, gid], f);
    assert.ok(existsSync(ENABLED_LINK), "an upgrade keeps what the postmaster enabled");
  });

  it("remove keeps the settings; purge removes them and the links enabling made, and keeps the user", T, (t) => {
    if (!asRoot) return t.skip("needs root");
    let r = dpkg("--remove", "exota-milter");
    assert.equal(r.code, 0, r.all);
    assert.equal(status(), `deinstall ok config-files ${release.version}-2`);
    for (const p of ["/usr/sbin/exota-milter", "/lib/systemd/system/exota-milter.service", "/usr/share/doc/exota-milter", "/usr/share/man/man8/exota-milter.8.gz"]) {
      assert.equal(existsSync(p), false, p);
    }
    assert.deepEqual(readdirSync("/etc/exota-milter").sort(), ["exota-milter.env", "policy.json"]);

    r = dpkg("--purge", "exota-milter");
    assert.equal(r.code, 0, r.all);
    assert.equal(status(), "");
    assert.equal(existsSync(ENABLED_LINK), false);
    assert.deepEqual(exotaPaths(), baseline);
    // Files may still belong to them (Debian keeps system users on purge).
    assert.equal(account("passwd")[0], "exota-milter");
  });
});
