/**
 * A real Sendmail in the e2e chain, next to the Postfix one:
 *
 *   swaks (plays Exchange Online: STARTTLS, client certificate)
 *     -> private Sendmail daemon (one port per route, each with its own InputMailFilters)
 *     -> OpenDKIM of the Chain, then exota-milter
 *     -> smtp-sink of the Chain.
 *
 * Debian's sendmail-bin conflicts with postfix, so the .debs are only unpacked
 * (scripts/sendmail-unpacked.sh, run by scripts/test-deps.sh) and the .cf is
 * built from the .mc with m4. Sendmail wants a qualified host name: it runs in
 * a private UTS and mount namespace (`unshare -u -m`) with the host name
 * mx.e2e.test and its own /etc/hosts bound over the real one; nothing outside
 * the chain's folder changes. It runs in the foreground (-bD) as a child of the
 * test, and is stopped by its PID.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Chain, connectable, exec, waitUntil } from "./chain.ts";
import { freePort } from "../lib/milter-process.ts";
import { SENDMAIL_VERIFY_MACRO_LINE } from "../../src/policy/decide.ts";

/** Where scripts/sendmail-unpacked.sh leaves Debian's Sendmail. */
export const SENDMAIL_ROOT = join(process.env.EXOTA_E2E_SENDMAIL ?? "/var/cache/exota-milter-e2e/sendmail", "root");
const SENDMAIL = join(SENDMAIL_ROOT, "usr/libexec/sendmail/sendmail");
const CF_DIR = join(SENDMAIL_ROOT, "usr/share/sendmail/cf");


export interface SendmailOptions {
  /** A name for the instance's folder and log. */
  readonly name: string;
  /** Add {verify} to the HELO macros with the line exota-milter's WARNING and README give. */
  readonly verifyMacro: boolean;
  /** Route name -> milters in order, as Sendmail's InputMailFilters sockets ("opendkim" names the chain's OpenDKIM). */
  readonly routes: Record<string, readonly string[]>;
}

export class Sendmail {
  readonly #ports = new Map<string, number>();
  #child: ChildProcess | undefined;
  #output = "";
  /** The test process is exiting without stop(): kill the daemon by its PID. */
  readonly #onExit = () => {
    if (this.#child?.pid !== undefined && this.#child.exitCode === null) {
      try {
        process.kill(this.#child.pid, "SIGKILL");
      } catch { /* gone */ }
    }
  };

  private constructor(readonly dir: string) {}

  static async start(chain: Chain, opts: SendmailOptions): Promise<Sendmail> {
    for (const f of [SENDMAIL, join(CF_DIR, "m4/cf.m4")]) {
      if (!existsSync(f)) throw new Error(`missing ${f}: run scripts/test-deps.sh as root (it unpacks Sendmail)`);
    }
    const sm = new Sendmail(join(chain.dir, `sendmail-${opts.name}`));
    await sm.#configure(chain, opts);
    await sm.#run();
    return sm;
  }

  async #configure(chain: Chain, opts: SendmailOptions): Promise<void> {
    const dir = this.dir;
    mkdirSync(join(dir, "queue"), { recursive: true });
    chmodSync(join(dir, "queue"), 0o700);
    writeFileSync(join(dir, "hosts"), "127.0.0.1\tmx.e2e.test localhost\n");
    // Host names from the hosts file only: no DNS lookups (there is no DNS here).
    writeFileSync(join(dir, "service.switch"), "hosts\tfiles\naliases\tfiles\n");
    writeFileSync(join(dir, "aliases"), "");
    const milters = new Map<string, string>();
    const socketOf = (m: string) => (m === "opendkim" ? `local:${chain.opendkimSocket}` : m);
    const daemons: string[] = [];
    for (const [route, list] of Object.entries(opts.routes)) {
      const port = await freePort();
      this.#ports.set(route, port);
      const names = list.map((m) => {
        const name = m === "opendkim" ? "opendkim" : `exota${milters.size}`;
        if (!milters.has(m)) milters.set(m, name);
        return milters.get(m)!;
      });
      daemons.push(`DAEMON_OPTIONS(\`Port=${port}, Addr=127.0.0.1, Name=${route}, InputMailFilters=${names.join(";")}')dnl`);
    }
    const tls = chain.pki;
    const mc = [
      "divert(-1)dnl",
      "divert(0)dnl",
      `define(\`_CF_DIR_', \`${CF_DIR}/')dnl`,
      "VERSIONID(`exota-milter e2e')dnl",
      "OSTYPE(`linux')dnl",
      "define(`confDOMAIN_NAME', `mx.e2e.test')dnl",
      "define(`confDONT_PROBE_INTERFACES', `True')dnl",
      `define(\`confSERVICE_SWITCH_FILE', \`${dir}/service.switch')dnl`,
      `define(\`confHOSTS_FILE', \`${dir}/hosts')dnl`,
      `define(\`ALIAS_FILE', \`${dir}/aliases')dnl`,
      `define(\`QUEUE_DIR', \`${dir}/queue')dnl`,
      `define(\`STATUS_FILE', \`${dir}/statistics')dnl`,
      `define(\`confPID_FILE', \`${dir}/sendmail.pid')dnl`,
      "define(`confLOG_LEVEL', `14')dnl",
      // Relay everything to the chain's smtp-sink.
      "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
      `define(\`RELAY_MAILER_ARGS', \`TCP $h ${chain.sinkPort}')dnl`,
      `define(\`ESMTP_MAILER_ARGS', \`TCP $h ${chain.sinkPort}')dnl`,
      // STARTTLS; Sendmail asks every client for a certificate by default.
      `define(\`confCACERT_PATH', \`${join(chain.dir, "tls")}')dnl`,
      `define(\`confCACERT', \`${tls.ca}')dnl`,
      `define(\`confSERVER_CERT', \`${tls.server.cert}')dnl`,
      `define(\`confSERVER_KEY', \`${tls.server.key}')dnl`,
      // The chain's folder (OpenDKIM's socket) lives in /tmp, world-writable with the sticky bit.
      "define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl",
      ...(opts.verifyMacro ? [SENDMAIL_VERIFY_MACRO_LINE] : []),
      "FEATURE(`nocanonify')dnl",
      "FEATURE(`promiscuous_relay')dnl",
      "FEATURE(`accept_unresolvable_domains')dnl",
      "FEATURE(`no_default_msa')dnl",
      ...[...milters].map(([sock, name]) => `INPUT_MAIL_FILTER(\`${name}', \`S=${socketOf(sock)}, F=T, T=S:30s;R:30s;E:1m')dnl`),
      ...daemons,
      "MAILER(`local')dnl",
      "MAILER(`smtp')dnl",
      "",
    ].join("\n");
    writeFileSync(join(dir, "sendmail.mc"), mc);
    const r = await exec("m4", [join(CF_DIR, "m4/cf.m4"), join(dir, "sendmail.mc")]);
    if (r.code !== 0) throw new Error(`m4 failed (${r.code}):\n${r.stderr}`);
    writeFileSync(join(dir, "sendmail.cf"), r.stdout);
  }

  async #run(): Promise<void> {
    const dir = this.dir;
    // -bD: the daemon stays in the foreground, a child of the test; -L: its syslog name.
    const script = [
      "set -e",
      "hostname mx.e2e.test",
      `mount --bind ${dir}/hosts /etc/hosts`,
      `exec ${SENDMAIL} -bD -C ${dir}/sendmail.cf -L sendmail-e2e`,
    ].join("\n");
    const child = (this.#child = spawn("unshare", ["-u", "-m", "sh", "-c", script], { stdio: ["ignore", "pipe", "pipe"] }));
    process.once("exit", this.#onExit);
    child.stdout!.on("data", (d) => (this.#output += d));
    child.stderr!.on("data", (d) => (this.#output += d));
    for (const port of this.#ports.values()) {
      await waitUntil(`sendmail on ${port}`, () => {
        if (child.exitCode !== null) throw new Error(`sendmail exited (${child.exitCode}):\n${this.#output}`);
        return connectable({ host: "127.0.0.1", port });
      }, 15_000, 100);
    }
  }

  port(route: string): number {
    const p = this.#ports.get(route);
    if (p === undefined) throw new Error(`no Sendmail route ${route}`);
    return p;
  }

  cf(): string {
    return readFileSync(join(this.dir, "sendmail.cf"), "utf8");
  }

  /** Stops the daemon (SIGTERM to its PID; Sendmail passes it to its children), SIGKILL after 3 s. */
  async stop(): Promise<void> {
    const child = this.#child;
    process.off("exit", this.#onExit);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 3000);
    await exited;
    clearTimeout(t);
  }
}
