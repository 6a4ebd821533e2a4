/**
 * Postfix configuration text -> values, read the way Postfix reads it:
 * main.cf and `postconf` output (`name = value`, continuation lines,
 * `$name` expansion), master.cf and `postconf -M`/`-P` output (services and
 * their `-o` overrides), and milter lists with per-milter settings in braces
 * (Postfix >= 3.0, milter.c: milter_new and attr_override).
 *
 * Pure: no I/O; the caller reads the files or runs postconf.
 * @module
 */

export type Params = ReadonlyMap<string, string>;

export interface Service {
  readonly name: string;
  readonly type: string;
  /** The chroot column as written: y, n or - (default: n since Postfix 3.0). */
  readonly chroot: string;
  /** The command's program name (smtpd, postscreen, ...). */
  readonly command: string;
  /** The `-o` overrides: as written from parseMaster, expanded in a PostfixConfig. */
  readonly overrides: Params;
}

/** The values in force, as `postconf -x` and `postconf -P -x` print them: `$name` expanded once. */
export interface PostfixConfig {
  /** main.cf values, defaults included. */
  readonly main: Params;
  readonly services: readonly Service[];
}

export type Parsed<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

/**
 * Defaults (Postfix 3.7) of the parameters the audit reads, for when only
 * the files can be read; postconf knows them itself.
 */
export const POSTFIX_DEFAULTS: Params = new Map([
  ["queue_directory", "/var/spool/postfix"],
  ["smtpd_milters", ""],
  ["non_smtpd_milters", ""],
  ["smtpd_milter_maps", ""],
  ["milter_default_action", "tempfail"],
  ["milter_protocol", "6"],
  ["milter_connect_macros", "j {daemon_name} {daemon_addr} v _"],
  ["milter_helo_macros", "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"],
  ["milter_mail_macros", "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}"],
  ["milter_rcpt_macros", "i {rcpt_addr} {rcpt_host} {rcpt_mailer}"],
  ["milter_data_macros", "i"],
  ["milter_end_of_header_macros", "i"],
  ["milter_end_of_data_macros", "i"],
  ["receive_override_options", ""],
  ["smtpd_tls_ask_ccert", "no"],
  ["smtpd_tls_CAfile", ""],
  ["smtpd_tls_CApath", ""],
]);

/**
 * Logical lines with their first physical line number: a line starting with
 * whitespace continues the one before; empty lines and lines whose first
 * non-blank character is `#` are skipped (Postfix's rules for both files).
 */
function logicalLines(text: string): Array<{ line: number; text: string }> {
  const out: Array<{ line: number; text: string }> = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const trimmed = raw.trim();
    if (trimmed === "" || trimmed.startsWith("#")) return;
    const last = out[out.length - 1];
    if (/^\s/.test(raw) && last !== undefined) last.text += " " + trimmed;
    else out.push({ line: i + 1, text: trimmed });
  });
  return out;
}

/** main.cf or `postconf` output -> raw values (the last of a repeated name wins, as in Postfix). */
export function parseParams(text: string, file = "main.cf"): Parsed<Map<string, string>> {
  const params = new Map<string, string>();
  for (const { line, text: l } of logicalLines(text)) {
    const m = /^([A-Za-z0-9_.-]+)\s*=\s*(.*)$/.exec(l);
    if (m === null) return { ok: false, error: `${file} line ${line}: expected "name = value", found ${JSON.stringify(l)}` };
    params.set(m[1]!, m[2]!.trim());
  }
  return { ok: true, value: params };
}

/**
 * Expands `$name`, `${name}`, `$(name)`, `${name?text}` (text when name is
 * non-empty), `${name:text}` (text when name is empty) and `$$`. Unknown
 * names expand to nothing, as in Postfix.
 */
export function expand(value: string, params: Params, depth = 0): string {
  if (depth > 20 || !value.includes("$")) return value;
  return value.replace(
    /\$(?:\$|([A-Za-z0-9_]+)|\{([A-Za-z0-9_]+)(?:([?:])([^}]*))?\}|\(([A-Za-z0-9_]+)(?:([?:])([^)]*))?\))/g,
    (whole, bare?: string, braced?: string, bOp?: string, bText?: string, paren?: string, pOp?: string, pText?: string) => {
      if (whole === "$$") return "$";
      const name = (bare ?? braced ?? paren)!;
      const op = bOp ?? pOp;
      const own = expand(params.get(name) ?? "", params, depth + 1);
      if (op === "?") return own !== "" ? expand(bText ?? pText ?? "", params, depth + 1) : "";
      if (op === ":") return own === "" ? expand(bText ?? pText ?? "", params, depth + 1) : "";
      return own;
    },
  );
}

const expandAll = (values: Params, params: Params) => new Map([...values].map(([k, v]) => [k, expand(v, params)]));

/** main.cf as written -> the values in force: defaults for what is missing, every value expanded. */
export function resolveMain(raw: Params): Map<string, string> {
  const all = new Map([...POSTFIX_DEFAULTS, ...raw]);
  return expandAll(all, all);
}

/**
 * master.cf services as written, over main.cf as written -> their `-o`
 * values in force, as `postconf -P -x` prints them: smtpd sets its `-o`
 * values before it expands any, so `$name` sees main.cf (defaults
 * included) and the service's own overrides. Expanded from the raw values,
 * so a `$$` is undone once.
 */
export function resolveServices(rawMain: Params, services: readonly Service[]): Service[] {
  const all = new Map([...POSTFIX_DEFAULTS, ...rawMain]);
  return services.map((s) => ({ ...s, overrides: expandAll(s.overrides, new Map([...all, ...s.overrides])) }));
}

/**
 * Splits on separators as Postfix does (mystrtokq): braces, nested, count
 * anywhere in a word, so `{ ... }` is one word and so is `-o x=${name}`.
 */
function words(text: string, separators: RegExp): Parsed<string[]> {
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (separators.test(text[i]!)) {
      i++;
      continue;
    }
    const start = i;
    let depth = 0;
    for (; i < text.length && (depth > 0 || !separators.test(text[i]!)); i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}" && depth > 0) depth--;
    }
    if (depth !== 0) return { ok: false, error: `missing "}" in ${JSON.stringify(text.slice(start))}` };
    out.push(text.slice(start, i));
  }
  return { ok: true, value: out };
}

const inner = (group: string) => group.slice(1, -1).trim();

/** `name=value` or `{ name = value }` -> [name, value]; undefined when there is no `=`. */
function nameValue(word: string): [string, string] | undefined {
  const text = word.startsWith("{") ? inner(word) : word;
  const eq = text.indexOf("=");
  if (eq <= 0) return undefined;
  return [text.slice(0, eq).trim(), text.slice(eq + 1).trim()];
}

/** master.cf, or `postconf -M` output (the same syntax, one line per service). */
export function parseMaster(text: string, file = "master.cf"): Parsed<Service[]> {
  const services: Service[] = [];
  for (const { line, text: l } of logicalLines(text)) {
    const w = words(l, /\s/);
    if (!w.ok) return { ok: false, error: `${file} line ${line}: ${w.error}` };
    const f = w.value;
    if (f.length < 8) return { ok: false, error: `${file} line ${line}: a service needs 8 fields, found ${JSON.stringify(l)}` };
    const overrides = new Map<string, string>();
    for (let i = 8; i < f.length; i++) {
      let arg: string | undefined;
      if (f[i] === "-o") arg = f[++i];
      else if (f[i]!.startsWith("-o")) arg = f[i]!.slice(2);
      else continue;
      const nv = arg === undefined ? undefined : nameValue(arg);
      if (nv === undefined) return { ok: false, error: `${file} line ${line}: -o needs name=value, found ${JSON.stringify(arg ?? "")}` };
      overrides.set(nv[0], nv[1]);
    }
    services.push({ name: f[0]!, type: f[1]!, chroot: f[4]!, command: f[7]!, overrides });
  }
  return { ok: true, value: services };
}

/** `postconf -P` output (`service/type/name = value`) -> overrides by "service/type". */
export function parseServiceParams(text: string): Parsed<Map<string, Map<string, string>>> {
  const out = new Map<string, Map<string, string>>();
  for (const { line, text: l } of logicalLines(text)) {
    const m = /^(.+)\/([^/\s]+)\/([A-Za-z0-9_.-]+)\s*=\s*(.*)$/.exec(l);
    if (m === null) return { ok: false, error: `postconf -P line ${line}: expected "service/type/name = value", found ${JSON.stringify(l)}` };
    const key = `${m[1]}/${m[2]}`;
    if (!out.has(key)) out.set(key, new Map());
    out.get(key)!.set(m[3]!, m[4]!.trim());
  }
  return { ok: true, value: out };
}

/** One entry of smtpd_milters: the socket as written and its per-milter settings. */
export interface MilterEntry {
  readonly socket: string;
  readonly options: Params;
}

/**
 * A milter list as Postfix splits it: entries separated by commas or
 * whitespace; `{ socket, name=value, ... }` sets per-milter values. Inside
 * the braces commas and whitespace separate too, so `default_action =
 * tempfail` (spaces around `=`) is three words and Postfix stops with
 * "malformed option"; `{ default_action = tempfail }` in its own braces is
 * one.
 */
export function parseMilterList(value: string): Parsed<MilterEntry[]> {
  const sep = /[\s,]/;
  const top = words(value, sep);
  if (!top.ok) return top;
  const entries: MilterEntry[] = [];
  for (const word of top.value) {
    if (!word.startsWith("{")) {
      entries.push({ socket: word, options: new Map() });
      continue;
    }
    const parts = words(inner(word), sep);
    if (!parts.ok) return parts;
    const [socket, ...opts] = parts.value;
    if (socket === undefined) return { ok: false, error: `empty milter definition ${JSON.stringify(word)}` };
    const options = new Map<string, string>();
    for (const o of opts) {
      const nv = nameValue(o);
      if (nv === undefined) return { ok: false, error: `malformed option ${JSON.stringify(o)} in ${JSON.stringify(word)} (write name=value without spaces, or { name = value })` };
      options.set(nv[0], nv[1]);
    }
    entries.push({ socket, options });
  }
  return { ok: true, value: entries };
}

/** Where Postfix connects for a milter entry (milter8.c: `inet:HOST:PORT`, `unix:PATH`, `local:PATH`). */
export type PostfixSocket =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

export function parsePostfixSocket(socket: string): PostfixSocket | undefined {
  const colon = socket.indexOf(":");
  if (colon <= 0) return undefined;
  const transport = socket.slice(0, colon);
  const endpoint = socket.slice(colon + 1);
  if (transport === "unix" || transport === "local") return endpoint === "" ? undefined : { kind: "unix", path: endpoint };
  if (transport !== "inet") return undefined;
  // IPv6 in brackets; otherwise the last colon separates the port.
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(endpoint) ?? /^(.+):(\d{1,5})$/.exec(endpoint);
  const port = Number(m?.[2]);
  return m !== null && port >= 1 && port <= 65535 ? { kind: "tcp", host: m[1]!, port } : undefined;
}

/** A milter list written back: plain entries as they are, others in braces with their settings. */
export function formatMilterList(entries: readonly MilterEntry[]): string {
  return entries
    .map((e) => (e.options.size === 0 ? e.socket : `{ ${[e.socket, ...[...e.options].map(([k, v]) => `${k}=${v}`)].join(", ")} }`))
    .join(", ");
}
