/**
 * Assertions shared by the e2e test files: what a rejected message's SMTP
 * reply and an accepted message's delivered headers must look like.
 */
import assert from "node:assert/strict";
import { type Chain, type Delivered, EXOTA, OPENDKIM_AUTHSERVID, OUR_AUTHSERVID, type SmtpReply } from "./chain.ts";

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Queue ids: Postfix's (upper-case hex), Sendmail's (14 letters and digits). */
export const QUEUE_ID = { postfix: "[0-9A-F]+", sendmail: "[0-9A-Za-z]{14}" } as const;

/** The milter's 550, passed on by the MTA at end of DATA: `550 5.7.1 queue_id: Q - message - reason: R`. */
export function assertRejected(reply: SmtpReply, reason: string, queueId: string = QUEUE_ID.postfix): void {
  assert.match(
    reply.text,
    new RegExp(`^550 5\\.7\\.1 queue_id: ${queueId} - Security policy violation! - reason: ${escape(reason)}$`),
    `expected a 550 for "${reason}", got: ${reply.text}`,
  );
}

/** The milter's 450 (policy backend problem), passed on by Postfix. */
export function assertTempfailed(reply: SmtpReply, reason: string): void {
  assert.match(
    reply.text,
    new RegExp(`^450 4\\.7\\.1 queue_id: [0-9A-F]+ - Service temporarily not available! Please try again later\\. - reason: ${escape(reason)}$`),
    `expected a 450 for "${reason}", got: ${reply.text}`,
  );
}

export interface Accepted {
  readonly domain: string;
  readonly dkim?: boolean;
  readonly aligned: boolean;
  readonly forwarded?: boolean;
  /** The domain the verifier must report as dkim=pass header.d=... */
  readonly signer: string;
  /** The verifier's authserv-id; default OpenDKIM's. */
  readonly verifier?: string;
}

/** Exactly one X-ExOTA-Authentication-Results (any letter case), ours, with these values. */
export function exotaValue(a: Accepted): string {
  const py = (b: boolean) => (b ? "True" : "False");
  return `${OUR_AUTHSERVID}; auth=pass 5322_from_domain=${a.domain} dkim=${py(a.dkim ?? true)} dkim_aligned=${py(a.aligned)} ` +
    `x509_client_trust=True forwarded=${py(a.forwarded ?? false)}`;
}

/** Queued (250) and delivered with exactly one X-ExOTA-Authentication-Results, ours, next to the verifier's pass. */
export async function assertAccepted(chain: Chain, reply: SmtpReply, a: Accepted): Promise<Delivered> {
  assert.equal(reply.code, 250, `expected 250, got: ${reply.text}`);
  const d = await chain.delivered(reply.queueId);
  assert.deepEqual(d.get(EXOTA), [exotaValue(a)], `X-ExOTA-Authentication-Results as delivered:\n${d.raw}`);
  const ours = d.headers.filter(([n]) => n.toLowerCase() === EXOTA.toLowerCase());
  assert.equal(ours[0]![0], EXOTA, "header name as the original writes it");
  const verifier = a.verifier ?? OPENDKIM_AUTHSERVID;
  const dkim = d.get("Authentication-Results").filter((v) => v.startsWith(`${verifier};`));
  assert.equal(dkim.length, 1, `one Authentication-Results of ${verifier}:\n${d.raw}`);
  assert.match(dkim[0]!, new RegExp(`dkim=pass [^;]*header\\.d=${escape(a.signer)}\\b`));
  return d;
}
