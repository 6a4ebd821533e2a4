/**
 * `exota-milter check`: validates configuration and policy (the file, or a
 * bind and a query against the directory), prints what is in force.
 * Exit 0 when everything is usable, 1 otherwise.
 * @module
 */
import { connect } from "node:net";
import process from "node:process";
import type { Config } from "../config.ts";
import { encodeCommand } from "../milter/codec.ts";
import { Cmd, PROTOCOL_VERSION } from "../milter/protocol.ts";
import { dkimOffWarning } from "../policy/policy-file.ts";
import { inheritedFds, listenOn } from "../server/listen.ts";
import { listenHttp } from "../server/metrics.ts";
import type { PolicyProvider } from "../server/policy-provider.ts";
import { formatSocketSpec, type SocketSpec } from "../server/socket-spec.ts";

/** A domain no policy can have: the query runs, the answer is "not found". */
const PROBE_DOMAIN = "exota-milter-check.invalid";

/** An MTA's option negotiation: every action and step offered. */
const OPTNEG = encodeCommand({ type: "optneg", version: PROTOCOL_VERSION, actions: 0x1ff, protocol: 0x1fffff });

/**
 * Whether a milter answers option negotiation on the socket. Then "in use" is
 * a running milter (this one, or its systemd socket unit, which hands the
 * socket to run): checking a changed configuration on a live relay must not
 * fail on that. Anything else there that does not answer like a milter stays
 * an error.
 */
function milterAnswers(spec: SocketSpec, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = spec.kind === "unix" ? connect({ path: spec.path }) : connect({ host: spec.host, port: spec.port });
    let got = 0;
    const done = (answer: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on("connect", () => s.write(OPTNEG));
    // Only the reply's command byte (after the 4-byte length) matters; a milter answers optneg with optneg.
    s.on("data", (chunk: Uint8Array) => {
      for (const byte of chunk) if (got++ === 4) return done(byte === Cmd.OPTNEG);
    });
    s.on("error", () => done(false));
    s.on("close", () => done(false));
  });
}

/**
 * What `run` does short of serving: listen on the milter socket (resolving
 * its host name, replacing a stale unix socket file) and on the metrics
 * address, and let go at once. The errors are run's.
 */
async function tryListening(config: Config): Promise<{ errors: string[]; notes: string[] }> {
  const errors: string[] = [];
  const notes: string[] = [];
  if (inheritedFds(process.env, process.pid).length === 0) {
    try {
      (await listenOn(config.socket, config.socketMode, () => undefined)).close();
    } catch (e) {
      if (await milterAnswers(config.socket)) {
        notes.push(`${formatSocketSpec(config.socket)} is in use by a milter that answers (a running exota-milter or its socket unit?); run serves it once that one stops, or under socket activation`);
      } else {
        errors.push(`cannot listen: ${(e as Error).message}`);
      }
    }
  }
  if (config.metricsListen !== undefined) {
    const { host, port } = config.metricsListen;
    try {
      const server = await listenHttp(host, port);
      await new Promise((resolve) => server.close(resolve));
    } catch (e) {
      errors.push(`cannot listen: ${(e as Error).message}`);
    }
  }
  return { errors, notes };
}

export async function check(config: Config, policy: PolicyProvider, print: (line: string) => void): Promise<number> {
  print("settings in force:");
  for (const s of config.settings) print(`  ${s.env}=${s.value}  (${s.source})`);
  const { errors: listenErrors, notes } = await tryListening(config);
  for (const e of listenErrors) print(`error: ${e}`);
  for (const n of notes) print(`note: ${n}`);
  for (const w of config.warnings) print(`warning: ${w}`);
  print(`policy: ${policy.description}`);
  const entries = policy.entries();
  if (entries !== undefined) {
    print(`  ${entries} domain(s), valid`);
    if (!config.filter.tenantIdRequired) for (const d of policy.dkimOffDomains() ?? []) print(`  warning: ${dkimOffWarning(d)}`);
    return listenErrors.length > 0 ? 1 : 0;
  }
  const answer = await policy.lookup()(PROBE_DOMAIN);
  if (answer.kind === "backend_error") {
    print(`  query for ${PROBE_DOMAIN} failed: ${answer.reason}`);
    return 1;
  }
  print(`  bind and query for ${PROBE_DOMAIN} worked (answer: ${answer.kind.replace("_", " ")})`);
  return listenErrors.length > 0 ? 1 : 0;
}
