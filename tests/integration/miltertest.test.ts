/**
 * Runs the miltertest (OpenDKIM's Lua-scripted milter client, Debian package
 * `miltertest`) scenarios of tests/miltertest/ against the compiled
 * dist/exota-milter: one milter process per configuration, every script of
 * that configuration against it. A script fails with error(); its output and
 * the milter's log lines of that run are shown then.
 *
 *   npx bun build.ts && npx bun test tests/integration/miltertest.test.ts
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BINARY, freePort, type MilterProcess, ROOT, RUNTIME, startMilter, tempDir, writePolicy } from "../lib/milter-process.ts";
import { ALL_CHECKS_ENV } from "../lib/fixtures.ts";

const MILTERTEST = "/usr/bin/miltertest";
const SCRIPTS = join(ROOT, "tests/miltertest");
const LIB = join(SCRIPTS, "lib.lua");

/** The authserv-id of the DKIM verifier that runs before the milter. */
const TRUSTED = "dkim-verify.smarthost.example";
/** The authserv-id the milter writes into its own header. */
const AUTHSERVID = "smarthost.example";
const ALLOWLISTED = "192.0.2.25";
const ALLOWLISTED6 = "2001:db8::25";

/** Everything on, as in the README's recommended set-up. */
const STRICT: Record<string, string> = {
  ...ALL_CHECKS_ENV,
  MILTER_TRUSTED_AUTHSERVID: TRUSTED,
  MILTER_X509_IP_WHITELIST: `${ALLOWLISTED}, ${ALLOWLISTED6}`,
  MILTER_AUTHSERVID: AUTHSERVID,
};

interface Group {
  readonly name: string;
  readonly socket: "inet" | "unix";
  readonly env: Record<string, string>;
  readonly scripts: readonly string[];
}

const GROUPS: readonly Group[] = [
  {
    name: "strict",
    socket: "inet",
    env: STRICT,
    scripts: [
      "01-valid-tenant.lua",
      "02-forged-header-removed.lua",
      "03-x509.lua",
      "04-from-missing.lua",
      "05-no-policy.lua",
      "06-forwarded.lua",
      "07-tenant-id.lua",
      "08-dkim.lua",
      "09-connection-reuse.lua",
    ],
  },
  { name: "unix", socket: "unix", env: STRICT, scripts: ["10-unix-socket.lua"] },
  {
    name: "relaxed",
    socket: "inet",
    env: {
      MILTER_DKIM_ENABLED: "true",
      MILTER_DKIM_ALIGNMENT_REQUIRED: "false",
      MILTER_TRUSTED_AUTHSERVID: TRUSTED,
      MILTER_ADD_HEADER: "true",
      MILTER_AUTHSERVID: AUTHSERVID,
    },
    scripts: ["11-global-relaxed.lua"],
  },
  { name: "defaults", socket: "inet", env: {}, scripts: ["12-defaults.lua"] },
];

interface Run {
  readonly code: number | null;
  readonly output: string;
}

/** Runs one script; stdout and stderr go to one file, so the output keeps its order. */
function miltertest(script: string, vars: Record<string, string>, outDir: string): Promise<Run> {
  const args: string[] = [];
  for (const [k, v] of Object.entries(vars)) args.push("-D", `${k}=${v}`);
  args.push("-s", join(SCRIPTS, script));
  const outFile = join(outDir, `${script}.out`);
  const fd = openSync(outFile, "w");
  return new Promise((res) => {
    const child = spawn(MILTERTEST, args, { cwd: SCRIPTS, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    let finished = false;
    const done = (code: number | null, why = "") => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      res({ code, output: readFileSync(outFile, "utf8") + why });
    };
    child.once("error", (e) => done(null, `\n(${e.message})`));
    child.once("exit", (code, signal) => done(code, signal === null ? "" : `\n(killed by ${signal})`));
  });
}

for (const group of GROUPS) {
  describe(`miltertest: configuration "${group.name}"`, () => {
    let milter: MilterProcess | undefined;
    let socket = "";
    let dir = "";

    before(async () => {
      assert.ok(existsSync(MILTERTEST), `${MILTERTEST} is missing (Debian package miltertest)`);
      assert.ok(RUNTIME === "deno" || existsSync(BINARY), `${BINARY} is missing: run npx bun build.ts first`);
      dir = tempDir("exota-miltertest-");
      const policy = writePolicy(readFileSync(join(SCRIPTS, "policy.json"), "utf8"), dir);
      socket = group.socket === "unix" ? `unix:${join(dir, "milter.sock")}` : `inet:${await freePort()}@127.0.0.1`;
      milter = await startMilter({
        env: { ...group.env, MILTER_SOCKET: socket, MILTER_POLICY_FILE: policy, LOG_LEVEL: "debug" },
      });
    });

    after(async () => {
      await milter?.stop();
      if (dir !== "") rmSync(dir, { recursive: true, force: true });
    });

    for (const script of group.scripts) {
      test(script, async () => {
        assert.ok(milter, "the milter did not start");
        const logStart = milter.log().length;
        const vars: Record<string, string> = { socket, lib: LIB, allowlisted: ALLOWLISTED, allowlisted6: ALLOWLISTED6 };
        if (group.env.MILTER_AUTHSERVID !== undefined) vars.authservid = group.env.MILTER_AUTHSERVID;
        if (group.env.MILTER_TRUSTED_AUTHSERVID !== undefined) vars.trusted = group.env.MILTER_TRUSTED_AUTHSERVID;
        const run = await miltertest(script, vars, dir);
        const log = milter.log().slice(logStart);
        const details = `\n--- miltertest ${script} (exit ${run.code}) ---\n${run.output}\n--- milter log ---\n${log}`;
        assert.equal(run.code, 0, `miltertest ${script} failed${details}`);
        assert.equal(milter.child.exitCode, null, `the milter exited during ${script}${details}`);
        assert.doesNotMatch(log, /\b(ERROR|FATAL)\b/, `the milter logged an error during ${script}${details}`);
      });
    }
  });
}
