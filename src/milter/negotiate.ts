/**
 * Option negotiation: what the filter asks for, given what the MTA offers.
 * @module
 */
import { Action, PROTOCOL_VERSION } from "./protocol.ts";
import type { MacroRequest, Reply } from "./types.ts";

export interface FilterNeeds {
  /** Actions without which the filter cannot do its job. */
  readonly actions: number;
  /** Protocol flags (NO*, NR_*) the filter would like; only offered ones are taken. */
  readonly protocol: number;
  /** Macros to ask for per stage, when the MTA lets the filter choose. */
  readonly macros: MacroRequest;
}

export interface Agreement {
  readonly version: number;
  readonly actions: number;
  readonly protocol: number;
  readonly reply: Extract<Reply, { type: "optneg" }>;
}

const names = (bits: number, table: Record<string, number>) =>
  Object.entries(table).filter(([, b]) => (bits & b) !== 0).map(([n]) => n).join("|");

export function negotiate(
  offer: { version: number; actions: number; protocol: number },
  needs: FilterNeeds,
): { ok: true; agreement: Agreement } | { ok: false; error: string } {
  if (offer.version < 2) return { ok: false, error: `MTA speaks milter protocol version ${offer.version}, at least 2 is needed` };
  const missing = needs.actions & ~offer.actions;
  if (missing !== 0) return { ok: false, error: `MTA does not offer the actions ${names(missing, Action)}` };
  const version = Math.min(offer.version, PROTOCOL_VERSION);
  const protocol = needs.protocol & offer.protocol;
  const symlist = (offer.actions & Action.SETSYMLIST) !== 0 && version >= 6 && needs.macros.size > 0;
  const actions = needs.actions | (symlist ? Action.SETSYMLIST : 0);
  const reply: Agreement["reply"] = symlist
    ? { type: "optneg", version, actions, protocol, macros: needs.macros }
    : { type: "optneg", version, actions, protocol };
  return { ok: true, agreement: { version, actions, protocol, reply } };
}
