/**
 * LDAP search results -> policy answer, with the same schema and defaults as
 * the JSON file. Directory booleans are TRUE/FALSE (RFC 4517).
 *
 * Pure: no I/O.
 * @module
 */
import { validateEntry } from "./schema.ts";
import type { PolicyResult } from "./types.ts";

/** Attribute names of the three policy keys in the directory. */
export interface LdapAttributes {
  readonly tenantId: string;
  readonly dkimEnabled: string;
  readonly dkimAlignmentRequired: string;
}

/** One entry as an LDAP client returns it: attribute name -> value(s). */
export type LdapEntry = Readonly<Record<string, unknown>>;

/** The value(s) of an attribute, its name compared case-insensitively. */
function values(entry: LdapEntry, attr: string): unknown[] {
  const want = attr.toLowerCase();
  for (const [k, v] of Object.entries(entry)) {
    if (k.toLowerCase() === want) return Array.isArray(v) ? v : [v];
  }
  return [];
}

function single(entry: LdapEntry, attr: string): { ok: true; value: string | undefined } | { ok: false; reason: string } {
  const vs = values(entry, attr).map((v) => (v instanceof Uint8Array ? new TextDecoder().decode(v) : String(v)));
  if (vs.length > 1) return { ok: false, reason: `attribute ${attr} has ${vs.length} values` };
  return { ok: true, value: vs[0] };
}

function ldapBool(attr: string, value: string | undefined): boolean | undefined | string {
  if (value === undefined) return undefined;
  if (value === "TRUE") return true;
  if (value === "FALSE") return false;
  return `attribute ${attr} is ${JSON.stringify(value)}, expected TRUE or FALSE`;
}

export function policyFromEntries(domain: string, entries: readonly LdapEntry[], attrs: LdapAttributes): PolicyResult {
  if (entries.length === 0) return { kind: "not_found" };
  if (entries.length > 1) return { kind: "invalid", reason: `${entries.length} directory entries for ${domain}` };
  const entry = entries[0]!;
  const tenant = single(entry, attrs.tenantId);
  const dkim = single(entry, attrs.dkimEnabled);
  const align = single(entry, attrs.dkimAlignmentRequired);
  for (const r of [tenant, dkim, align]) if (!r.ok) return { kind: "invalid", reason: r.reason };
  const dkimEnabled = ldapBool(attrs.dkimEnabled, dkim.ok ? dkim.value : undefined);
  const alignment = ldapBool(attrs.dkimAlignmentRequired, align.ok ? align.value : undefined);
  for (const b of [dkimEnabled, alignment]) if (typeof b === "string") return { kind: "invalid", reason: b };
  const raw: Record<string, unknown> = {};
  if (tenant.ok && tenant.value !== undefined) raw.tenant_id = tenant.value;
  if (dkimEnabled !== undefined) raw.dkim_enabled = dkimEnabled;
  if (alignment !== undefined) raw.dkim_alignment_required = alignment;
  const v = validateEntry(raw);
  if (!v.ok) return { kind: "invalid", reason: `${v.key === "tenant_id" ? attrs.tenantId : v.key ?? "entry"}: ${v.reason}` };
  return { kind: "found", policy: v.policy };
}
