/**
 * A throwaway OpenLDAP server (Debian's slapd) on a loopback port, with the
 * shipped schema and sample entries, for the LDAP backend tests. Stopped and
 * started again by its own PID only.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { freePort, ROOT, sleep, tempDir } from "./milter-process.ts";

export const BASE = "dc=example,dc=org";
export const BIND_DN = "uid=exota-milter,ou=apps,dc=example,dc=org";
export const BIND_PW = "milter-secret";

const SLAPD = "/usr/sbin/slapd";
const SCHEMA = "/etc/ldap/schema";

export interface Slapd {
  readonly url: string;
  readonly port: number;
  /** Adds entries (LDIF) while the server runs. */
  add(ldif: string): void;
  stop(): Promise<void>;
  /** Starts it again on the same port; does nothing while it runs. */
  start(): Promise<void>;
  /**
   * SIGSTOP, resolved once every thread of slapd has stopped: from then on
   * nothing is answered; connections are still accepted (by the kernel).
   */
  freeze(): Promise<void>;
  /** SIGCONT: it answers again, also what came in while frozen. */
  thaw(): void;
  /** Stops and removes everything. */
  destroy(): Promise<void>;
}

/** Settings that point exota-milter at the sample policies (ldap/sample-policies.ldif) of a running slapd. */
export function samplePolicyEnv(slapd: Slapd): Record<string, string> {
  return {
    MILTER_POLICY_SOURCE: "ldap",
    MILTER_LDAP_SERVER_URI: slapd.url,
    MILTER_LDAP_BINDDN: BIND_DN,
    MILTER_LDAP_BINDPW: BIND_PW,
    MILTER_LDAP_SEARCH_BASE: `ou=domains,${BASE}`,
    MILTER_LDAP_QUERY: "(&(objectClass=exotaMilterPolicy)(associatedDomain=%d))",
  };
}

/** The state letter of each thread of `pid` (/proc/PID/task/TID/stat), e.g. "TTT". */
function threadStates(pid: number): string {
  let states = "";
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // the thread ended meanwhile
    }
    // "TID (COMM) STATE ...": COMM may hold ") ", the state follows the last one.
    states += stat.charAt(stat.lastIndexOf(") ") + 2);
  }
  return states;
}

/**
 * Waits until every thread of `pid` is stopped (T). kill() returns once
 * SIGSTOP is queued for one thread; until that thread runs and stops the
 * others, they go on answering. Measured here: a search sent right after
 * kill() was answered 4 times in 40 at load 10, 20 in 60 at load 13; the
 * last thread stopped up to 265 ms after kill().
 */
async function stopped(pid: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  let states;
  while (/[^T]/.test(states = threadStates(pid))) {
    if (Date.now() > until) throw new Error(`slapd ${pid} not stopped ${timeoutMs} ms after SIGSTOP: thread states ${states}`);
    await sleep(1);
  }
}

function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  return new Promise((res, rej) => {
    const attempt = () => {
      const s = connect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.destroy();
        res();
      });
      s.once("error", () => {
        if (Date.now() > until) rej(new Error(`slapd did not listen on ${port}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

export async function startSlapd(extraLdif = ""): Promise<Slapd> {
  const dir = tempDir("exota-slapd-");
  const port = await freePort();
  const conf = join(dir, "slapd.conf");
  writeFileSync(
    conf,
    [
      `include ${SCHEMA}/core.schema`,
      `include ${SCHEMA}/cosine.schema`,
      `include ${join(ROOT, "ldap/exota-milter.schema")}`,
      `pidfile ${dir}/slapd.pid`,
      "moduleload back_mdb",
      "database mdb",
      `suffix "${BASE}"`,
      `rootdn "cn=admin,${BASE}"`,
      "rootpw admin-secret",
      `directory ${dir}`,
      "maxsize 10485760",
      `access to attrs=userPassword by anonymous auth by * none`,
      `access to * by dn.exact="${BIND_DN}" read by * none`,
      "",
    ].join("\n"),
  );
  const ldif = [
    `dn: ${BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n`,
    `dn: ou=apps,${BASE}\nobjectClass: organizationalUnit\nou: apps\n`,
    `dn: ${BIND_DN}\nobjectClass: account\nobjectClass: simpleSecurityObject\nuid: exota-milter\nuserPassword: ${BIND_PW}\n`,
  ].join("\n") + "\n" + readFileSync(join(ROOT, "ldap/sample-policies.ldif"), "utf8") + "\n" + extraLdif;
  const ldifFile = join(dir, "init.ldif");
  writeFileSync(ldifFile, ldif);
  execFileSync("/usr/sbin/slapadd", ["-f", conf, "-l", ldifFile], { stdio: "pipe" });

  let child: ChildProcess | undefined;
  const url = `ldap://127.0.0.1:${port}`;
  const start = async () => {
    // Already running: a second slapd could not bind the port, and the handle would lose the first.
    if (child !== undefined && child.exitCode === null && child.signalCode === null) return;
    child = spawn(SLAPD, ["-f", conf, "-h", `${url}/`, "-d", "0"], { stdio: "ignore" });
    await waitForPort(port);
  };
  const stop = async () => {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null) return;
    const exited = new Promise((res) => c.once("exit", res));
    c.kill("SIGCONT"); // a frozen slapd could not act on SIGTERM
    c.kill("SIGTERM");
    const t = setTimeout(() => c.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(t);
  };
  await start();
  return {
    url,
    port,
    add(text: string) {
      const f = join(dir, "add.ldif");
      writeFileSync(f, text);
      execFileSync("/usr/bin/ldapadd", ["-x", "-H", url, "-D", `cn=admin,${BASE}`, "-w", "admin-secret", "-f", f], { stdio: "pipe" });
    },
    stop,
    start,
    async freeze() {
      const c = child;
      if (c?.pid === undefined || c.exitCode !== null || c.signalCode !== null) throw new Error("slapd is not running");
      c.kill("SIGSTOP");
      await stopped(c.pid);
    },
    thaw: () => void child?.kill("SIGCONT"),
    async destroy() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
