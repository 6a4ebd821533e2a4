/**
 * Nanoseconds per policy lookup, for each policy file given: random domains
 * of the file (9 in 10) and unknown ones (1 in 10), as a relay with many
 * tenants would ask. Prints one JSON object: file -> { domains, ns }.
 *
 *   bun bench/lookup.ts POLICY.json ...
 * @module
 */
import { readFileSync } from "node:fs";
import { mapLookup, parsePolicyBytes } from "../src/policy/policy-file.ts";

const PROBES = 100_000;
const LOOKUPS = 2_000_000;

const out: Record<string, { domains: number; ns: number }> = {};
for (const file of process.argv.slice(2)) {
  const r = parsePolicyBytes(readFileSync(file), file);
  if (!r.ok) throw new Error(r.error);
  const lookup = mapLookup(r.policies);
  const names = [...r.policies.keys()];
  const probes: string[] = [];
  // A stride co-prime to most sizes spreads the probes over the whole table.
  for (let i = 0; i < PROBES; i++) probes.push(i % 10 === 9 ? `unknown${i}.example` : names[(i * 7919) % names.length]!);
  let found = 0;
  const run = (n: number) => {
    for (let i = 0; i < n; i++) if (lookup(probes[i % PROBES]!).kind === "found") found++;
  };
  run(LOOKUPS / 10); // JIT
  const t0 = performance.now();
  run(LOOKUPS);
  const ns = ((performance.now() - t0) * 1e6) / LOOKUPS;
  if (found === 0) throw new Error(`${file}: no lookup found its domain`);
  out[file] = { domains: r.policies.size, ns };
}
console.log(JSON.stringify(out));
