/**
 * The JSON policy file: one object mapping sender domains to policies.
 * Parsing is pure; reading the file is the caller's job.
 * @module
 */
import { normalizeDomain } from "../mail/address.ts";
import { readEntries } from "./json-entries.ts";
import { FastPolicyReader } from "./policy-fast.ts";
import { PolicyTable } from "./policy-table.ts";
import { validateEntry } from "./schema.ts";
import type { Policy, PolicyResult } from "./types.ts";

/** Policies by lower-case, A-label domain. */
export type PolicyMap = ReadonlyMap<string, Policy>;

export type PolicyFileResult =
  | { readonly ok: true; readonly policies: PolicyMap }
  /** `error` starts with `file:line:`, like a compiler's. */
  | { readonly ok: false; readonly error: string };

/** Parses and validates a whole policy file; the first problem is the error. */
export function parsePolicyFile(text: string, fileName: string): PolicyFileResult {
  const read = readEntries(text, (k) => normalizeDomain(k) ?? k.toLowerCase());
  if (!read.ok) return { ok: false, error: `${fileName}:${read.line}:${read.column}: ${read.message}` };
  const policies = new Map<string, Policy>();
  for (const entry of read.entries) {
    const domain = normalizeDomain(entry.key);
    if (domain === undefined || !domain.includes(".")) {
      return { ok: false, error: `${fileName}:${entry.line}: "${entry.key}" is not a domain name` };
    }
    const r = validateEntry(entry.value);
    if (!r.ok) {
      const line = (r.key !== undefined ? entry.keyLines.get(r.key) : undefined) ?? entry.line;
      const where = r.key !== undefined ? `domain "${entry.key}", key "${r.key}"` : `domain "${entry.key}"`;
      return { ok: false, error: `${fileName}:${line}: ${where}: ${r.reason}` };
    }
    policies.set(domain, r.policy);
  }
  return { ok: true, policies };
}

const utf8 = new TextDecoder("utf-8");

/**
 * Parses the bytes of a policy file (UTF-8): the fast path for the common
 * shape, else the general reader, which names the problem with its line.
 */
export function parsePolicyBytes(bytes: Uint8Array, fileName: string): PolicyFileResult {
  const fast = new FastPolicyReader(bytes);
  fast.step();
  if (!fast.gaveUp) return { ok: true, policies: fast.policies };
  return parsePolicyFile(utf8.decode(bytes), fileName);
}

/**
 * {@link parsePolicyBytes} in slices: `pause()` is asked between slices of
 * 1024 domains; when it says so, `yieldNow()` lets other work run. Only the
 * fast path is sliced (the general reader runs for files it gives up on).
 */
export async function parsePolicyBytesSliced(
  bytes: Uint8Array,
  fileName: string,
  pause: () => boolean,
  yieldNow: () => Promise<void>,
): Promise<PolicyFileResult> {
  const fast = new FastPolicyReader(bytes);
  while (!fast.step(pause)) await yieldNow();
  if (!fast.gaveUp) return { ok: true, policies: fast.policies };
  return parsePolicyFile(utf8.decode(bytes), fileName);
}

/**
 * Domains whose policy has `dkim_enabled: false`. While tenant ids are not
 * required, only the certificate then stands between any Microsoft 365
 * tenant and such a domain, and, through the Resent-From fallback, every
 * domain without a policy.
 */
export function dkimOffDomains(policies: PolicyMap): string[] {
  if (policies instanceof PolicyTable) return policies.dkimOffDomains();
  return [...policies].filter(([, p]) => !p.dkimEnabled).map(([d]) => d);
}

/** What `check` and the policy log say about such a domain while tenant ids are not required. */
export function dkimOffWarning(domain: string): string {
  return `policy of ${domain} has dkim_enabled false while MILTER_TENANT_ID_REQUIRED is off: any Microsoft 365 tenant with the trusted ` +
    `certificate can send as ${domain}, and via Resent-From as any domain without a policy`;
}

/** A lookup over a policy map; a map answers at once, never with an error. */
export function mapLookup(policies: PolicyMap): (domain: string) => PolicyResult {
  return (domain) => {
    const policy = policies.get(domain);
    return policy === undefined ? { kind: "not_found" } : { kind: "found", policy };
  };
}
