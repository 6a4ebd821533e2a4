/**
 * Where the policy in force comes from: the JSON file (loaded whole,
 * replaced whole on reload, the old one kept when the new one is invalid)
 * or the LDAP directory. Sessions ask for the lookup at each end of message,
 * so a message decided while a reload happens uses the policy it started with.
 * @module
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync, watch, type FSWatcher } from "node:fs";
import type { Logger } from "@logtape/logtape";
import type { Config } from "../config.ts";
import { literal } from "../log.ts";
import type { LdapPolicyBackend } from "../policy/ldap-backend.ts";
import { dkimOffDomains, dkimOffWarning, mapLookup, parsePolicyBytes, parsePolicyBytesSliced, type PolicyMap } from "../policy/policy-file.ts";
import type { PolicyLookup, PolicyResult } from "../policy/types.ts";

/** Every policy in force, by domain (for `check --verify-tenants`), or why they cannot be listed. */
export type PolicyListing =
  | { readonly ok: true; readonly policies: ReadonlyArray<readonly [string, PolicyResult]> }
  | { readonly ok: false; readonly error: string };

export type ReloadResult = { readonly ok: true; readonly domains: number } | { readonly ok: false; readonly error: string };

export interface PolicyProvider {
  /** The lookup in force now. */
  lookup(): PolicyLookup;
  /** Entries in force (file), or undefined (directory). */
  entries(): number | undefined;
  /** Domains in force whose policy has `dkim_enabled: false` (file), or undefined (directory). */
  dkimOffDomains(): readonly string[] | undefined;
  list(): Promise<PolicyListing>;
  /** Reads the source again; keeps the old policy when the new one is invalid. */
  reload(): ReloadResult | Promise<ReloadResult>;
  close(): Promise<void>;
  readonly description: string;
}

/**
 * Why a path cannot be read as a policy: not a regular file (/dev/zero
 * would be read forever), or larger than `maxBytes`; undefined when fine.
 * A missing file is left to the read, which says so.
 */
function notAPolicyFile(path: string, maxBytes: number): string | undefined {
  let st;
  try {
    st = statSync(path);
  } catch {
    return undefined;
  }
  if (!st.isFile()) return `policy file ${path} is not a regular file`;
  if (st.size > maxBytes) {
    const mib = (n: number) => (n / 1048576).toFixed(n % 1048576 === 0 ? 0 : 1);
    return `policy file ${path} is ${mib(st.size)} MiB, more than MILTER_POLICY_MAX_SIZE (${mib(maxBytes)} MiB)`;
  }
  return undefined;
}

/** Reads and validates a policy file; never throws. */
export function readPolicyFile(path: string, maxBytes: number): { ok: true; policies: PolicyMap } | { ok: false; error: string } {
  const problem = notAPolicyFile(path, maxBytes);
  if (problem !== undefined) return { ok: false, error: problem };
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    return { ok: false, error: `cannot read policy file ${path}: ${(e as Error).message}` };
  }
  return parsePolicyBytes(bytes, path);
}

/** Work of a reload between two turns of the event loop, at most. */
const RELOAD_SLICE_MS = 8;

/**
 * {@link readPolicyFile} without holding up sessions: the file is read off
 * the event loop and parsed in slices of ~8 ms (a million domains: ~1 s in
 * all, no pause of a session longer than a slice).
 */
async function readPolicyFileSliced(path: string, maxBytes: number): Promise<{ ok: true; policies: PolicyMap } | { ok: false; error: string }> {
  const problem = notAPolicyFile(path, maxBytes);
  if (problem !== undefined) return { ok: false, error: problem };
  let sliceStart = performance.now();
  const pause = () => performance.now() - sliceStart > RELOAD_SLICE_MS;
  const yieldNow = () =>
    new Promise<void>((resolve) =>
      setImmediate(() => {
        sliceStart = performance.now();
        resolve();
      })
    );
  let bytes: Uint8Array;
  try {
    bytes = await readSliced(path, pause, yieldNow);
  } catch (e) {
    return { ok: false, error: `cannot read policy file ${path}: ${(e as Error).message}` };
  }
  return parsePolicyBytesSliced(bytes, path, pause, yieldNow);
}

/**
 * Reads a file in chunks, yielding between slices. (fs.promises.readFile of
 * a 150 MB file held up the event loop for up to ~100 ms here.)
 */
async function readSliced(path: string, pause: () => boolean, yieldNow: () => Promise<void>): Promise<Uint8Array> {
  const fd = openSync(path, "r");
  try {
    // Not zeroed: every byte is read into it before use.
    const buf = Buffer.allocUnsafe(fstatSync(fd).size);
    let len = 0;
    while (len < buf.length) {
      const n = readSync(fd, buf, len, Math.min(1 << 20, buf.length - len), null);
      if (n === 0) return buf.subarray(0, len); // shrunk while being read
      len += n;
      if (pause()) await yieldNow();
    }
    // Grown while being read (not an atomic replace): read the rest too.
    const rest: Uint8Array[] = [];
    const chunk = Buffer.allocUnsafe(1 << 16);
    for (let n; (n = readSync(fd, chunk, 0, chunk.length, null)) > 0;) rest.push(chunk.slice(0, n));
    return rest.length === 0 ? buf : Buffer.concat([buf, ...rest]);
  } finally {
    closeSync(fd);
  }
}

/** A million-domain file must not flood the log on every reload. */
const DKIM_OFF_LOG_LINES = 100;

export class FilePolicyProvider implements PolicyProvider {
  #policies: PolicyMap;
  #lookup: PolicyLookup;
  #watcher: FSWatcher | undefined;
  #debounce: ReturnType<typeof setTimeout> | undefined;
  /** When the first event of the changes waiting for a reload came. */
  #firstEvent = 0;
  #stamp: string;
  readonly description: string;

  /** Throws nothing: `load` returns the start-up error instead. */
  private constructor(
    readonly path: string,
    policies: PolicyMap,
    readonly log: Logger,
    readonly onReload: (r: ReloadResult) => void,
    readonly warnDkimOff: boolean,
    readonly maxBytes: number,
  ) {
    this.#policies = policies;
    this.#lookup = mapLookup(policies);
    this.#stamp = stamp(path);
    this.description = `file ${path}`;
  }

  /**
   * Loads the file and logs it; with `warnDkimOff` (tenant ids not required)
   * also one warning per policy with `dkim_enabled: false`, here and on
   * reload (the first {@link DKIM_OFF_LOG_LINES}, then how many more).
   */
  static load(
    path: string,
    maxBytes: number,
    log: Logger,
    onReload: (r: ReloadResult) => void = () => {},
    warnDkimOff = false,
  ): FilePolicyProvider | string {
    const r = readPolicyFile(path, maxBytes);
    if (!r.ok) return r.error;
    const p = new FilePolicyProvider(path, r.policies, log, onReload, warnDkimOff, maxBytes);
    log.info("policy loaded from {file}: {domains} domain(s)", { file: path, domains: p.entries() });
    p.#logDkimOff();
    return p;
  }

  #logDkimOff(): void {
    if (!this.warnDkimOff) return;
    const domains = dkimOffDomains(this.#policies);
    for (const d of domains.slice(0, DKIM_OFF_LOG_LINES)) this.log.warn(literal(dkimOffWarning(d)), { domain: d });
    const more = domains.length - DKIM_OFF_LOG_LINES;
    if (more > 0) this.log.warn("{more} more policies with dkim_enabled false; `exota-milter check` lists them all", { more });
  }

  lookup(): PolicyLookup {
    return this.#lookup;
  }

  entries(): number {
    return this.#policies.size;
  }

  list(): Promise<PolicyListing> {
    return Promise.resolve({ ok: true, policies: [...this.#policies].map(([d, policy]) => [d, { kind: "found", policy }] as const) });
  }

  dkimOffDomains(): readonly string[] {
    return dkimOffDomains(this.#policies);
  }

  #reloading: Promise<ReloadResult> | undefined;
  #again = false;

  /**
   * Reloads without stopping sessions for long (see readPolicyFileSliced);
   * messages decided meanwhile use the old policy. A request during a reload
   * runs once more after it.
   */
  reload(): Promise<ReloadResult> {
    if (this.#reloading !== undefined) {
      this.#again = true;
      return this.#reloading;
    }
    const run = async (): Promise<ReloadResult> => {
      let result: ReloadResult;
      do {
        this.#again = false;
        result = await this.#reloadOnce();
      } while (this.#again);
      this.#reloading = undefined;
      return result;
    };
    return this.#reloading = run();
  }

  async #reloadOnce(): Promise<ReloadResult> {
    this.#stamp = stamp(this.path);
    const r = await readPolicyFileSliced(this.path, this.maxBytes);
    let result: ReloadResult;
    if (r.ok) {
      this.#policies = r.policies;
      this.#lookup = mapLookup(r.policies);
      this.log.info("policy reloaded from {file}: {domains} domain(s)", { file: this.path, domains: r.policies.size });
      this.#logDkimOff();
      result = { ok: true, domains: r.policies.size };
    } else {
      this.log.error("policy reload refused, the old policy stays in force: {error}", { error: r.error });
      result = { ok: false, error: r.error };
    }
    this.onReload(result);
    return result;
  }

  /**
   * Reloads when the file changes. Watches the directory, so an editor's or
   * config management's atomic replace (write elsewhere, rename over) is seen,
   * and so is a Kubernetes ConfigMap's swap of its `..data` symlink (events
   * name `..data`, `..data_tmp`, never the file); events are debounced and a
   * reload happens only when the file really changed. A stream of changes
   * that never pauses for `debounceMs` still reloads `maxWaitMs` after its
   * first event.
   */
  watch(debounceMs = 300, maxWaitMs = 3000): void {
    const name = this.path.slice(this.path.lastIndexOf("/") + 1);
    this.#watcher = watch(directoryOf(this.path), (_event, file) => {
      if (file !== null && file !== name && !file.startsWith("..")) return;
      const now = performance.now();
      if (this.#debounce !== undefined) clearTimeout(this.#debounce);
      else this.#firstEvent = now;
      this.#debounce = setTimeout(() => {
        this.#debounce = undefined;
        if (stamp(this.path) !== this.#stamp) this.reload();
      }, Math.max(0, Math.min(debounceMs, this.#firstEvent + maxWaitMs - now)));
    });
    this.#watcher.on("error", (e) => this.log.warn("cannot watch {file}: {error}", { file: this.path, error: e.message }));
    // A change before the watch began is not missed.
    if (stamp(this.path) !== this.#stamp) void this.reload();
  }

  close(): Promise<void> {
    this.#watcher?.close();
    if (this.#debounce !== undefined) clearTimeout(this.#debounce);
    return Promise.resolve();
  }
}

/** The directory a file is in ("." for a bare name); node:path would cost ~2 ms of start-up. */
export function directoryOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
}

/** What identifies a version of the file, without reading it. */
function stamp(path: string): string {
  try {
    const s = statSync(path);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return "missing";
  }
}

export class LdapPolicyProvider implements PolicyProvider {
  readonly description: string;

  constructor(readonly backend: LdapPolicyBackend) {
    this.description = `ldap ${backend.config.uris.join(" ")}`;
  }

  lookup(): PolicyLookup {
    return this.backend.lookup;
  }

  entries(): undefined {
    return undefined;
  }

  list(): Promise<PolicyListing> {
    return this.backend.list();
  }

  dkimOffDomains(): undefined {
    return undefined;
  }

  /** A directory has no file to read again: drop cached answers instead. */
  reload(): ReloadResult {
    this.backend.clearCache();
    return { ok: true, domains: 0 };
  }

  close(): Promise<void> {
    return this.backend.close();
  }
}

/** The LDAP password, from the setting or its file. */
export function ldapPassword(config: NonNullable<Config["ldap"]>): { ok: true; value: string } | { ok: false; error: string } {
  if (config.bindPasswordFile === "") return { ok: true, value: config.bindPassword };
  try {
    return { ok: true, value: readFileSync(config.bindPasswordFile, "utf8").replace(/\r?\n$/, "") };
  } catch (e) {
    return { ok: false, error: `cannot read MILTER_LDAP_BINDPW_FILE ${config.bindPasswordFile}: ${(e as Error).message}` };
  }
}

/**
 * Opens the configured policy source. A start-up problem (unreadable or
 * invalid file, wrong LDAP credentials) is returned as text; an LDAP server
 * that does not answer yet is not one (mail is tempfailed until it does).
 * `logWarnings`: log what the policy opens up (the daemon; `check` prints it).
 */
export async function openPolicy(
  config: Config,
  log: Logger,
  onReload: (r: ReloadResult) => void = () => {},
  logWarnings = false,
): Promise<PolicyProvider | string> {
  if (config.ldap === undefined) {
    return FilePolicyProvider.load(config.policyFile, config.policyMaxBytes, log, onReload, logWarnings && !config.filter.tenantIdRequired);
  }
  const password = ldapPassword(config.ldap);
  if (!password.ok) return password.error;
  // Loaded only for LDAP: the client pulls in node:tls, node:crypto and more
  // (~10 MB of memory and milliseconds of start-up a file policy does not need).
  const { LdapConfigError, LdapPolicyBackend } = await import("../policy/ldap-backend.ts");
  let backend: LdapPolicyBackend;
  try {
    backend = new LdapPolicyBackend({ ...config.ldap, bindPassword: password.value }, log);
  } catch (e) {
    return `cannot read MILTER_LDAP_CA_FILE ${config.ldap.caFile}: ${(e as Error).message}`;
  }
  try {
    await backend.start();
  } catch (e) {
    if (e instanceof LdapConfigError) return e.message;
    throw e;
  }
  return new LdapPolicyProvider(backend);
}
