/**
 * What a configuration makes the daemon touch, so that a runtime that grants
 * access per resource (Deno) can say at start, in one line, what it would
 * refuse later (runtime-api.ts `refused`).
 * @module
 */
import type { Config } from "../config.ts";
import { directoryOf } from "./policy-provider.ts";
import type { Access } from "./runtime-api.ts";
import { hostPort } from "./socket-spec.ts";

/** Where an LDAP URI connects to: host and port, the scheme's port when none is given. */
function ldapTarget(uri: string): string {
  const url = new URL(uri);
  return `${url.hostname}:${url.port || (url.protocol === "ldaps:" ? "636" : "389")}`;
}

/** The variables of systemd socket activation: read before anything else is known. */
export const ACTIVATION_ENV: readonly Access[] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"].map((target) => ({
  kind: "env",
  target,
  why: "systemd socket activation",
}));

/** Everything `runDaemon` will touch with this configuration; `activated` = sockets from systemd. */
export function accessNeeded(config: Config, activated: boolean): Access[] {
  const needs: Access[] = [];
  const s = config.socket;
  // Inherited sockets are open already.
  if (!activated && s.kind === "tcp") needs.push({ kind: "net", target: hostPort(s.host, s.port), why: "MILTER_SOCKET" });
  if (!activated && s.kind === "unix") {
    // Deno asks for all three for a unix socket: replacing a stale file, binding, chmod.
    for (const kind of ["read", "write"] as const) needs.push({ kind, target: s.path, why: "MILTER_SOCKET" });
    needs.push({ kind: "net", target: `unix:${s.path}`, why: "MILTER_SOCKET" });
  }
  if (config.ldap === undefined) {
    needs.push({ kind: "read", target: config.policyFile, why: "MILTER_POLICY_FILE" });
    if (config.policyWatch) needs.push({ kind: "read", target: directoryOf(config.policyFile), why: "MILTER_POLICY_WATCH watches the directory" });
  } else {
    for (const uri of config.ldap.uris) needs.push({ kind: "net", target: ldapTarget(uri), why: "MILTER_LDAP_SERVER_URI" });
    if (config.ldap.caFile !== "") needs.push({ kind: "read", target: config.ldap.caFile, why: "MILTER_LDAP_CA_FILE" });
    if (config.ldap.bindPasswordFile !== "") needs.push({ kind: "read", target: config.ldap.bindPasswordFile, why: "MILTER_LDAP_BINDPW_FILE" });
  }
  if (config.metricsListen !== undefined) {
    needs.push({ kind: "net", target: hostPort(config.metricsListen.host, config.metricsListen.port), why: "MILTER_METRICS_LISTEN" });
  }
  return needs;
}
