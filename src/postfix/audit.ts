/**
 * The Postfix audit: the settings around exota-milter that silently open
 * the relay or lose mail, each with its value, why it matters and the line
 * to write instead. Reads values as smtpd sees them: a master.cf `-o`
 * override beats main.cf, a per-milter `{ socket, name=value }` setting
 * beats both.
 *
 * Pure: no I/O.
 * @module
 */
import { hostPort, type SocketSpec } from "../server/socket-spec.ts";
import {
  formatMilterList,
  type MilterEntry,
  parseMilterList,
  parsePostfixSocket,
  type PostfixConfig,
  type PostfixSocket,
  type Service,
} from "./config.ts";

/** What the audit needs to know of exota-milter's own configuration. */
export interface MilterFacts {
  readonly socket: SocketSpec;
  readonly x509Enabled: boolean;
  readonly x509TrustedIssuer: string;
  readonly dkimEnabled: boolean;
}

export interface Problem {
  /** The Postfix setting at fault. */
  readonly setting: string;
  /** Where its value comes from: "main.cf", "master.cf smtp/inet -o", ... */
  readonly where: string;
  readonly value: string;
  /** The smtpd services ("name/type") it applies to; none for a setting no smtpd reads. */
  readonly services: readonly string[];
  readonly why: string;
  /** The line to write instead. */
  readonly fix: string;
}

export interface AuditResult {
  readonly problems: readonly Problem[];
  /** Facts worth knowing that are not problems by themselves. */
  readonly notes: readonly string[];
}

interface Value {
  readonly name: string;
  readonly value: string;
  readonly where: string;
}

/** The socket exota-milter listens on, as smtpd_milters writes it. */
export function postfixSpelling(s: SocketSpec): string {
  if (s.kind === "unix") return `unix:${s.path}`;
  const host = s.host === "0.0.0.0" ? "127.0.0.1" : s.host === "::" ? "::1" : s.host;
  return `inet:${hostPort(host, s.port)}`;
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

function sameHost(postfixHost: string, milterHost: string): boolean {
  const p = postfixHost.toLowerCase();
  const m = milterHost.toLowerCase();
  if (p === m || m === "::") return true;
  if (m === "0.0.0.0") return !p.includes(":");
  return LOOPBACK.has(p) && LOOPBACK.has(m) && (p === "localhost" || m === "localhost");
}

/**
 * Does this entry reach the milter? A chrooted smtpd resolves a unix path
 * inside queue_directory: "chroot" means the entry names the milter's path,
 * which the chroot hides.
 */
function reaches(entry: PostfixSocket | undefined, own: SocketSpec, chrootDir: string | undefined): "yes" | "chroot" | "no" {
  if (entry === undefined) return "no";
  if (entry.kind === "tcp" || own.kind === "tcp") {
    return entry.kind === "tcp" && own.kind === "tcp" && entry.port === own.port && sameHost(entry.host, own.host) ? "yes" : "no";
  }
  if (chrootDir === undefined) return entry.path === own.path ? "yes" : "no";
  if (`${chrootDir.replace(/\/+$/, "")}/${entry.path.replace(/^\/+/, "")}` === own.path) return "yes";
  return entry.path === own.path ? "chroot" : "no";
}

/** OpenDKIM (8891), dkimpy-milter (8892), Rspamd's milter proxy (11332), or a name that says so. */
function looksLikeDkimVerifier(e: MilterEntry): boolean {
  const s = parsePostfixSocket(e.socket);
  return /dkim|rspamd/i.test(e.socket) || (s?.kind === "tcp" && [8891, 8892, 11332].includes(s.port));
}

/**
 * How a value is written where it came from: a main.cf line or a master.cf
 * -o option. Values are expanded, so a `$` in one is written `$$`: else
 * Postfix would read what follows it as a parameter name.
 */
function line(v: Value, expanded: string): string {
  const value = expanded.replaceAll("$", () => "$$");
  if (v.where === "main.cf") return `${v.name} = ${value}`;
  return /\s/.test(value) ? `-o { ${v.name} = ${value} }` : `-o ${v.name}=${value}`;
}

const YES = /^(yes|true|1)$/i;

/** Macros by stage list, for a milter that cannot ask for its own (protocol < 6). */
const MACRO_LISTS = [
  "milter_connect_macros",
  "milter_helo_macros",
  "milter_mail_macros",
  "milter_rcpt_macros",
  "milter_data_macros",
  "milter_end_of_header_macros",
  "milter_end_of_data_macros",
] as const;

export function auditPostfix(conf: PostfixConfig, facts: MilterFacts): AuditResult {
  const problems = new Map<string, Problem & { services: string[] }>();
  const notes: string[] = [];
  const add = (id: string, v: Value, why: string, fix: string) => {
    const key = `${v.name}\0${v.where}\0${v.value}\0${why}`;
    const seen = problems.get(key);
    if (seen === undefined) problems.set(key, { setting: v.name, where: v.where, value: v.value, services: id === "" ? [] : [id], why, fix });
    else if (!seen.services.includes(id)) seen.services.push(id);
  };
  const ownSpelling = postfixSpelling(facts.socket);
  const queueDir = conf.main.get("queue_directory") ?? "/var/spool/postfix";
  const smtpds = conf.services.filter((s) => s.command === "smtpd");
  const checked: string[] = [];
  const unchecked: Array<{ id: string; milters: Value }> = [];
  let chrootHidden = false;

  for (const svc of smtpds) {
    const id = `${svc.name}/${svc.type}`;
    const get = (name: string): Value => valueFor(conf, svc, name);

    const rov = get("receive_override_options");
    if (/(^|[\s,])no_milters($|[\s,])/.test(rov.value)) {
      add(id, rov, "no_milters makes smtpd skip every milter: mail through this service is never checked by exota-milter",
        line(rov, rov.value.split(/[\s,]+/).filter((o) => o !== "" && o !== "no_milters").join(", ")));
    }

    const milters = get("smtpd_milters");
    const list = parseMilterList(milters.value);
    if (!list.ok) {
      const repaired = parseMilterList(milters.value.replace(/\s*=\s*/g, "="));
      add(id, milters, `Postfix cannot read this list (${list.error}): smtpd stops with a fatal error on every connection and no mail is accepted`,
        repaired.ok ? line(milters, formatMilterList(repaired.value)) : `${milters.name} = (each entry a socket or { socket, name=value, ... })`);
      continue;
    }
    const chrootDir = svc.chroot === "y" ? queueDir : undefined;
    const targets = list.value.map((e) => reaches(parsePostfixSocket(e.socket), facts.socket, chrootDir));
    const idx = targets.indexOf("yes");
    if (idx < 0) {
      if (targets.includes("chroot") && facts.socket.kind === "unix") {
        chrootHidden = true;
        const dir = queueDir.replace(/\/+$/, "");
        add(id, { name: "chroot", value: "y", where: `master.cf ${id}` },
          `this smtpd runs chrooted in ${dir}, so ${facts.socket.path} is looked up as ${dir}${facts.socket.path}, which does not exist: every message meets milter_default_action`,
          `${svc.name} ${svc.type} ... n ... smtpd   (chroot column n), or MILTER_SOCKET=unix:${dir}/exota-milter/milter.sock with unix:/exota-milter/milter.sock in smtpd_milters, or an inet socket`);
      } else {
        unchecked.push({ id, milters });
      }
      continue;
    }
    checked.push(id);
    const entry = list.value[idx]!;
    const entryValue = (name: string): Value | undefined => {
      const v = entry.options.get(name);
      return v === undefined ? undefined : { name, value: v, where: `${milters.where}, smtpd_milters entry ${entry.socket}` };
    };
    const withOptions = (extra: Record<string, string>) =>
      line(milters, formatMilterList(list.value.map((e) => (e === entry ? { socket: e.socket, options: new Map([...e.options, ...Object.entries(extra)]) } : e))));

    const action = entryValue("default_action") ?? get("milter_default_action");
    if (action.value === "accept") {
      add(id, action,
        "when exota-milter is down, unreachable or too slow, Postfix accepts every message unchecked: the relay is open to every Microsoft 365 tenant. " +
          "A global accept for another milter (OpenDKIM guides suggest it) covers exota-milter too unless its entry says otherwise",
        withOptions({ default_action: "tempfail" }));
    } else if (action.value === "reject") {
      add(id, action, "when exota-milter is down or slow, Postfix rejects every message for good: senders get bounces instead of a retry", withOptions({ default_action: "tempfail" }));
    }

    const entryProtocol = entryValue("protocol");
    const protocol = entryProtocol ?? get("milter_protocol");
    const version = Number(protocol.value);
    if (!(version >= 6)) {
      add(id, protocol,
        `milter protocol ${protocol.value} lets exota-milter neither ask for the macros it needs nor skip what it does not; ` +
          "version 6 is what it is tested with (Postfix's default)",
        entryProtocol === undefined ? line(protocol, "6") : withOptions({ protocol: "6" }));
      for (const macro of neededMacros(facts)) {
        const lists = MACRO_LISTS.slice(macro.from).map(get);
        if (lists.some((l) => macroNames(l.value).has(macro.name.replace(/^\{(.*)\}$/, "$1")))) continue;
        const target = lists.find((l) => l.name === macro.list)!;
        add(id, target, `${macro.why}; with protocol ${protocol.value} Postfix sends only the macros its milter_*_macros lists name`,
          line(target, `${target.value} ${macro.name}`.trim()));
      }
    }

    if (facts.dkimEnabled) {
      const verifierAfter = list.value.slice(idx + 1).find(looksLikeDkimVerifier);
      if (idx === 0 || verifierAfter !== undefined) {
        const moved = [...list.value.slice(0, idx), ...list.value.slice(idx + 1), entry];
        add(id, milters,
          `exota-milter stands ${verifierAfter !== undefined ? `before ${verifierAfter.socket}` : "first"}: each milter sees only the headers the milters before it added, ` +
            "so the DKIM verifier's Authentication-Results never reach it and every message with DKIM required is rejected " +
            "(or, with MILTER_TRUSTED_AUTHRES_ANYWHERE, a forged one is trusted)",
          line(milters, formatMilterList(moved)));
      }
    }

    if (facts.x509Enabled) {
      const ask = get("smtpd_tls_ask_ccert");
      if (!YES.test(ask.value)) {
        add(id, ask, "smtpd never asks for a client certificate, so {cert_subject} is never set and the certificate check rejects every message", line(ask, "yes"));
      }
      const caFile = get("smtpd_tls_CAfile");
      if (caFile.value === "" && get("smtpd_tls_CApath").value === "") {
        add(id, caFile,
          "Postfix sets {cert_subject} only for a client certificate it verified, and with neither smtpd_tls_CAfile nor smtpd_tls_CApath it verifies none: the certificate check rejects every message",
          line(caFile, "/etc/ssl/certs/ca-certificates.crt"));
      }
    }
  }

  if (checked.length === 0 && !chrootHidden) {
    const nonSmtpd: Value = { name: "non_smtpd_milters", value: conf.main.get("non_smtpd_milters") ?? "", where: "main.cf" };
    const inNonSmtpd = parseMilterList(nonSmtpd.value);
    const target = unchecked[0]?.milters ?? { name: "smtpd_milters", value: conf.main.get("smtpd_milters") ?? "", where: "main.cf" };
    const current = parseMilterList(target.value);
    const fixed = current.ok ? formatMilterList([...current.value, { socket: ownSpelling, options: new Map() }]) : ownSpelling;
    if (inNonSmtpd.ok && inNonSmtpd.value.some((e) => reaches(parsePostfixSocket(e.socket), facts.socket, undefined) === "yes")) {
      add("", nonSmtpd, "non_smtpd_milters covers only mail submitted on this host (sendmail, pickup); relayed mail arrives through smtpd and is never checked", line(target, fixed));
    } else if (smtpds.length > 0) {
      for (const u of unchecked) {
        add(u.id, u.milters,
          `no entry is the socket exota-milter listens on (${facts.socket.kind === "unix" ? "" : "MILTER_SOCKET in Postfix's spelling: "}${ownSpelling}; ` +
            "Postfix writes inet:HOST:PORT where the milter writes inet:PORT@HOST): exota-milter never sees a message",
          line(u.milters, fixed));
      }
    }
  } else {
    for (const u of unchecked) {
      notes.push(`service ${u.id} does not pass mail to exota-milter (${u.milters.name} = ${u.milters.value}): right for a re-injection listener, an open relay if Exchange Online can reach it`);
    }
  }
  if (smtpds.length === 0) notes.push("master.cf has no smtpd service: nothing receives mail over SMTP");
  const maps = conf.main.get("smtpd_milter_maps") ?? "";
  if (maps !== "") notes.push(`smtpd_milter_maps = ${maps} can replace smtpd_milters per client; its lists are not audited`);
  return { problems: [...problems.values()], notes };
}

/** A service's value of a parameter: its -o override (expanded by the reader, as postconf -P -x does), else main.cf. */
function valueFor(conf: PostfixConfig, svc: Service, name: string): Value {
  const o = svc.overrides.get(name);
  if (o !== undefined) return { name, value: o, where: `master.cf ${svc.name}/${svc.type} -o` };
  return { name, value: conf.main.get(name) ?? "", where: "main.cf" };
}

const macroNames = (list: string) => new Set(list.split(/[\s,]+/).filter((m) => m !== "").map((m) => m.replace(/^\{(.*)\}$/, "$1")));

/** Macros the decision reads; `from`: the first stage (index in MACRO_LISTS) whose list may carry it. */
function neededMacros(facts: MilterFacts): Array<{ name: string; list: typeof MACRO_LISTS[number]; from: number; why: string }> {
  const out: Array<{ name: string; list: typeof MACRO_LISTS[number]; from: number; why: string }> = [
    { name: "i", list: "milter_end_of_data_macros", from: 2, why: "without the queue id (i) replies and log lines say NOQUEUE" },
  ];
  if (facts.x509Enabled) {
    out.push({ name: "{cert_subject}", list: "milter_helo_macros", from: 0, why: "without {cert_subject} the certificate check rejects every message" });
  }
  if (facts.x509Enabled && facts.x509TrustedIssuer !== "") {
    out.push({ name: "{cert_issuer}", list: "milter_helo_macros", from: 0, why: "without {cert_issuer} the issuer check rejects every message" });
  }
  return out;
}
