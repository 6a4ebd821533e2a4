/**
 * `exota-milter check --postfix[=DIR]`: reads the Postfix configuration the
 * way Postfix does (postconf, which knows every default, expands `$name`
 * and parses master.cf; the files themselves when postconf is missing) and
 * prints what the audit finds. Exit 0 clean, 1 problems, 2 unreadable.
 * @module
 */
import { execFile } from "node:child_process";
import { accessSync, constants, readFileSync } from "node:fs";
import process from "node:process";
import type { Config } from "../config.ts";
import { type AuditResult, auditPostfix, type MilterFacts } from "../postfix/audit.ts";
import {
  type Parsed,
  parseMaster,
  parseParams,
  parseServiceParams,
  POSTFIX_DEFAULTS,
  type PostfixConfig,
  resolveMain,
  resolveServices,
} from "../postfix/config.ts";

/** Debian's postconf is in /usr/sbin, which a normal user's PATH often lacks. */
export function findPostconf(path = process.env.PATH ?? ""): string | undefined {
  for (const dir of [...path.split(":").filter((d) => d !== ""), "/usr/sbin", "/usr/local/sbin"]) {
    try {
      accessSync(`${dir}/postconf`, constants.X_OK);
      return `${dir}/postconf`;
    } catch { /* not here */ }
  }
  return undefined;
}

function run(cmd: string, args: readonly string[]): Promise<Parsed<string>> {
  return new Promise((resolve) => {
    execFile(cmd, [...args], { timeout: 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err === null) resolve({ ok: true, value: String(stdout) });
      else resolve({ ok: false, error: `${cmd} ${args.filter((a) => a.startsWith("-")).join(" ")} failed: ${String(stderr).trim() || err.message}` });
    });
  });
}

/**
 * The configuration in `dir` (Postfix's default directory when undefined):
 * through `postconf -x` (main.cf, defaults included), `postconf -M` and
 * `postconf -P -x` (master.cf services and their `-o` overrides); without
 * postconf, main.cf and master.cf parsed and expanded here. Either way every
 * `$name` is expanded once, here or by `-x`, never again by the audit.
 */
export async function readPostfixConfig(
  dir: string | undefined,
  postconf: string | undefined,
): Promise<Parsed<PostfixConfig & { readonly source: string }>> {
  if (postconf === undefined) {
    const confDir = dir ?? "/etc/postfix";
    const read = (name: string): Parsed<string> => {
      try {
        return { ok: true, value: readFileSync(`${confDir}/${name}`, "utf8") };
      } catch (e) {
        return { ok: false, error: `cannot read ${confDir}/${name}: ${(e as Error).message}` };
      }
    };
    const mainText = read("main.cf");
    if (!mainText.ok) return mainText;
    const masterText = read("master.cf");
    if (!masterText.ok) return masterText;
    const main = parseParams(mainText.value, `${confDir}/main.cf`);
    if (!main.ok) return main;
    const services = parseMaster(masterText.value, `${confDir}/master.cf`);
    if (!services.ok) return services;
    return {
      ok: true,
      value: { main: resolveMain(main.value), services: resolveServices(main.value, services.value), source: `${confDir}/main.cf and master.cf (no postconf found)` },
    };
  }
  const c = dir === undefined ? [] : ["-c", dir];
  // Named parameters only: postconf prints nothing (not even an empty line) for a name it does not know.
  const [mainOut, masterOut, overridesOut] = await Promise.all([
    run(postconf, [...c, "-x", ...POSTFIX_DEFAULTS.keys()]),
    run(postconf, [...c, "-M"]),
    run(postconf, [...c, "-P", "-x"]),
  ]);
  if (!mainOut.ok) return mainOut;
  if (!masterOut.ok) return masterOut;
  if (!overridesOut.ok) return overridesOut;
  const main = parseParams(mainOut.value, "postconf -x");
  if (!main.ok) return main;
  const services = parseMaster(masterOut.value, "postconf -M");
  if (!services.ok) return services;
  const overrides = parseServiceParams(overridesOut.value);
  if (!overrides.ok) return overrides;
  return {
    ok: true,
    value: {
      main: main.value,
      services: services.value.map((s) => ({ ...s, overrides: overrides.value.get(`${s.name}/${s.type}`) ?? new Map() })),
      source: `${postconf}${dir === undefined ? "" : ` -c ${dir}`}`,
    },
  };
}

export function formatAudit(a: AuditResult): string[] {
  const out: string[] = [];
  for (const p of a.problems) {
    out.push(`problem: ${p.setting} = ${p.value}  (${p.where}${p.services.length > 0 ? `; smtpd service ${p.services.join(", ")}` : ""})`);
    out.push(`  why: ${p.why}`);
    out.push(`  write instead: ${p.fix}`);
  }
  for (const n of a.notes) out.push(`note: ${n}`);
  return out;
}

export const milterFacts = (config: Config): MilterFacts => ({
  socket: config.socket,
  x509Enabled: config.filter.x509Enabled,
  x509TrustedIssuer: config.filter.x509TrustedIssuer,
  dkimEnabled: config.filter.dkimEnabled,
});

/** Runs the audit and prints it (as JSON with `json`); returns the exit code. */
export async function checkPostfix(config: Config, dir: string | undefined, json: boolean, print: (line: string) => void): Promise<number> {
  const conf = await readPostfixConfig(dir, findPostconf());
  if (!conf.ok) {
    if (json) print(JSON.stringify({ error: conf.error }));
    else print(`postfix: could not read the configuration: ${conf.error}`);
    return 2;
  }
  const result = auditPostfix(conf.value, milterFacts(config));
  if (json) print(JSON.stringify({ source: conf.value.source, ...result }));
  else {
    print(`postfix: ${conf.value.source}: ${result.problems.length} problem(s)`);
    for (const l of formatAudit(result)) print(l);
  }
  return result.problems.length > 0 ? 1 : 0;
}
