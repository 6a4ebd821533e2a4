/**
 * `exota-milter check`: validates configuration and policy (the file, or a
 * bind and a query against the directory), prints what is in force.
 * Exit 0 when everything is usable, 1 otherwise.
 * @module
 */
import type { Config } from "../config.ts";
import { dkimOffWarning } from "../policy/policy-file.ts";
import type { PolicyProvider } from "../server/policy-provider.ts";

/** A domain no policy can have: the query runs, the answer is "not found". */
const PROBE_DOMAIN = "exota-milter-check.invalid";

export async function check(config: Config, policy: PolicyProvider, print: (line: string) => void): Promise<number> {
  print("settings in force:");
  for (const s of config.settings) print(`  ${s.env}=${s.value}  (${s.source})`);
  for (const w of config.warnings) print(`warning: ${w}`);
  print(`policy: ${policy.description}`);
  const entries = policy.entries();
  if (entries !== undefined) {
    print(`  ${entries} domain(s), valid`);
    if (!config.filter.tenantIdRequired) for (const d of policy.dkimOffDomains() ?? []) print(`  warning: ${dkimOffWarning(d)}`);
    return 0;
  }
  const answer = await policy.lookup()(PROBE_DOMAIN);
  if (answer.kind === "backend_error") {
    print(`  query for ${PROBE_DOMAIN} failed: ${answer.reason}`);
    return 1;
  }
  print(`  bind and query for ${PROBE_DOMAIN} worked (answer: ${answer.kind.replace("_", " ")})`);
  return 0;
}
