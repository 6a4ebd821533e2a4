/**
 * What a policy says about one sender domain, and what a policy backend can
 * answer. Backend answers are values: the decision must tell "not found"
 * (reject) from "backend broken" (tempfail).
 * @module
 */

export interface Policy {
  /** Lower-case UUID of the Exchange Online tenant, or "" when none is set. */
  readonly tenantId: string;
  readonly dkimEnabled: boolean;
  readonly dkimAlignmentRequired: boolean;
}

export type PolicyResult =
  | { readonly kind: "found"; readonly policy: Policy }
  | { readonly kind: "not_found" }
  /** The backend has an entry, but it is not a valid policy (reject). */
  | { readonly kind: "invalid"; readonly reason: string }
  /** The backend could not answer (tempfail). */
  | { readonly kind: "backend_error"; readonly reason: string };

/** Looks up the policy of a lower-case, A-label domain. */
export type PolicyLookup = (domain: string) => PolicyResult | Promise<PolicyResult>;
