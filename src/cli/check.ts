/**
 * `exota-milter check`: validates configuration and policy (the file, or a
 * bind and a query against the directory), prints what is in force.
 * Exit 0 when everything is usable, 1 otherwise.
 * @module
 */
import { unlinkSync } from "node:fs";
import { createServer } from "node:http";
import process from "node:process";
import type { Config } from "../config.ts";
import { dkimOffWarning } from "../policy/policy-file.ts";
import { inheritedFds, listenOn } from "../server/listen.ts";
import type { PolicyProvider } from "../server/policy-provider.ts";

/** A domain no policy can have: the query runs, the answer is "not found". */
const PROBE_DOMAIN = "exota-milter-check.invalid";

/**
 * What `run` does short of serving: listen on the milter socket (resolving
 * its host name, replacing a stale unix socket file) and on the metrics
 * address, and let go at once. The errors are run's.
 */
async function tryListening(config: Config): Promise<string[]> {
  const errors: string[] = [];
  if (inheritedFds(process.env, process.pid).length === 0) {
    let path: string | undefined;
    try {
      const l = await listenOn(config.socket, config.socketMode, () => undefined);
      path = l.path;
      l.close();
    } catch (e) {
      errors.push(`cannot listen: ${(e as Error).message}`);
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
  return errors;
}

export async function check(config: Config, policy: PolicyProvider, print: (line: string) => void): Promise<number> {
  print("settings in force:");
  for (const s of config.settings) print(`  ${s.env}=${s.value}  (${s.source})`);
  const listenErrors = await tryListening(config);
  for (const e of listenErrors) print(`error: ${e}`);
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
