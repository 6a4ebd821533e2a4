/**
 * A domain's Microsoft 365 tenant id as Microsoft publishes it: the OpenID
 * configuration at `<base>/<domain>/v2.0/.well-known/openid-configuration`,
 * whose issuer is `https://login.microsoftonline.com/<tenant-id>/v2.0`; an
 * unknown domain answers HTTP 400 with error code AADSTS90002.
 *
 * Only the `tenant-id` command and `check --verify-tenants` call this: the
 * milter never calls out while serving mail.
 * @module
 */
import { normalizeDomain } from "../mail/address.ts";
import { UUID } from "../policy/schema.ts";

export type TenantAnswer =
  | { readonly kind: "tenant"; readonly tenantId: string }
  /** Microsoft knows no tenant for the domain. */
  | { readonly kind: "unknown" }
  /** No usable answer (unreachable, timeout, 5xx after retries, malformed). */
  | { readonly kind: "error"; readonly reason: string };

export interface LookupOptions {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  /** Tries per domain when Microsoft answers 5xx or 429. */
  readonly attempts?: number;
  /** Wait before the first retry; doubles each time. */
  readonly retryDelayMs?: number;
  /** Lookups in flight at once. */
  readonly concurrency?: number;
  readonly fetch?: typeof fetch;
}

/**
 * One HTTP answer -> tenant, unknown, or error; "retry" for answers that
 * may change on the next try (5xx, 429).
 */
export function readAnswer(status: number, body: string): TenantAnswer | "retry" {
  if (status >= 500 || status === 429) return "retry";
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { kind: "error", reason: `malformed answer (HTTP ${status}, not JSON): ${JSON.stringify(body.slice(0, 80))}` };
  }
  const field = (name: string) => {
    const v = typeof json === "object" && json !== null ? (json as Record<string, unknown>)[name] : undefined;
    return typeof v === "string" ? v : undefined;
  };
  if (status === 200) {
    const issuer = field("issuer");
    const m = issuer === undefined ? null : /^https:\/\/[^/]+\/([^/]+)\/v2\.0\/?$/.exec(issuer);
    const id = m?.[1]?.toLowerCase();
    if (id === undefined || !UUID.test(id)) {
      return { kind: "error", reason: `malformed answer: issuer ${JSON.stringify(issuer ?? null)} holds no tenant id` };
    }
    return { kind: "tenant", tenantId: id };
  }
  const description = field("error_description") ?? "";
  const codes = typeof json === "object" && json !== null ? (json as Record<string, unknown>).error_codes : undefined;
  if (/^AADSTS90002\b/.test(description) || (Array.isArray(codes) && codes.includes(90002))) return { kind: "unknown" };
  return { kind: "error", reason: `HTTP ${status}${description === "" ? "" : `: ${description.split(/\r?\n/)[0]}`}` };
}

/**
 * The A-label form of a domain as the policy spells its keys (normalizeDomain),
 * or undefined when it is none; a single label is no Microsoft 365 domain.
 */
export function domainLabel(input: string): string | undefined {
  const d = normalizeDomain(input.trim());
  return d?.includes(".") ? d : undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function lookupTenant(domain: string, o: LookupOptions): Promise<TenantAnswer> {
  const label = domainLabel(domain);
  if (label === undefined) return { kind: "error", reason: `${JSON.stringify(domain)} is not a domain name` };
  const url = `${o.baseUrl}/${label}/v2.0/.well-known/openid-configuration`;
  const attempts = o.attempts ?? 3;
  const doFetch = o.fetch ?? fetch;
  let last = "";
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep((o.retryDelayMs ?? 500) * 2 ** (i - 1));
    let status: number;
    let body: string;
    try {
      // One deadline for the answer and its body: a server that stalls mid-body is a timeout too.
      const signal = AbortSignal.timeout(o.timeoutMs);
      const res = await doFetch(url, { signal, headers: { accept: "application/json" }, redirect: "error" });
      status = res.status;
      body = await res.text();
    } catch (e) {
      const err = e as Error & { cause?: { message?: string; code?: string } };
      if (err.name === "TimeoutError" || err.name === "AbortError") {
        return { kind: "error", reason: `no answer from ${o.baseUrl} within ${o.timeoutMs / 1000} s` };
      }
      const cause = err.cause?.code ?? err.cause?.message;
      return { kind: "error", reason: `cannot reach ${o.baseUrl}: ${err.message}${cause !== undefined ? ` (${cause})` : ""}` };
    }
    const answer = readAnswer(status, body);
    if (answer !== "retry") return answer;
    last = `HTTP ${status}`;
  }
  return { kind: "error", reason: `${last} from ${o.baseUrl}, ${attempts} tries` };
}

/** Looks up many domains, at most `concurrency` at once; answers in the order asked. */
export async function lookupTenants(domains: readonly string[], o: LookupOptions): Promise<TenantAnswer[]> {
  const out: TenantAnswer[] = new Array(domains.length);
  let next = 0;
  const worker = async () => {
    while (next < domains.length) {
      const i = next++;
      out[i] = await lookupTenant(domains[i]!, o);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 8, domains.length) }, worker));
  return out;
}

const describeAnswer = (a: TenantAnswer) =>
  a.kind === "tenant" ? a.tenantId : a.kind === "unknown" ? "not a Microsoft 365 domain" : `error: ${a.reason}`;

const jsonAnswer = (domain: string, a: TenantAnswer) => ({
  domain,
  status: a.kind,
  tenant_id: a.kind === "tenant" ? a.tenantId : null,
  ...(a.kind === "error" ? { error: a.reason } : {}),
});

/** `exota-milter tenant-id DOMAIN...`: exit 0 all known, 1 some not Microsoft 365 domains, 2 some lookups failed. */
export async function tenantIdCommand(domains: readonly string[], o: LookupOptions, json: boolean, print: (line: string) => void): Promise<number> {
  const answers = await lookupTenants(domains, o);
  if (json) print(JSON.stringify(domains.map((d, i) => jsonAnswer(d, answers[i]!))));
  else {
    const width = Math.max(...domains.map((d) => d.length));
    domains.forEach((d, i) => print(`${d.padEnd(width)}  ${describeAnswer(answers[i]!)}`));
  }
  return answers.some((a) => a.kind === "error") ? 2 : answers.some((a) => a.kind === "unknown") ? 1 : 0;
}

/** A policy entry to verify: its domain and tenant id ("" when it sets none). */
export interface PolicyTenant {
  readonly domain: string;
  readonly tenantId: string;
}

/**
 * `check --verify-tenants`: every policy entry against Microsoft. Exit 0 all
 * match, 1 mismatches or unknown domains, 2 some could not be checked.
 */
export async function verifyTenants(entries: readonly PolicyTenant[], o: LookupOptions, json: boolean, print: (line: string) => void): Promise<number> {
  const answers = await lookupTenants(entries.map((e) => e.domain), o);
  const rows = entries.map((e, i) => {
    const a = answers[i]!;
    const verdict = a.kind === "error"
      ? "error"
      : a.kind === "unknown"
      ? "unknown-domain"
      : e.tenantId === ""
      ? "no-tenant-in-policy"
      : a.tenantId === e.tenantId
      ? "match"
      : "mismatch";
    return { e, a, verdict };
  });
  if (json) {
    print(JSON.stringify(rows.map(({ e, a, verdict }) => ({ ...jsonAnswer(e.domain, a), policy_tenant_id: e.tenantId || null, verdict }))));
  } else {
    const bad = rows.filter((r) => r.verdict !== "match");
    print(`tenants: ${entries.length} policy entr${entries.length === 1 ? "y" : "ies"} checked against ${o.baseUrl}: ${rows.length - bad.length} match`);
    for (const { e, a, verdict } of bad) {
      const text = verdict === "mismatch"
        ? `mismatch: policy says ${e.tenantId}, Microsoft says ${describeAnswer(a)} (mail from ${e.domain} is rejected when the tenant id is required)`
        : verdict === "unknown-domain"
        ? "unknown domain: not a Microsoft 365 domain (no tenant has verified it)"
        : verdict === "no-tenant-in-policy"
        ? `no tenant id in the policy; Microsoft says ${describeAnswer(a)}`
        : `could not check: ${(a as { reason: string }).reason}`;
      print(`  ${e.domain}  ${text}`);
    }
  }
  if (rows.some((r) => r.verdict === "error")) return 2;
  return rows.some((r) => r.verdict === "mismatch" || r.verdict === "unknown-domain") ? 1 : 0;
}
