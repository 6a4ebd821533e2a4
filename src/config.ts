/**
 * Configuration: environment variables (the original's names) and
 * command-line flags (which win) -> one validated object. Every value is
 * checked at start-up; a wrong one is one line naming the variable, the
 * value and what is accepted.
 * @module
 */
import * as v from "valibot";
import { hostBitsSet, type IpRange, parseIp, parseRange } from "./policy/ip-allowlist.ts";
import type { LdapConfig } from "./policy/ldap-backend.ts";
import type { FilterConfig } from "./filter.ts";
import { formatSocketSpec, parseSocketSpec, type SocketSpec } from "./server/socket-spec.ts";

const TRUE_WORDS = ["true", "yes", "on", "1"];
const FALSE_WORDS = ["false", "no", "off", "0"];

interface Setting<T> {
  readonly env: string;
  readonly flag: string;
  readonly default: string | undefined;
  readonly help: string;
  /** What is accepted, for error messages. */
  readonly accepted: string;
  readonly schema: v.GenericSchema<string, T>;
}

const setting = <T>(
  env: string,
  flag: string,
  def: string | undefined,
  help: string,
  accepted: string,
  schema: v.GenericSchema<string, T>,
): Setting<T> => ({ env, flag, default: def, help, accepted, schema });

const text = (env: string, flag: string, def: string | undefined, help: string) =>
  setting(env, flag, def, help, "any text", v.string());

const bool = (env: string, flag: string, help: string, def = "false") =>
  setting(
    env,
    flag,
    def,
    help,
    `a boolean word (${TRUE_WORDS.join("/")} or ${FALSE_WORDS.join("/")}, any case)`,
    v.pipe(
      v.string(),
      v.trim(),
      v.toLowerCase(),
      v.picklist([...TRUE_WORDS, ...FALSE_WORDS]),
      v.transform((w) => TRUE_WORDS.includes(w)),
    ),
  );

const token = (env: string, flag: string, help: string) =>
  setting(env, flag, undefined, help, "one word without spaces", v.pipe(v.string(), v.regex(/^\S+$/)));

const socketSchema = v.pipe(
  v.string(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    const r = parseSocketSpec(dataset.value);
    if (r.ok) return r.value;
    addIssue({ message: r.error });
    return NEVER;
  }),
) as v.GenericSchema<string, SocketSpec>;

const addressList = v.pipe(
  v.string(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    const ranges: IpRange[] = [];
    for (const item of dataset.value.split(/[\s,]+/).filter((a) => a !== "")) {
      const r = parseRange(item);
      if (r === undefined) {
        addIssue({ message: `"${item}" is no address or range` });
        return NEVER;
      }
      // 10.1.2.3/8 is a typo for a host or for 10.0.0.0/8: which one, only the operator knows.
      const canonical = hostBitsSet(r);
      if (canonical !== undefined) {
        addIssue({ message: `"${item}" has host bits set: did you mean ${canonical}?` });
        return NEVER;
      }
      ranges.push(r);
    }
    return ranges;
  }),
) as v.GenericSchema<string, IpRange[]>;

const seconds = (env: string, flag: string, def: string, help: string, min = 0) =>
  setting(
    env,
    flag,
    def,
    help,
    `a number of seconds from ${min} (fractions allowed)`,
    v.pipe(v.string(), v.trim(), v.regex(/^\d{1,9}(?:\.\d{1,3})?$/), v.transform(Number), v.minValue(min)),
  );

const uriList = v.pipe(
  v.string(),
  v.transform((s) => s.split(/[\s,]+/).filter((u) => u !== "")),
  v.array(v.pipe(v.string(), v.regex(/^ldaps?:\/\/[^/\s]+\/?$/i))),
  v.minLength(1),
);

/**
 * One parenthesised filter, its parentheses balanced (a literal one in a
 * value is written \28 or \29 in RFC 4515, so every raw one counts); ldapts
 * would send "(&(a=%d)" as it is and every lookup would fail.
 */
function oneFilter(filter: string): boolean {
  let depth = 0;
  for (let i = 0; i < filter.length; i++) {
    if (filter[i] === "(") depth++;
    else if (filter[i] === ")" && --depth === 0 && i !== filter.length - 1) return false;
    if (depth < 0) return false;
  }
  return depth === 0;
}

const count = (env: string, flag: string, def: string, help: string, min = 1) =>
  setting(
    env,
    flag,
    def,
    help,
    `a whole number from ${min}`,
    v.pipe(v.string(), v.trim(), v.regex(/^\d{1,10}$/), v.transform(Number), v.minValue(min)),
  );

export const SETTINGS = {
  name: text("MILTER_NAME", "name", "exota-milter", "instance name, in every log line"),
  socket: setting(
    "MILTER_SOCKET",
    "socket",
    "inet:4321@127.0.0.1",
    "where to listen; ignored under systemd socket activation (LISTEN_FDS)",
    "inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path",
    socketSchema,
  ),
  socketMode: setting(
    "MILTER_SOCKET_MODE",
    "socket-mode",
    "0660",
    "permissions of a unix socket (Postfix connects as user postfix)",
    "an octal mode such as 0660 or 0666",
    v.pipe(v.string(), v.regex(/^0?[0-7]{3}$/), v.transform((s) => parseInt(s, 8))),
  ),
  rejectMessage: text("MILTER_REJECT_MESSAGE", "reject-message", "Security policy violation!", "text of 5xx replies"),
  tmpfailMessage: text(
    "MILTER_TMPFAIL_MESSAGE",
    "tmpfail-message",
    "Service temporarily not available! Please try again later.",
    "text of 4xx replies",
  ),
  tenantIdRequired: bool(
    "MILTER_TENANT_ID_REQUIRED",
    "tenant-id-required",
    "require X-MS-Exchange-CrossTenant-Id to match the policy",
  ),
  dkimEnabled: bool("MILTER_DKIM_ENABLED", "dkim-enabled", "require a DKIM pass from the trusted verifier"),
  dkimAlignmentRequired: bool(
    "MILTER_DKIM_ALIGNMENT_REQUIRED",
    "dkim-alignment-required",
    "require the DKIM signing domain to equal the From domain",
  ),
  trustedAuthservId: token(
    "MILTER_TRUSTED_AUTHSERVID",
    "trusted-authservid",
    "authserv-id of the DKIM verifier whose Authentication-Results count (required with DKIM)",
  ),
  policySource: setting(
    "MILTER_POLICY_SOURCE",
    "policy-source",
    "file",
    "policy backend",
    "file or ldap",
    v.picklist(["file", "ldap"]),
  ),
  policyFile: text("MILTER_POLICY_FILE", "policy-file", "/data/policy.json", "JSON policy file"),
  policyMaxSize: count(
    "MILTER_POLICY_MAX_SIZE",
    "policy-max-size",
    "64",
    "largest policy file in MiB (a million domains take ~146 MiB); a larger one, or one that is not a regular file, is refused",
  ),
  x509Enabled: bool("MILTER_X509_ENABLED", "x509-enabled", "require the trusted client certificate CN"),
  x509TrustedCn: text(
    "MILTER_X509_TRUSTED_CN",
    "x509-trusted-cn",
    "mail.protection.outlook.com",
    "expected client certificate CN",
  ),
  x509IpWhitelist: setting(
    "MILTER_X509_IP_WHITELIST",
    "x509-ip-whitelist",
    "127.0.0.1,::1",
    "client addresses that skip the certificate check",
    "IPv4/IPv6 addresses or CIDR ranges, separated by commas or spaces",
    addressList,
  ),
  x509TrustedIssuer: text(
    "MILTER_X509_TRUSTED_ISSUER",
    "x509-trusted-issuer",
    "",
    "when set, the client certificate's issuer CN ({cert_issuer}) must equal it",
  ),
  authResultsAnywhere: bool(
    "MILTER_TRUSTED_AUTHRES_ANYWHERE",
    "trusted-authres-anywhere",
    "count trusted Authentication-Results wherever they stand, not only above the first Received header " +
      "(only for verifiers that append at the bottom; weaker)",
  ),
  maxFrame: count("MILTER_MAX_FRAME_SIZE", "max-frame-size", "1048576", "largest milter frame in bytes", 65536),
  maxHeaders: count("MILTER_MAX_HEADERS", "max-headers", "1000", "most headers per message; more tempfails it"),
  maxHeaderBytes: count(
    "MILTER_MAX_HEADER_BYTES",
    "max-header-bytes",
    "262144",
    "most header bytes per message (Postfix's header_size_limit is 102400); more tempfails it",
  ),
  maxConnections: count("MILTER_MAX_CONNECTIONS", "max-connections", "1000", "most milter connections at once; more are closed"),
  idleTimeout: seconds(
    "MILTER_IDLE_TIMEOUT",
    "idle-timeout",
    "600",
    "seconds a connection may be silent, or take to send one frame from its first byte, before it is closed",
    1,
  ),
  messageTimeout: seconds(
    "MILTER_MESSAGE_TIMEOUT",
    "message-timeout",
    "600",
    "seconds one message may take from MAIL to end of message before its connection is closed",
    1,
  ),
  ldapUris: setting(
    "MILTER_LDAP_SERVER_URI",
    "ldap-server-uri",
    undefined,
    "LDAP server(s), tried in order (required with ldap)",
    "ldap://HOST[:PORT] or ldaps://HOST[:PORT], several separated by spaces or commas",
    uriList,
  ),
  ldapBindDn: text("MILTER_LDAP_BINDDN", "ldap-binddn", "", "DN to bind as (empty: anonymous)"),
  ldapBindPw: text("MILTER_LDAP_BINDPW", "ldap-bindpw", "", "bind password"),
  ldapBindPwFile: text(
    "MILTER_LDAP_BINDPW_FILE",
    "ldap-bindpw-file",
    "",
    "file holding the bind password (e.g. a systemd credential)",
  ),
  ldapSearchBase: text("MILTER_LDAP_SEARCH_BASE", "ldap-search-base", undefined, "search base (required with ldap)"),
  ldapQuery: setting(
    "MILTER_LDAP_QUERY",
    "ldap-query",
    undefined,
    "search filter; %d is the From domain, escaped (required with ldap)",
    "an LDAP filter in balanced parentheses containing %d",
    v.pipe(v.string(), v.trim(), v.regex(/^\(.*%d.*\)$/s), v.check(oneFilter)),
  ),
  ldapReceiveTimeout: seconds(
    "MILTER_LDAP_RECEIVE_TIMEOUT",
    "ldap-receive-timeout",
    "5",
    "seconds to wait for an LDAP answer",
    0.1,
  ),
  ldapConnectTimeout: seconds(
    "MILTER_LDAP_CONNECT_TIMEOUT",
    "ldap-connect-timeout",
    "5",
    "seconds to wait for an LDAP connection",
    0.1,
  ),
  ldapStartTls: bool("MILTER_LDAP_STARTTLS", "ldap-starttls", "use StartTLS on ldap:// connections"),
  ldapCaFile: text(
    "MILTER_LDAP_CA_FILE",
    "ldap-ca-file",
    "",
    "PEM file of the CA for ldaps:// and StartTLS (default: system CAs)",
  ),
  ldapTenantIdAttr: text(
    "MILTER_LDAP_TENANT_ID_ATTR",
    "ldap-tenant-id-attr",
    "exotaMilterTenantId",
    "attribute of the tenant id",
  ),
  ldapDkimEnabledAttr: text(
    "MILTER_LDAP_DKIM_ENABLED_ATTR",
    "ldap-dkim-enabled-attr",
    "exotaMilterDkimEnabled",
    "attribute of dkim_enabled",
  ),
  ldapDkimAlignmentRequiredAttr: text(
    "MILTER_LDAP_DKIM_ALIGNMENT_REQUIRED_ATTR",
    "ldap-dkim-alignment-required-attr",
    "exotaMilterDkimAlignmentRequired",
    "attribute of dkim_alignment_required",
  ),
  ldapCacheTtl: seconds("MILTER_LDAP_CACHE_TTL", "ldap-cache-ttl", "60", "seconds an LDAP answer is reused (0: no cache)"),
  addHeader: bool("MILTER_ADD_HEADER", "add-header", "add an X-ExOTA-Authentication-Results header to accepted mail"),
  authservId: token("MILTER_AUTHSERVID", "authservid", "authserv-id written into that header (required with add-header)"),
  reportOnly: bool(
    "MILTER_REPORT_ONLY",
    "report-only",
    "decide and log every message, but let rejected ones through (the added header says what would have happened)",
  ),
  policyWatch: bool(
    "MILTER_POLICY_WATCH",
    "policy-watch",
    "reload the policy file when it changes on disk (SIGHUP always reloads)",
    "true",
  ),
  shutdownTimeout: seconds(
    "MILTER_SHUTDOWN_TIMEOUT",
    "shutdown-timeout",
    "10",
    "seconds to let messages in flight finish on SIGTERM before exiting",
  ),
  metricsListen: setting(
    "MILTER_METRICS_LISTEN",
    "metrics-listen",
    "",
    "HOST:PORT of a Prometheus metrics endpoint, e.g. 127.0.0.1:9799 (empty: off)",
    "empty or HOST:PORT (IPv6 as [::1]:PORT)",
    v.pipe(
      v.string(),
      v.trim(),
      v.rawTransform(({ dataset, addIssue, NEVER }) => {
        if (dataset.value === "") return undefined;
        const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(dataset.value);
        const port = Number(m?.[3]);
        if (m === null || !(port >= 1 && port <= 65535)) {
          addIssue({ message: "not HOST:PORT" });
          return NEVER;
        }
        return { host: (m[1] ?? m[2])!, port };
      }),
    ) as v.GenericSchema<string, { host: string; port: number } | undefined>,
  ),
  tenantLookupUrl: setting(
    "MILTER_TENANT_LOOKUP_URL",
    "tenant-lookup-url",
    "https://login.microsoftonline.com",
    "where `tenant-id` and `check --verify-tenants` ask Microsoft for a domain's tenant id (never used while serving mail)",
    "an http:// or https:// URL",
    v.pipe(v.string(), v.trim(), v.regex(/^https?:\/\/[^/\s]+(\/\S*)?$/i), v.transform((u) => u.replace(/\/+$/, ""))),
  ),
  tenantLookupTimeout: seconds(
    "MILTER_TENANT_LOOKUP_TIMEOUT",
    "tenant-lookup-timeout",
    "10",
    "seconds `tenant-id` and `check --verify-tenants` wait for one answer from Microsoft",
    0.1,
  ),
  logFormat: setting(
    "LOG_FORMAT",
    "log-format",
    "auto",
    "text lines, journal (syslog priority prefix, no time stamp), json lines, or auto (journal under systemd, else text)",
    "auto, text, journal or json",
    v.pipe(v.string(), v.trim(), v.toLowerCase(), v.picklist(["auto", "text", "journal", "json"])),
  ),
  logLevel: setting(
    "LOG_LEVEL",
    "log-level",
    "info",
    "least severe level logged",
    "debug, info, warning or error",
    v.pipe(
      v.string(),
      v.trim(),
      v.toLowerCase(),
      v.transform((s) => (s === "warn" ? "warning" : s)),
      v.picklist(["debug", "info", "warning", "error"]),
    ),
  ),
} as const;

type Settings = typeof SETTINGS;
type Values = { -readonly [K in keyof Settings]: Settings[K] extends Setting<infer T> ? T : never };

export type LogLevel = Values["logLevel"];
export type LogFormat = "text" | "journal" | "json";

/** A setting as it came, for `check` (secrets masked). */
export interface EffectiveSetting {
  readonly env: string;
  readonly value: string;
  readonly source: "flag" | "environment" | "default";
}

const SECRET_SETTINGS = new Set(["MILTER_LDAP_BINDPW"]);

/**
 * Longest reject or tempfail message: the reply line
 * `550 5.7.1 queue_id: Q - MESSAGE - reason: R` plus CRLF must fit in 512
 * octets with a queue id of 20 characters and the longest reason the
 * decision writes, "No policy for 5322.from_domain " and a 253-character
 * domain: 512 - 2 - 20 - 20 - 3 - 11 - 284.
 */
export const MAX_REPLY_MESSAGE_OCTETS = 172;

/** Levenshtein distance, for "did you mean" on a mistyped variable. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next.push(Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)));
    }
    row = next;
  }
  return row[b.length]!;
}

/** What is legal but probably a mistake or a risk: said at start-up and by `check`. */
function configWarnings(
  c: Values,
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  uid: number | undefined,
): string[] {
  const out: string[] = [];
  if (uid === 0) out.push("running as root: run exota-milter as a user of its own (the systemd unit does)");
  const known = Object.values(SETTINGS).map((s) => s.env);
  let names: string[] = [];
  try {
    names = Object.keys(env);
  } catch {
    // Deno lists the environment only to a program that may read all of it.
    out.push("the names in the environment are not readable (Deno grants them only with a plain --allow-env): a mistyped MILTER_ variable goes unnoticed");
  }
  for (const name of names.filter((n) => n.startsWith("MILTER_") && !known.includes(n)).sort()) {
    const closest = known.reduce((a, b) => (distance(name, b) < distance(name, a) ? b : a));
    out.push(`${name} is not a setting and is ignored; did you mean ${closest}?`);
  }
  if (c.socket.kind === "tcp" && (c.socket.host === "0.0.0.0" || c.socket.host === "::")) {
    out.push(
      `MILTER_SOCKET ${formatSocketSpec(c.socket)} listens on every interface: whoever reaches the port can ask for verdicts ` +
        "and learn the policy; listen on 127.0.0.1 or a unix socket, or firewall the port",
    );
  }
  for (const r of c.x509IpWhitelist) {
    if (r.bits <= (r.v4 ? 96 : 0)) {
      out.push(`MILTER_X509_IP_WHITELIST contains ${r.text}: every client skips the certificate check`);
    }
  }
  if (argv.some((a) => a === "--ldap-bindpw" || a.startsWith("--ldap-bindpw="))) {
    out.push(
      "--ldap-bindpw puts the LDAP password in the process list, where every local user can read it; " +
        "use MILTER_LDAP_BINDPW_FILE (--ldap-bindpw-file) or the MILTER_LDAP_BINDPW environment variable",
    );
  }
  return out;
}

export interface Config {
  readonly settings: readonly EffectiveSetting[];
  /** Settings that work but are probably a mistake or a risk, one sentence each. */
  readonly warnings: readonly string[];
  readonly name: string;
  readonly socket: SocketSpec;
  readonly socketMode: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly policySource: "file" | "ldap";
  readonly policyFile: string;
  readonly policyMaxBytes: number;
  /** Set when the policy source is ldap; the password may still be in a file. */
  readonly ldap:
    | (Omit<LdapConfig, "bindPassword"> & { readonly bindPassword: string; readonly bindPasswordFile: string })
    | undefined;
  readonly maxFrame: number;
  readonly maxConnections: number;
  readonly idleTimeoutMs: number;
  readonly messageTimeoutMs: number;
  readonly shutdownTimeoutMs: number;
  readonly policyWatch: boolean;
  readonly metricsListen: { readonly host: string; readonly port: number } | undefined;
  readonly tenantLookup: { readonly baseUrl: string; readonly timeoutMs: number };
  readonly filter: FilterConfig;
}

/** What `check` is asked to do beyond the configuration and policy. */
export interface CheckRequest {
  /** Audit the Postfix configuration (in `dir`, or Postfix's default directory). */
  readonly postfix: { readonly dir: string | undefined } | undefined;
  /** Compare every policy entry's tenant id with the one Microsoft publishes. */
  readonly verifyTenants: boolean;
  readonly json: boolean;
}

/** What `explain` is asked about. */
export interface ExplainRequest {
  readonly messageFile: string;
  readonly clientIp: string | undefined;
  readonly certSubject: string | undefined;
  readonly certIssuer: string | undefined;
  /** The `{verify}` macro as Sendmail would send it (OK, FAIL, ...). */
  readonly certVerify: string | undefined;
  readonly queueId: string | undefined;
}

export type ConfigResult =
  | { readonly ok: true; readonly command: "run"; readonly config: Config }
  | { readonly ok: true; readonly command: "check"; readonly config: Config; readonly check: CheckRequest }
  | { readonly ok: true; readonly command: "tenant-id"; readonly config: Config; readonly domains: readonly string[]; readonly json: boolean }
  | { readonly ok: true; readonly command: "explain"; readonly config: Config; readonly explain: ExplainRequest }
  | { readonly ok: true; readonly command: "help" | "version" | "man" }
  | { readonly ok: false; readonly error: string };

const EXPLAIN_FLAGS = ["message", "client-ip", "cert-subject", "cert-issuer", "cert-verify", "queue-id"] as const;
/** Flags without a value (`--json`), or with an optional one (`--postfix[=DIR]`): "" when none is given. */
const BARE_FLAGS = new Set(["postfix", "verify-tenants", "json"]);

interface Flags {
  readonly help: boolean;
  readonly version: boolean;
  readonly man: boolean;
  readonly values: Map<string, string>;
  readonly positionals: string[];
}

/**
 * `--flag=value`, `--flag value`, `-h`/`--help`, `-V`/`--version`, `--man`, positional
 * words, `--` ends the flags; the last of a repeated flag wins. Own code
 * rather than node:util's parseArgs, whose module costs ~5 ms of start-up.
 */
function parseFlags(argv: readonly string[], valueFlags: ReadonlySet<string>): Flags | string {
  const flags = { help: false, version: false, man: false, values: new Map<string, string>(), positionals: [] as string[] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      flags.positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === "-h" || arg === "--help") flags.help = true;
    else if (arg === "-V" || arg === "--version") flags.version = true;
    else if (arg === "--man") flags.man = true;
    else if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      if (!valueFlags.has(name) && !BARE_FLAGS.has(name)) return `unknown option "--${name}"`;
      let value = eq < 0 ? (BARE_FLAGS.has(name) ? "" : argv[i + 1]) : arg.slice(eq + 1);
      if (eq < 0 && !BARE_FLAGS.has(name)) {
        if (value === undefined || value.startsWith("--")) return `option "--${name}" needs a value`;
        i++;
      }
      flags.values.set(name, value!);
    } else if (arg.startsWith("-") && arg !== "-") return `unknown option "${arg}"`;
    else flags.positionals.push(arg);
  }
  return flags;
}

/** Reads flags (`--dkim-enabled=yes`) and the environment into a config. */
/** `uid`: the user the process runs as (root is warned about). */
export function loadConfig(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  uid?: number,
): ConfigResult {
  const parsed = parseFlags(argv, new Set([...EXPLAIN_FLAGS, ...Object.values(SETTINGS).map((s) => s.flag)]));
  if (typeof parsed === "string") return { ok: false, error: `${parsed} (see --help)` };
  if (parsed.help) return { ok: true, command: "help" };
  if (parsed.version) return { ok: true, command: "version" };
  if (parsed.man) return { ok: true, command: "man" };
  const [command = "run", ...extra] = parsed.positionals;
  if (command !== "run" && command !== "check" && command !== "explain" && command !== "tenant-id") {
    return { ok: false, error: `unknown command "${command}": expected run, check, explain or tenant-id (see --help)` };
  }
  if (command === "tenant-id" && extra.length === 0) return { ok: false, error: "tenant-id needs at least one domain (see --help)" };
  if (command !== "tenant-id" && extra.length > 0) return { ok: false, error: `unexpected argument "${extra[0]}" (see --help)` };
  const bare = (f: string) => parsed.values.get(f);
  const strayBare = [...BARE_FLAGS].find((f) => bare(f) !== undefined && command !== "check" && !(command === "tenant-id" && f === "json"));
  if (strayBare !== undefined) return { ok: false, error: `--${strayBare} belongs to the check command (see --help)` };
  for (const f of ["verify-tenants", "json"]) {
    if (bare(f) !== undefined && bare(f) !== "") return { ok: false, error: `--${f} takes no value (see --help)` };
  }
  const explainValue = (f: typeof EXPLAIN_FLAGS[number]) => parsed.values.get(f);
  if (command !== "explain") {
    const stray = EXPLAIN_FLAGS.find((f) => explainValue(f) !== undefined);
    if (stray !== undefined) return { ok: false, error: `--${stray} belongs to the explain command (see --help)` };
  } else if (explainValue("message") === undefined) {
    return { ok: false, error: "explain needs --message FILE.eml (see --help)" };
  }

  const values: Partial<Record<keyof Settings, unknown>> = {};
  const effective: EffectiveSetting[] = [];
  for (const [key, s] of Object.entries(SETTINGS) as Array<[keyof Settings, Setting<unknown>]>) {
    const flagValue = parsed.values.get(s.flag);
    const fromFlag = flagValue !== undefined;
    const raw = flagValue ?? env[s.env] ?? s.default;
    if (raw === undefined) continue;
    effective.push({
      env: s.env,
      value: SECRET_SETTINGS.has(s.env) && raw !== "" ? "(secret)" : raw,
      source: fromFlag ? "flag" : env[s.env] !== undefined ? "environment" : "default",
    });
    const r = v.safeParse(s.schema, raw);
    if (!r.success) {
      const source = fromFlag ? `--${s.flag}` : env[s.env] !== undefined ? s.env : `default of ${s.env}`;
      // Our own checks say precisely what is wrong; valibot's generic messages add nothing.
      const detail = r.issues[0].type === "raw_transform" ? ` (${r.issues[0].message})` : "";
      return { ok: false, error: `${source}=${JSON.stringify(raw)} is not valid${detail}: expected ${s.accepted}` };
    }
    values[key] = r.output;
  }
  const c = values as Values;
  if (c.dkimEnabled && c.trustedAuthservId === undefined) {
    return { ok: false, error: "MILTER_TRUSTED_AUTHSERVID (--trusted-authservid) is required when MILTER_DKIM_ENABLED is true" };
  }
  if (c.addHeader && c.authservId === undefined) {
    return { ok: false, error: "MILTER_AUTHSERVID (--authservid) is required when MILTER_ADD_HEADER is true" };
  }
  for (const key of ["rejectMessage", "tmpfailMessage"] as const) {
    const octets = new TextEncoder().encode(c[key]).length;
    if (octets > MAX_REPLY_MESSAGE_OCTETS) {
      return {
        ok: false,
        error: `${SETTINGS[key].env} is ${octets} octets: with a queue id and the longest reason (a 253-character domain) ` +
          `the SMTP reply line would pass the 512 octets an MTA accepts (RFC 5321 4.5.3.1.5); at most ${MAX_REPLY_MESSAGE_OCTETS}`,
      };
    }
  }
  let ldap: Config["ldap"];
  if (c.policySource === "ldap") {
    for (const key of ["ldapUris", "ldapSearchBase", "ldapQuery"] as const) {
      if (c[key] === undefined) {
        return {
          ok: false,
          error: `${SETTINGS[key].env} (--${SETTINGS[key].flag}) is required when MILTER_POLICY_SOURCE is ldap`,
        };
      }
    }
    if (c.ldapBindPw !== "" && c.ldapBindPwFile !== "") {
      return { ok: false, error: "MILTER_LDAP_BINDPW and MILTER_LDAP_BINDPW_FILE are both set; use one" };
    }
    ldap = {
      uris: c.ldapUris!,
      bindDn: c.ldapBindDn,
      bindPassword: c.ldapBindPw,
      bindPasswordFile: c.ldapBindPwFile,
      searchBase: c.ldapSearchBase!,
      query: c.ldapQuery!,
      receiveTimeoutMs: c.ldapReceiveTimeout * 1000,
      connectTimeoutMs: c.ldapConnectTimeout * 1000,
      startTls: c.ldapStartTls,
      caFile: c.ldapCaFile,
      attributes: {
        tenantId: c.ldapTenantIdAttr,
        dkimEnabled: c.ldapDkimEnabledAttr,
        dkimAlignmentRequired: c.ldapDkimAlignmentRequiredAttr,
      },
      cacheTtlMs: c.ldapCacheTtl * 1000,
    };
  }
  const config: Config = {
    settings: effective,
    warnings: configWarnings(c, argv, env, uid),
    name: c.name,
    socket: c.socket,
    socketMode: c.socketMode,
    logLevel: c.logLevel,
    logFormat: c.logFormat === "auto" ? (env.JOURNAL_STREAM ? "journal" : "text") : c.logFormat,
    policySource: c.policySource,
    policyFile: c.policyFile,
    policyMaxBytes: c.policyMaxSize * 1048576,
    ldap,
    maxFrame: c.maxFrame,
    maxConnections: c.maxConnections,
    idleTimeoutMs: c.idleTimeout * 1000,
    messageTimeoutMs: c.messageTimeout * 1000,
    shutdownTimeoutMs: c.shutdownTimeout * 1000,
    policyWatch: c.policyWatch,
    metricsListen: c.metricsListen,
    tenantLookup: { baseUrl: c.tenantLookupUrl, timeoutMs: c.tenantLookupTimeout * 1000 },
    filter: {
      rejectMessage: c.rejectMessage,
      tempfailMessage: c.tmpfailMessage,
      tenantIdRequired: c.tenantIdRequired,
      dkimEnabled: c.dkimEnabled,
      dkimAlignmentRequired: c.dkimAlignmentRequired,
      trustedAuthservId: (c.trustedAuthservId ?? "").toLowerCase(),
      x509Enabled: c.x509Enabled,
      x509TrustedCn: c.x509TrustedCn,
      x509AllowList: c.x509IpWhitelist,
      x509TrustedIssuer: c.x509TrustedIssuer,
      authResultsAnywhere: c.authResultsAnywhere,
      maxHeaders: c.maxHeaders,
      maxHeaderBytes: c.maxHeaderBytes,
      addHeader: c.addHeader,
      authservId: c.authservId ?? "",
      reportOnly: c.reportOnly,
    },
  };
  if (command === "explain") {
    const clientIp = explainValue("client-ip");
    if (clientIp !== undefined && parseIp(clientIp) === undefined) {
      return { ok: false, error: `--client-ip=${JSON.stringify(clientIp)} is not valid: expected an IPv4 or IPv6 address` };
    }
    return {
      ok: true,
      command,
      config,
      explain: {
        messageFile: explainValue("message")!,
        clientIp,
        certSubject: explainValue("cert-subject"),
        certIssuer: explainValue("cert-issuer"),
        certVerify: explainValue("cert-verify"),
        queueId: explainValue("queue-id"),
      },
    };
  }
  if (command === "tenant-id") return { ok: true, command, config, domains: extra, json: bare("json") !== undefined };
  if (command === "check") {
    const dir = bare("postfix");
    if (bare("json") !== undefined && dir === undefined && bare("verify-tenants") === undefined) {
      return { ok: false, error: "--json goes with --postfix or --verify-tenants (see --help)" };
    }
    return {
      ok: true,
      command,
      config,
      check: {
        postfix: dir === undefined ? undefined : { dir: dir === "" ? undefined : dir },
        verifyTenants: bare("verify-tenants") !== undefined,
        json: bare("json") !== undefined,
      },
    };
  }
  return { ok: true, command, config };
}

/** The commands, for --help and the man page (src/cli/manpage.ts). */
export const COMMANDS = [
  { name: "run", usage: "[run] [--FLAG=VALUE ...]", summary: "serve mail" },
  {
    name: "check",
    usage: "check [--postfix[=CONFIG_DIR]] [--verify-tenants] [--json] [--FLAG=VALUE ...]",
    summary: "validate configuration and policy, print what is in force; --postfix instead audits the Postfix " +
      "settings around the milter, --verify-tenants compares every policy tenant id with the one Microsoft publishes",
  },
  {
    name: "explain",
    usage: "explain --message FILE.eml [--client-ip IP] [--cert-subject CN] [--cert-issuer CN] [--cert-verify OK] [--queue-id ID]",
    summary: "decide a saved message and print every step; the --cert-* values as the MTA gives the macros " +
      "{cert_subject}, {cert_issuer}, {verify}",
  },
  { name: "tenant-id", usage: "tenant-id [--json] DOMAIN...", summary: "print each domain's tenant id as Microsoft publishes it" },
] as const;

/** The options that are no setting, for --help and the man page. */
export const OTHER_OPTIONS = [
  { flags: ["-h", "--help"], summary: "this text" },
  { flags: ["-V", "--version"], summary: "the version, the build target and the Bun version" },
  { flags: ["--man"], summary: "the manual page exota-milter(8), as roff (man -l - reads it)" },
] as const;

/** The --help text, generated from the settings table. */
export function helpText(program: string): string {
  const lines = COMMANDS.map((c, i) => {
    const head = `${i === 0 ? "Usage:" : "      "} ${program} ${c.usage}`;
    return head.length < 48 ? head.padEnd(50) + c.summary : `${head}\n${" ".repeat(50)}${c.summary}`;
  });
  lines.push(
    "",
    "Exchange Online Tenant Authorisation milter. Every setting is a flag or an",
    "environment variable; a flag wins. Booleans are words: true/false, yes/no, on/off, 1/0.",
    "",
  );
  for (const s of Object.values(SETTINGS)) {
    lines.push(`  --${s.flag}=VALUE   (${s.env}${s.default !== undefined ? `, default ${JSON.stringify(s.default)}` : ""})`);
    lines.push(`      ${s.help}; ${s.accepted}`);
  }
  for (const o of OTHER_OPTIONS) lines.push(`  ${o.flags.join(", ").padEnd(14)}  ${o.summary}`);
  return lines.join("\n");
}
