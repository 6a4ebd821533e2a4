/**
 * The DKIM verifiers a postmaster may put in front of exota-milter instead of
 * OpenDKIM, as private instances on free loopback ports (Debian's packages;
 * their system services are never used): dkimpy-milter and Rspamd's proxy
 * worker in milter mode. Both verify offline, with the chain's key given as
 * an override instead of DNS. The Chain stops them.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Chain } from "./chain.ts";
import { freePort } from "../lib/milter-process.ts";

export const DKIMPY_AUTHSERVID = "dkimpy.e2e.test";

/** dkimpy-milter, verify only; every key lookup answers with tenant.example's key (DNSOverride). Returns its port. */
export async function startDkimpy(chain: Chain): Promise<number> {
  const port = await freePort();
  const conf = join(chain.dir, "dkimpy-milter.conf");
  writeFileSync(
    conf,
    [
      "Mode v",
      `Socket inet:${port}@127.0.0.1`,
      `AuthservID ${DKIMPY_AUTHSERVID}`,
      // Loopback counts as internal by default, and internal mail is not verified.
      "InternalHosts 192.0.2.1",
      "Syslog no",
      `PidFile ${join(chain.dir, "dkimpy-milter.pid")}`,
      `DNSOverride ${chain.dkimRecord("tenant.example")}`,
      "",
    ].join("\n"),
  );
  await chain.startPeer("/usr/bin/dkimpy-milter", [conf], { host: "127.0.0.1", port });
  return port;
}

/**
 * Rspamd's proxy worker in milter mode, scanning itself (self_scan), with
 * Debian's configuration and a private LOCAL_CONFDIR, run and data folders.
 * Returns its port. Its authserv-id is the MTA's name (the milter macro `j`:
 * Postfix's myhostname).
 */
export async function startRspamd(chain: Chain): Promise<number> {
  const port = await freePort();
  const dir = join(chain.dir, "rspamd");
  for (const d of ["local.d", "override.d", "run", "db", "log"]) mkdirSync(join(dir, d), { recursive: true });
  const files: Record<string, string> = {
    "override.d/worker-proxy.inc": `bind_socket = "127.0.0.1:${port}";\nmilter = yes;\ntimeout = 120s;\nupstream "local" {\n  default = yes;\n  self_scan = yes;\n}\ncount = 1;\n`,
    "override.d/worker-normal.inc": "enabled = false;\n",
    "override.d/worker-controller.inc": "enabled = false;\n",
    "override.d/logging.inc": 'type = "console";\nlevel = "info";\n',
    // Start-up in seconds rather than minutes: a two-entry TLD list instead of
    // 9,600 suffixes, no hyperscan compiler in the background, no fuzzy
    // servers to resolve. DKIM keys come from fake DNS records; every other
    // query goes to a loopback port where nothing answers.
    "tld.dat": "example\ntest\n",
    "local.d/options.inc": [
      `url_tld = "${join(dir, "tld.dat")}";`,
      "disable_hyperscan = true;",
      "dns {",
      `  nameserver = ["127.0.0.1:${await freePort()}"];`,
      "  timeout = 0.2s;",
      "  retransmits = 1;",
      `  fake_records = [{ name = "sel._domainkey.tenant.example"; type = "txt"; replies = [${JSON.stringify(chain.dkimRecord("tenant.example"))}]; }];`,
      "}",
      "",
    ].join("\n"),
    "local.d/fuzzy_check.conf": "enabled = false;\n",
    // Loopback is a local address: Rspamd skips DKIM checks and headers for local senders by default.
    "local.d/dkim.conf": "check_local = true;\ncheck_authed = true;\n",
    "local.d/milter_headers.conf": 'use = ["authentication-results"];\nskip_local = false;\nskip_authenticated = false;\n',
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  execFileSync("chown", ["-R", "_rspamd:_rspamd", dir]);
  const vars = { LOCAL_CONFDIR: dir, RUNDIR: join(dir, "run"), DBDIR: join(dir, "db"), LOGDIR: join(dir, "log") };
  await chain.startPeer(
    "/usr/bin/rspamd",
    ["-f", "-c", "/etc/rspamd/rspamd.conf", "-u", "_rspamd", "-g", "_rspamd", ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}=${v}`])],
    { host: "127.0.0.1", port },
    // It loads every Lua rule before it listens: ~5 s, more on a busy machine.
    60_000,
  );
  return port;
}

/** Rspamd names the MTA in its Authentication-Results: here the chain's Postfix (myhostname). */
export const RSPAMD_AUTHSERVID = "mx.e2e.test";
