/**
 * Configuration: environment variables (the original's names) and
 * command-line flags (which win) -> one validated object. Every value is
 * checked at start-up; a wrong one is one line naming the variable, the
 * value and what is accepted.
 * @module
 */
import { parseArgs } from "node:util";
import * as v from "valibot";
import { normalizeAddress } from "./policy/decide.ts";
import type { FilterConfig } from "./filter.ts";
import { parseSocketSpec, type SocketSpec } from "./server/socket-spec.ts";

const TRUE_WORDS = ["true", "yes", "on", "1"];
const FALSE_WORDS = ["false", "no", "off", "0"];

const words = (list: readonly string[]) => list.join(", ");

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

const bool = (env: string, flag: string, help: string) =>
  setting(
    env,
    flag,
    "false",
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
  v.transform((s) => s.split(/[\s,]+/).filter((a) => a !== "")),
  v.array(v.pipe(v.string(), v.ip())),
  v.transform((list) => list.map(normalizeAddress)),
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
  tenantIdRequired: bool("MILTER_TENANT_ID_REQUIRED", "tenant-id-required", "require X-MS-Exchange-CrossTenant-Id to match the policy"),
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
  policySource: setting("MILTER_POLICY_SOURCE", "policy-source", "file", "policy backend", "file", v.picklist(["file"])),
  policyFile: text("MILTER_POLICY_FILE", "policy-file", "/data/policy.json", "JSON policy file"),
  x509Enabled: bool("MILTER_X509_ENABLED", "x509-enabled", "require the trusted client certificate CN"),
  x509TrustedCn: text("MILTER_X509_TRUSTED_CN", "x509-trusted-cn", "mail.protection.outlook.com", "expected client certificate CN"),
  x509IpWhitelist: setting(
    "MILTER_X509_IP_WHITELIST",
    "x509-ip-whitelist",
    "127.0.0.1,::1",
    "client addresses that skip the certificate check",
    "IP addresses separated by commas or spaces",
    addressList,
  ),
  addHeader: bool("MILTER_ADD_HEADER", "add-header", "add an X-ExOTA-Authentication-Results header to accepted mail"),
  authservId: token("MILTER_AUTHSERVID", "authservid", "authserv-id written into that header (required with add-header)"),
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

export interface Config {
  readonly name: string;
  readonly socket: SocketSpec;
  readonly socketMode: number;
  readonly logLevel: LogLevel;
  readonly policySource: "file";
  readonly policyFile: string;
  readonly filter: FilterConfig;
}

export type Command = "run" | "help" | "version";

export type ConfigResult =
  | { readonly ok: true; readonly command: "run"; readonly config: Config }
  | { readonly ok: true; readonly command: "help" | "version" }
  | { readonly ok: false; readonly error: string };

/** Reads flags (`--dkim-enabled=yes`) and the environment into a config. */
export function loadConfig(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): ConfigResult {
  const options: Record<string, { type: "string" } | { type: "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
    version: { type: "boolean", short: "V" },
  };
  for (const s of Object.values(SETTINGS)) options[s.flag] = { type: "string" };
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options, allowPositionals: true, strict: true });
  } catch (e) {
    return { ok: false, error: `${(e as Error).message} (see --help)` };
  }
  if (parsed.values.help === true) return { ok: true, command: "help" };
  if (parsed.values.version === true) return { ok: true, command: "version" };
  const extra = parsed.positionals.filter((p, i) => !(i === 0 && p === "run"));
  if (extra.length > 0) return { ok: false, error: `unexpected argument "${extra[0]}" (see --help)` };

  const values: Partial<Record<keyof Settings, unknown>> = {};
  for (const [key, s] of Object.entries(SETTINGS) as Array<[keyof Settings, Setting<unknown>]>) {
    const flagValue = parsed.values[s.flag];
    const fromFlag = typeof flagValue === "string";
    const raw = fromFlag ? flagValue : env[s.env] ?? s.default;
    if (raw === undefined) continue;
    const r = v.safeParse(s.schema, raw);
    if (!r.success) {
      const source = fromFlag ? `--${s.flag}` : env[s.env] !== undefined ? s.env : `default of ${s.env}`;
      return { ok: false, error: `${source}=${JSON.stringify(raw)} is not valid: expected ${s.accepted}` };
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
  return {
    ok: true,
    command: "run",
    config: {
      name: c.name,
      socket: c.socket,
      socketMode: c.socketMode,
      logLevel: c.logLevel,
      policySource: c.policySource,
      policyFile: c.policyFile,
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
        addHeader: c.addHeader,
        authservId: c.authservId ?? "",
      },
    },
  };
}

/** The --help text, generated from the settings table. */
export function helpText(program: string): string {
  const lines = [
    `Usage: ${program} [run] [--FLAG=VALUE ...]`,
    "",
    "Exchange Online Tenant Authorisation milter. Every setting is a flag or an",
    "environment variable; a flag wins. Booleans are words: true/false, yes/no, on/off, 1/0.",
    "",
  ];
  for (const s of Object.values(SETTINGS)) {
    lines.push(`  --${s.flag}=VALUE   (${s.env}${s.default !== undefined ? `, default ${JSON.stringify(s.default)}` : ""})`);
    lines.push(`      ${s.help}; ${s.accepted}`);
  }
  lines.push("  -h, --help      this text", "  -V, --version   the version");
  return lines.join("\n");
}
