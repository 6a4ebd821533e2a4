/**
 * `exota-milter check`: validates configuration and policy (the file, or a
 * bind and a query against the directory), prints what is in force.
 * Exit 0 when everything is usable, 1 otherwise.
 * @module
 */
import { unlinkSync } from "node:fs";
import { createServer } from "node:http";
import { connect } from "node:net";
import process from "node:process";
import type { Config } from "../config.ts";
import { dkimOffWarning } from "../policy/policy-file.ts";
import { inheritedFds, listenOn } from "../server/listen.ts";
import type { PolicyProvider } from "../server/policy-provider.ts";
import { formatSocketSpec, type SocketSpec } from "../server/socket-spec.ts";

/** A domain no policy can have: the query runs, the answer is "not found". */
const PROBE_DOMAIN = "exota-milter-check.invalid";

/** An MTA's option negotiation (version 6, every action and step offered). */
const OPTNEG = new Uint8Array([0, 0, 0, 13, 0x4f, 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff]);

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
    let got = new Uint8Array(0);
    const done = (answer: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on("connect", () => s.write(OPTNEG));
    s.on("data", (chunk: Uint8Array) => {
      got = new Uint8Array([...got, ...chunk]);
      if (got.length >= 5) done(got[4] === 0x4f);
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
    let path: string | undefined;
    try {
      const l = await listenOn(config.socket, config.socketMode, () => undefined);
      path = l.path;
      l.close();
    } catch (e) {
      if (await milterAnswers(config.socket)) {
        notes.push(`${formatSocketSpec(config.socket)} is in use by a milter that answers (a running exota-milter or its socket unit?); run serves it once that one stops, or under socket activation`);
      } else {
        errors.push(`cannot listen: ${(e as Error).message}`);
      }
    }
    try {
      // Some runtimes remove the socket file on close, others leave it.
      if (path !== undefined) unlinkSync(path);
    } catch { /* gone already */ }
  }
  if (config.metricsListen !== undefined) {
    const { host, port } = config.metricsListen;
    // node:http, as run's metrics server: the same errors.
    const server = createServer();
    await new Promise<void>((resolve) => {
      server.once("error", (e: Error) => {
        errors.push(`cannot listen: ${e.message}`);
        resolve();
      });
      server.listen(port, host, () => server.close(() => resolve()));
    });
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
