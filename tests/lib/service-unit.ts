/**
 * The shipped systemd service unit, read as systemd reads the simple form
 * used there: the tests check it, and the benchmarks run exota-milter with
 * its Environment= lines, as a relay installed from it does.
 * @module
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./milter-process.ts";

export const SERVICE_UNIT = join(ROOT, "packaging/systemd/exota-milter.service");

/** Values of a key in a unit section, in order. */
export function unitValues(text: string, section: string, key: string): string[] {
  let current = "";
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      current = s[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    if (current === section && eq > 0 && line.slice(0, eq).trim() === key) out.push(line.slice(eq + 1).trim());
  }
  return out;
}

/** The service's Environment= settings (NAME=VALUE, unquoted, as the unit writes them). */
export function serviceEnvironment(text = readFileSync(SERVICE_UNIT, "utf8")): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of unitValues(text, "Service", "Environment")) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new Error(`${SERVICE_UNIT}: Environment=${kv} is not NAME=VALUE`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return env;
}
