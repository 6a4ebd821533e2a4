/**
 * What a configuration makes the daemon touch (src/server/access.ts), which
 * Deno is asked about at start: each item as a Deno permission flag spells it.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Config, loadConfig } from "../../src/config.ts";
import { accessNeeded } from "../../src/server/access.ts";

function config(env: Record<string, string>): Config {
  const r = loadConfig([], env);
  if (!r.ok || r.command !== "run") return assert.fail(`unexpected: ${JSON.stringify(r)}`);
  return r.config;
}

/** The needs as `--allow-KIND=TARGET`, in order. */
const flags = (env: Record<string, string>, activated = false) => accessNeeded(config(env), activated).map((a) => `--allow-${a.kind}=${a.target}`);

describe("access a configuration needs", () => {
  it("defaults: the TCP socket, the policy file and, watched, its directory", () => {
    assert.deepEqual(flags({ MILTER_POLICY_FILE: "/etc/exota-milter/policy.json" }), [
      "--allow-net=127.0.0.1:4321",
      "--allow-read=/etc/exota-milter/policy.json",
      "--allow-read=/etc/exota-milter",
    ]);
  });

  it("a bare file name is watched in the working directory; no watch, no directory", () => {
    assert.deepEqual(flags({ MILTER_POLICY_FILE: "policy.json" }).slice(1), ["--allow-read=policy.json", "--allow-read=."]);
    assert.deepEqual(flags({ MILTER_POLICY_FILE: "/p.json", MILTER_POLICY_WATCH: "false" }).slice(1), ["--allow-read=/p.json"]);
  });

  it("a unix socket: read, write and net of its path; IPv6 addresses in brackets", () => {
    assert.deepEqual(flags({ MILTER_SOCKET: "local:/run/exota/m.sock", MILTER_POLICY_WATCH: "no" }).slice(0, 3), [
      "--allow-read=/run/exota/m.sock",
      "--allow-write=/run/exota/m.sock",
      "--allow-net=unix:/run/exota/m.sock",
    ]);
    assert.equal(flags({ MILTER_SOCKET: "inet6:25@::1" })[0], "--allow-net=[::1]:25");
    assert.equal(flags({ MILTER_METRICS_LISTEN: "[::1]:9799" }).at(-1), "--allow-net=[::1]:9799");
  });

  it("sockets from systemd need nothing for MILTER_SOCKET", () => {
    assert.deepEqual(flags({ MILTER_SOCKET: "unix:/run/m.sock", MILTER_POLICY_FILE: "/p.json", MILTER_POLICY_WATCH: "off" }, true), ["--allow-read=/p.json"]);
  });

  it("LDAP: each server with the scheme's port when none is given, the CA and password files; no policy file", () => {
    assert.deepEqual(
      flags({
        MILTER_POLICY_SOURCE: "ldap",
        MILTER_LDAP_SERVER_URI: "ldaps://ldap1.example, ldap://ldap2.example, ldap://[::1]:3890",
        MILTER_LDAP_SEARCH_BASE: "dc=example",
        MILTER_LDAP_QUERY: "(associatedDomain=%d)",
        MILTER_LDAP_CA_FILE: "/etc/ssl/ca.pem",
        MILTER_LDAP_BINDPW_FILE: "/run/credentials/pw",
      }).slice(1),
      [
        "--allow-net=ldap1.example:636",
        "--allow-net=ldap2.example:389",
        "--allow-net=[::1]:3890",
        "--allow-read=/etc/ssl/ca.pem",
        "--allow-read=/run/credentials/pw",
      ],
    );
  });
});
