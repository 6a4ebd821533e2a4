/**
 * The schema of one policy entry, shared by every backend: the keys of the
 * original's JSON policy with its defaults (DKIM on, alignment required).
 * @module
 */
import * as v from "valibot";
import type { Policy } from "./types.ts";

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const POLICY_KEYS = ["tenant_id", "dkim_enabled", "dkim_alignment_required"] as const;

const bool = v.boolean("must be true or false (a JSON boolean, not a string)");

export const PolicyEntrySchema = v.pipe(
  v.strictObject({
    tenant_id: v.optional(
      v.pipe(
        v.string("must be a string"),
        v.check((s) => s === "" || UUID.test(s), "must be a UUID like 1234abcd-18c5-45e8-88de-123456789abc, or empty"),
        v.toLowerCase(),
      ),
      "",
    ),
    dkim_enabled: v.optional(bool, true),
    dkim_alignment_required: v.optional(bool, true),
  }, "must be an object"),
  v.transform((o): Policy => ({
    tenantId: o.tenant_id,
    dkimEnabled: o.dkim_enabled,
    dkimAlignmentRequired: o.dkim_alignment_required,
  })),
);

export type EntryResult =
  | { readonly ok: true; readonly policy: Policy }
  /** `key` is the offending key, when the problem is one key. */
  | { readonly ok: false; readonly key: string | undefined; readonly reason: string };

/** Validates one entry; the error names the key and says what is accepted. */
export function validateEntry(input: unknown): EntryResult {
  if (Array.isArray(input)) return { ok: false, key: undefined, reason: "must be an object, not an array" };
  const r = v.safeParse(PolicyEntrySchema, input);
  if (r.success) return { ok: true, policy: r.output };
  const issue = r.issues[0];
  const key = issue.path?.[0]?.key;
  const name = typeof key === "string" ? key : undefined;
  const reason = issue.type === "strict_object" && name !== undefined
    ? `unknown key (accepted: ${POLICY_KEYS.join(", ")})`
    : `${issue.message}, got ${issue.received}`;
  return { ok: false, key: name, reason };
}
