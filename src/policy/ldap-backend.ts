/**
 * The LDAP policy backend (ldapts). One bound connection, tried over the
 * configured URIs in order; any fault makes the lookup a backend error
 * (tempfail, never accept) and starts reconnecting in the background with
 * back-off. A message that finds no connection does not wait for the
 * back-off: it joins the attempt in flight or starts one, and waits for it at
 * most the connect timeout, so the first message after recovery is decided
 * normally.
 * @module
 */
import { readFileSync } from "node:fs";
import type { Logger } from "@logtape/logtape";
import { Client, Filter } from "ldapts";
import { literal } from "../log.ts";
import { AnswerCache } from "./answer-cache.ts";
import { type LdapAttributes, type LdapEntry, policyFromEntries } from "./ldap-entry.ts";
import type { PolicyResult } from "./types.ts";

export interface LdapConfig {
  readonly uris: readonly string[];
  readonly bindDn: string;
  readonly bindPassword: string;
  readonly searchBase: string;
  /** Filter template; `%d` is the domain, escaped per RFC 4515. */
  readonly query: string;
  readonly receiveTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly startTls: boolean;
  /** PEM file of the CA for ldaps:// and StartTLS; the system's CAs when empty. */
  readonly caFile: string;
  readonly attributes: LdapAttributes;
  readonly cacheTtlMs: number;
}

/** A start-up error a postmaster must fix (wrong password, bad base). */
export class LdapConfigError extends Error {}

const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];

/** Result codes that mean our configuration is wrong, not that the server is away. */
const CONFIG_CODES = new Set([
  0x20, // noSuchObject (search base)
  0x22, // invalidDNSyntax
  0x30, // inappropriateAuthentication
  0x31, // invalidCredentials
  0x32, // insufficientAccessRights
]);

export class LdapPolicyBackend {
  #client: Client | undefined;
  #connecting: Promise<Client> | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #failures = 0;
  #lastError = "not connected yet";
  #closed = false;
  readonly #cache: AnswerCache;
  /** Counters for metrics. */
  readonly stats = { queries: 0, cacheHits: 0, errors: 0 };
  readonly #inFlight = new Map<string, Promise<PolicyResult>>();
  readonly #tls: { ca?: Buffer } | undefined;

  constructor(readonly config: LdapConfig, readonly log: Logger) {
    this.#cache = new AnswerCache(config.cacheTtlMs, 10_000, Date.now);
    this.#tls = config.caFile === "" ? undefined : { ca: readFileSync(config.caFile) };
  }

  /**
   * Connects and binds once at start-up. A wrong password or search base
   * throws {@link LdapConfigError}; an unreachable server only logs, and the
   * milter tempfails until it is back.
   */
  async start(): Promise<void> {
    try {
      await this.#connect();
    } catch (e) {
      if (e instanceof LdapConfigError) throw e;
      if (isConfigError(e)) throw new LdapConfigError(`LDAP: ${describe(e)}`);
      // #connect's failure has scheduled the reconnection already.
      this.log.warn("LDAP server unreachable at start-up, mail is tempfailed until it answers: {error}", { error: describe(e) });
    }
  }

  lookup = (domain: string): PolicyResult | Promise<PolicyResult> => {
    const cached = this.#cache.get(domain);
    if (cached !== undefined) {
      this.stats.cacheHits++;
      return cached;
    }
    const pending = this.#inFlight.get(domain);
    if (pending !== undefined) return pending;
    const p = this.#query(domain).finally(() => this.#inFlight.delete(domain));
    this.#inFlight.set(domain, p);
    return p;
  };

  async #query(domain: string): Promise<PolicyResult> {
    const result = await this.#search(domain);
    if (result.kind === "backend_error") this.stats.errors++;
    return result;
  }

  async #search(domain: string): Promise<PolicyResult> {
    let client = this.#client;
    if (client === undefined || !client.isConnected) {
      // A connection the server closed while idle is replaced (TLS and bind
      // included) rather than letting the client reconnect unauthenticated.
      if (client !== undefined) this.#drop();
      const c = await this.#connectWithin(this.config.connectTimeoutMs);
      if (typeof c === "string") return { kind: "backend_error", reason: `LDAP unavailable: ${c}` };
      client = c;
    }
    try {
      this.stats.queries++;
      // A replacer function: a replacement string would expand `$'`, `$&`... in the domain.
      const escaped = Filter.escape(domain);
      const filter = this.config.query.replaceAll("%d", () => escaped);
      const a = this.config.attributes;
      const { searchEntries } = await client.search(this.config.searchBase, {
        scope: "sub",
        filter,
        attributes: [a.tenantId, a.dkimEnabled, a.dkimAlignmentRequired],
        sizeLimit: 2,
      });
      const result = policyFromEntries(domain, searchEntries as LdapEntry[], a);
      this.#cache.set(domain, result);
      return result;
    } catch (e) {
      this.log.error("LDAP search for {domain} failed: {error}", { domain, error: describe(e) });
      this.#broken(e);
      return { kind: "backend_error", reason: describe(e) };
    }
  }

  /**
   * The attempt in flight, or a new one (one attempt serves every message
   * waiting for it); waits for it at most `ms`. The reason when it failed or
   * did not finish in time (it goes on; a failure schedules the next one).
   */
  async #connectWithin(ms: number): Promise<Client | string> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve(`no connection within ${ms} ms`), ms);
    });
    try {
      return await Promise.race([this.#connect().catch(() => this.#lastError), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Tries every URI in order; resolves with a bound client. A failure is
   * remembered for the reply and schedules the next background attempt.
   */
  #connect(): Promise<Client> {
    this.#connecting ??= (async () => {
      let last: unknown;
      for (const url of this.config.uris) {
        const client = new Client({
          url,
          timeout: this.config.receiveTimeoutMs,
          connectTimeout: this.config.connectTimeoutMs,
          tlsOptions: this.#tls,
        });
        try {
          if (this.config.startTls) await client.startTLS(this.#tls ?? {});
          if (this.config.bindDn !== "") await client.bind(this.config.bindDn, this.config.bindPassword);
          // One round trip before saying "connected": an anonymous client has
          // not sent a byte yet, and this also proves the search base exists.
          await client.search(this.config.searchBase, { scope: "base", attributes: ["1.1"], sizeLimit: 1 });
          this.#client = client;
          this.#failures = 0;
          if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
          this.#retryTimer = undefined;
          this.log.info("LDAP connected to {url}", { url });
          return client;
        } catch (e) {
          last = e;
          void client.unbind().catch(() => {});
          if (isConfigError(e)) throw new LdapConfigError(`LDAP ${url}: ${describe(e)}`);
          // Loud once; while reconnecting with back-off, quietly.
          if (this.#failures === 0) this.log.warn("LDAP {url} failed: {error}", { url, error: describe(e) });
          else this.log.debug("LDAP {url} still failing: {error}", { url, error: describe(e) });
        }
      }
      throw last ?? new Error("no LDAP URI configured");
    })().then(
      (client) => {
        this.#connecting = undefined;
        return client;
      },
      (e: unknown) => {
        this.#connecting = undefined;
        this.#lastError = describe(e);
        this.#scheduleRetry();
        throw e;
      },
    );
    return this.#connecting;
  }

  /** Drops the connection and reconnects in the background, with back-off. */
  #broken(e: unknown): void {
    this.#lastError = describe(e);
    this.#drop();
    this.#scheduleRetry();
  }

  #drop(): void {
    const client = this.#client;
    this.#client = undefined;
    if (client !== undefined) void client.unbind().catch(() => {});
  }

  #scheduleRetry(): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    const delay = BACKOFF_MS[Math.min(this.#failures, BACKOFF_MS.length - 1)]!;
    this.#failures++;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      // A failure schedules the next attempt (see #connect).
      this.#connect().catch((e) => {
        if (e instanceof LdapConfigError) this.log.error(literal(e.message));
      });
    }, delay);
    this.#retryTimer.unref?.();
  }

  /**
   * Every policy in the directory: the query with `*` for the domain, each
   * entry's domains read from the attribute the query compares with `%d`.
   */
  async list(): Promise<{ ok: true; policies: Array<[string, PolicyResult]> } | { ok: false; error: string }> {
    const attr = /\(([A-Za-z][A-Za-z0-9-]*)=%d\)/.exec(this.config.query)?.[1];
    if (attr === undefined) return { ok: false, error: `cannot list policies: MILTER_LDAP_QUERY compares no attribute with %d as (attribute=%d)` };
    const a = this.config.attributes;
    try {
      const client = this.#client ?? await this.#connect();
      const { searchEntries } = await client.search(this.config.searchBase, {
        scope: "sub",
        filter: this.config.query.replaceAll("%d", "*"),
        attributes: [attr, a.tenantId, a.dkimEnabled, a.dkimAlignmentRequired],
        paged: true,
      });
      const byDomain = new Map<string, LdapEntry[]>();
      for (const entry of searchEntries as LdapEntry[]) {
        const names = Object.entries(entry).find(([k]) => k.toLowerCase() === attr.toLowerCase())?.[1];
        for (const d of Array.isArray(names) ? names : [names]) {
          if (typeof d !== "string") continue;
          const domain = d.toLowerCase();
          byDomain.set(domain, [...byDomain.get(domain) ?? [], entry]);
        }
      }
      return { ok: true, policies: [...byDomain].map(([d, entries]) => [d, policyFromEntries(d, entries, a)]) };
    } catch (e) {
      return { ok: false, error: `LDAP search for every policy failed: ${describe(e)}` };
    }
  }

  clearCache(): void {
    this.#cache.clear();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    const client = this.#client;
    this.#client = undefined;
    if (client !== undefined) await client.unbind().catch(() => {});
  }
}

function isConfigError(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return typeof code === "number" && CONFIG_CODES.has(code);
}

/** Names of LDAP result codes: ldapts's message is only the server's text, often empty. */
const RESULT_NAMES: Readonly<Record<number, string>> = {
  0x20: "no such object",
  0x22: "invalid DN syntax",
  0x30: "inappropriate authentication",
  0x31: "invalid credentials",
  0x32: "insufficient access rights",
  0x33: "busy",
  0x34: "unavailable",
};

function describe(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "number") {
      const text = e.message.replace(/\s*Code: 0x[0-9a-f]+$/i, "").trim();
      const name = RESULT_NAMES[code] ?? "LDAP error";
      return `${name}${text === "" ? "" : `: ${text}`} (code ${code})`;
    }
    return code !== undefined ? `${e.message} (code ${String(code)})` : e.message;
  }
  return String(e);
}
