/**
 * Shared test data for the integration tests: a policy, an Exchange
 * Online-like client, and messages built from a few facts.
 */
import assert from "node:assert/strict";
import { type ClientInfo, type InetClient, type MessageSpec, MilterClient } from "./milter-client.ts";
import { rmSync } from "node:fs";
import { freePort, type MilterProcess, startMilter, tempDir, writePolicy } from "./milter-process.ts";
import { scrape } from "./metrics.ts";
import type { Reply } from "../../src/milter/types.ts";

export const TENANT = "1234abcd-18c5-45e8-88de-123456789abc";
export const OTHER_TENANT = "5678abcd-18c5-45e8-88de-123456789abc";
export const NODKIM_TENANT = "9abcabcd-18c5-45e8-88de-123456789abc";

/** authserv-id of the (pretend) DKIM verifier milter before us. */
export const TRUSTED_AUTHSERVID = "dkim.relay.example";
/** authserv-id we write into our own header. */
export const OUR_AUTHSERVID = "relay.example";
export const TRUSTED_CN = "mail.protection.outlook.com";
/** The issuer CN of Exchange Online's client certificate, as Postfix gives it in `{cert_issuer}`. */
export const TRUSTED_ISSUER = "DigiCert Cloud Services CA-1";
export const EXOTA = "X-ExOTA-Authentication-Results";

/** Every check on: x509 (allow-list at its default), tenant id, DKIM with alignment; our header added. */
export const ALL_CHECKS_ENV = {
  MILTER_X509_ENABLED: "true",
  MILTER_TENANT_ID_REQUIRED: "true",
  MILTER_DKIM_ENABLED: "true",
  MILTER_DKIM_ALIGNMENT_REQUIRED: "true",
  MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID,
  MILTER_ADD_HEADER: "true",
  MILTER_AUTHSERVID: OUR_AUTHSERVID,
};

export const POLICY = {
  "tenant.example": { tenant_id: TENANT, dkim_enabled: true, dkim_alignment_required: true },
  "relaxed.example": { tenant_id: OTHER_TENANT, dkim_enabled: true, dkim_alignment_required: false },
  "no-dkim.example": { tenant_id: NODKIM_TENANT, dkim_enabled: false },
  // Defaults: DKIM on, alignment required.
  "defaults.example": { tenant_id: TENANT },
  // An IDN, written as U-label: stored and matched as A-label (xn--bcher-kva.example).
  "bücher.example": { tenant_id: TENANT },
};

/** A client in Microsoft's ranges (not on any allow-list used in the tests). */
export const EXO_CLIENT: InetClient = {
  hostname: "mail-db8eur05on2101.outbound.protection.outlook.com",
  family: "inet",
  address: "203.0.113.5",
  port: 41234,
};
/** An address the tests put on the x509 allow-list. */
export const ALLOWLISTED_CLIENT: InetClient = { hostname: "internal.relay.example", family: "inet", address: "192.0.2.10", port: 50000 };

export interface Facts {
  /** The `i` macro; null = not sent. */
  readonly queueId?: string | null;
  readonly client?: ClientInfo | null;
  /** `{cert_subject}`; undefined = no verified certificate. */
  readonly cn?: string;
  /** `{cert_issuer}`, sent with a certificate; null = not sent. */
  readonly issuer?: string | null;
  /** `{verify}` (Sendmail), sent with a certificate; undefined = not sent (Postfix). */
  readonly verify?: string;
  /** From header value; null = no From header. */
  readonly from?: string | null;
  readonly resentFrom?: string;
  readonly tenantIds?: readonly string[];
  /** Authentication-Results header values, on top of the message. */
  readonly authResults?: readonly string[];
  readonly extraHeaders?: ReadonlyArray<readonly [string, string]>;
  /** Send CONNECT and HELO (default true): false on a reused connection. */
  readonly session?: boolean;
  /** Stop after the headers (no body, no end of message), for ABORT tests. */
  readonly stopAfterHeaders?: boolean;
}

export const dkimPass = (d: string, authservId = TRUSTED_AUTHSERVID) =>
  `${authservId}; dkim=pass (2048-bit key; unprotected) header.d=${d} header.i=@${d} header.b=AbCdEf12 header.a=rsa-sha256`;

/** A message as Exchange Online sends it for a tenant of tenant.example, with a trusted DKIM pass. */
export function message(f: Facts = {}): MessageSpec {
  // The verifier milter before us inserts its result on top; what Exchange
  // Online sent follows, starting with its Received headers.
  const headers: Array<readonly [string, string]> = [];
  for (const ar of f.authResults ?? [dkimPass("tenant.example")]) headers.push(["Authentication-Results", ar]);
  headers.push(
    ["Received", "from DB9PR05MB1234.eurprd05.prod.outlook.com (2603:10a6:10:e3::18) by AM0PR05MB5678.eurprd05.prod.outlook.com"],
    ["Received", "from DB9PR05MB1234.eurprd05.prod.outlook.com ([fe80::1]) by DB9PR05MB1234.eurprd05.prod.outlook.com"],
  );
  const from = f.from === undefined ? "Alice <alice@tenant.example>" : f.from;
  if (from !== null) headers.push(["From", from]);
  if (f.resentFrom !== undefined) headers.push(["Resent-From", f.resentFrom]);
  headers.push(["To", "bob@destination.example"], ["Subject", "quarterly report"]);
  for (const t of f.tenantIds ?? [TENANT]) headers.push(["X-MS-Exchange-CrossTenant-Id", t]);
  headers.push(...(f.extraHeaders ?? []));
  const session = f.session ?? true;
  const client = f.client === undefined ? EXO_CLIENT : f.client;
  return {
    ...(f.queueId === null ? {} : { queueId: f.queueId ?? "4XYZ1234AB" }),
    ...(session && client !== null ? { connect: client } : {}),
    ...(session ? { helo: "EUR05-DB8-obe.outbound.protection.outlook.com" } : {}),
    macros: f.cn === undefined ? {} : {
      helo: {
        "{cert_subject}": f.cn,
        ...(f.issuer === null ? {} : { "{cert_issuer}": f.issuer ?? TRUSTED_ISSUER }),
        ...(f.verify === undefined ? {} : { "{verify}": f.verify }),
      },
    },
    mailFrom: "<alice@tenant.example>",
    headers,
    body: "Hello Bob,\r\n\r\nthe numbers are in.\r\n",
    ...(f.stopAfterHeaders ? { stopAfterHeaders: true } : {}),
  };
}

/** The reject reply for a queue id and reason. */
export function rejected(queueId: string, reason: string, message = "Security policy violation!"): Reply[] {
  return [{ type: "replycode", code: 550, text: `5.7.1 queue_id: ${queueId} - ${message} - reason: ${reason}` }];
}

export interface Added {
  readonly domain: string;
  readonly dkim: boolean;
  readonly aligned: boolean;
  readonly x509: boolean;
  readonly forwarded: boolean;
}

const py = (b: boolean) => (b ? "True" : "False");

/** The header the filter adds on acceptance. */
export function addedHeader(a: Added, authservId = OUR_AUTHSERVID): Reply {
  return {
    type: "addheader",
    name: EXOTA,
    value: `${authservId};\n  auth=pass 5322_from_domain=${a.domain} dkim=${py(a.dkim)} dkim_aligned=${py(a.aligned)} ` +
      `x509_client_trust=${py(a.x509)} forwarded=${py(a.forwarded)}`,
  };
}

/** Deletions of `n` existing X-ExOTA headers (last first), then `rest`, then continue. */
export function accepted(deletions: number, ...rest: Reply[]): Reply[] {
  const out: Reply[] = [];
  for (let i = deletions; i >= 1; i--) out.push({ type: "chgheader", index: i, name: EXOTA, value: "" });
  out.push(...rest, { type: "continue" });
  return out;
}

/** One message on a fresh connection: negotiate, send, check the EOM replies, quit. */
export async function expectReplies(connect: () => Promise<MilterClient>, spec: MessageSpec, expected: Reply[]): Promise<void> {
  const c = await connect();
  try {
    assert.deepEqual(await c.sendMessage(spec), expected);
    await c.quit();
  } finally {
    c.destroy();
  }
}

export interface TcpMilter {
  readonly proc: MilterProcess;
  readonly port: number;
  /** Where the metrics are served; undefined unless started with `metrics`. */
  readonly metricsPort: number | undefined;
  connect(): Promise<MilterClient>;
  /** The metrics' samples (started with `metrics`). */
  scrape(): Promise<Map<string, number>>;
}

/** Starts the binary on inet:PORT@127.0.0.1 with `env` on top; with `metrics`, its metrics on another free port. */
export async function startTcpMilter(env: Record<string, string>, opts: { readonly metrics?: boolean } = {}): Promise<TcpMilter> {
  const port = await freePort();
  const metricsPort = opts.metrics === true ? await freePort() : undefined;
  const metricsEnv: Record<string, string> = metricsPort === undefined ? {} : { MILTER_METRICS_LISTEN: `127.0.0.1:${metricsPort}` };
  const proc = await startMilter({ env: { MILTER_SOCKET: `inet:${port}@127.0.0.1`, ...metricsEnv, ...env } });
  return {
    proc,
    port,
    metricsPort,
    connect: () => MilterClient.connect({ host: "127.0.0.1", port }),
    scrape: () => metricsPort === undefined ? Promise.reject(new Error("started without metrics")) : scrape(metricsPort),
  };
}

const scratch: string[] = [];

/** A temporary directory removed by {@link removeScratch}. */
export function scratchDir(): string {
  const dir = tempDir();
  scratch.push(dir);
  return dir;
}

/** Writes a policy (default {@link POLICY}) into a scratch directory; returns its path. */
export function policyFile(policy: unknown = POLICY): string {
  return writePolicy(policy, scratchDir());
}

/** Removes the scratch directories made so far (call in an `after` hook, once the milters are stopped). */
export function removeScratch(): void {
  for (const dir of scratch.splice(0)) rmSync(dir, { recursive: true, force: true });
}
