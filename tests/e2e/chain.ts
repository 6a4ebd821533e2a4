/**
 * A real mail chain on loopback for the end-to-end tests:
 *
 *   swaks / python3 smtplib (plays Exchange Online: STARTTLS, client certificate)
 *     -> private Postfix smtpd (one listener per "route", each with its own smtpd_milters)
 *     -> milter 1: OpenDKIM, verify only, public keys from a file (no DNS)
 *     -> milter 2: exota-milter (the compiled binary), or whatever the route names
 *     -> Postfix smtp client -> smtp-sink, which writes every delivered message to a file.
 *
 * Everything lives in one temporary folder; nothing under /etc is touched.
 * Every process is stopped by its own PID (Postfix with `postfix -c DIR stop`),
 * by `stop()` from an after() hook and, should the test process die before,
 * by an exit handler. See /work/shared/E2E-NOTES.md for the facts behind the
 * settings.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, type MilterProcess, sleep, startMilter } from "../lib/milter-process.ts";

export const TOOLS = {
  postfix: "/usr/sbin/postfix",
  postconf: "/usr/sbin/postconf",
  smtpSink: "/usr/sbin/smtp-sink",
  opendkim: "/usr/sbin/opendkim",
  swaks: "/usr/bin/swaks",
  dkimsign: "/usr/bin/dkimsign",
  // Debian's python3, not one from PATH (pyenv and friends): dkimsign and smtplib come from Debian packages.
  python3: "/usr/bin/python3",
  openssl: "/usr/bin/openssl",
} as const;

export const TENANT = "1234abcd-18c5-45e8-88de-123456789abc";
export const RELAXED_TENANT = "5678abcd-18c5-45e8-88de-123456789abc";
export const UNKNOWN_TENANT = "0000abcd-18c5-45e8-88de-123456789abc";
/** OpenDKIM's AuthservID: the only authserv-id whose results exota-milter trusts. */
export const OPENDKIM_AUTHSERVID = "mx.e2e.test";
/** The authserv-id exota-milter writes into its own header. */
export const OUR_AUTHSERVID = "relay.e2e.test";
export const TRUSTED_CN = "mail.protection.outlook.com";
export const EXOTA = "X-ExOTA-Authentication-Results";
/** Not 127.0.0.1: the certificate check must apply to the loopback client. */
export const X509_ALLOWLIST = "192.0.2.1";

export const POLICY = {
  "tenant.example": { tenant_id: TENANT, dkim_enabled: true, dkim_alignment_required: true },
  "relaxed.example": { tenant_id: RELAXED_TENANT, dkim_enabled: true, dkim_alignment_required: false },
};

/** Domains with a DKIM key (selector "sel") published to OpenDKIM through TestPublicKeys. */
export const DKIM_DOMAINS = ["tenant.example", "relaxed.example", "other.example", "external.example", "nopolicy.example", "attacker.example"] as const;
export type DkimDomain = (typeof DKIM_DOMAINS)[number];

/** Environment of exota-milter as the brief's relay runs it (the original's variable names). */
export function exotaEnv(over: Record<string, string> = {}): Record<string, string> {
  return {
    MILTER_DKIM_ENABLED: "true",
    MILTER_TRUSTED_AUTHSERVID: OPENDKIM_AUTHSERVID,
    MILTER_DKIM_ALIGNMENT_REQUIRED: "true",
    MILTER_TENANT_ID_REQUIRED: "true",
    MILTER_X509_ENABLED: "true",
    MILTER_X509_IP_WHITELIST: X509_ALLOWLIST,
    MILTER_ADD_HEADER: "true",
    MILTER_AUTHSERVID: OUR_AUTHSERVID,
    LOG_LEVEL: "debug",
    ...over,
  };
}

// ---------------------------------------------------------------- processes

interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; `code` is null when it was killed (timeout). Rejects only when it cannot start. */
export function exec(cmd: string, args: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, [...args], { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = (err as { code?: unknown } | null)?.code;
      if (typeof code === "string") reject(new Error(`${cmd} could not run: ${err!.message}`));
      else resolve({ code: err === null ? 0 : (code ?? null) as number | null, stdout: String(stdout), stderr: String(stderr) });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

async function mustExec(cmd: string, args: readonly string[], opts: { input?: string } = {}): Promise<string> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A process is gone when it no longer exists or is a zombie waiting for its parent. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, stepMs = 20): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(stepMs);
  }
}

export function connectable(target: { path: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(target as never);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Stops a child we spawned: SIGTERM, SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcess | undefined, graceMs: number): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(t);
}

// ---------------------------------------------------------------- certificates and keys

export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

export interface Pki {
  readonly ca: string;
  readonly server: KeyPair;
  /** CN mail.protection.outlook.com, issued by the CA Postfix trusts. */
  readonly trusted: KeyPair;
  /** Another CN, same CA. */
  readonly otherCn: KeyPair;
  /** CN mail.protection.outlook.com, issued by a CA Postfix does not know. */
  readonly untrustedCa: KeyPair;
  /** CN mail.protection.outlook.com, issued by a CA Postfix does not know whose name is that of the trusted CA. */
  readonly sameIssuerName: KeyPair;
}

/** The CN of the CA the MTAs trust (white space in it: Sendmail writes it as xtext). */
export const TRUSTED_CA_CN = "E2E Test Relay CA";

const OPENSSL_CNF = `[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:mx.e2e.test
[client_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
`;

async function makePki(dir: string): Promise<Pki> {
  mkdirSync(dir, { recursive: true });
  const cnf = join(dir, "openssl.cnf");
  writeFileSync(cnf, OPENSSL_CNF);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"];
  const make = async (name: string, cn: string, ext: string, ca?: KeyPair): Promise<KeyPair> => {
    const pair = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
    const issuer = ca === undefined ? [] : ["-CA", ca.cert, "-CAkey", ca.key];
    await mustExec(TOOLS.openssl, ["req", "-x509", "-config", cnf, "-extensions", ext, ...ec, "-subj", `/CN=${cn}`, ...issuer, "-keyout", pair.key, "-out", pair.cert]);
    return pair;
  };
  const [ca, evilCa, twinCa] = await Promise.all([
    make("ca", TRUSTED_CA_CN, "ca_ext"),
    make("evil-ca", "E2E Untrusted CA", "ca_ext"),
    make("twin-ca", TRUSTED_CA_CN, "ca_ext"),
  ]);
  const [server, trusted, otherCn, untrustedCa, sameIssuerName] = await Promise.all([
    make("server", "mx.e2e.test", "server_ext", ca),
    make("client-trusted", TRUSTED_CN, "client_ext", ca),
    make("client-other", "other.example.net", "client_ext", ca),
    make("client-untrusted-ca", TRUSTED_CN, "client_ext", evilCa),
    make("client-same-issuer-name", TRUSTED_CN, "client_ext", twinCa),
  ]);
  return { ca: ca.cert, server, trusted, otherCn, untrustedCa, sameIssuerName };
}

/** One RSA key per domain (selector "sel"); returns the TestPublicKeys file. */
async function makeDkimKeys(dir: string): Promise<{ keyFile: (d: DkimDomain) => string; publicKeys: string }> {
  mkdirSync(dir, { recursive: true });
  const keyFile = (d: DkimDomain) => join(dir, `${d}.key`);
  const lines = await Promise.all(DKIM_DOMAINS.map(async (d) => {
    await mustExec(TOOLS.openssl, ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", keyFile(d)]);
    const pub = (await mustExec(TOOLS.openssl, ["pkey", "-in", keyFile(d), "-pubout"])).replace(/-----[^-]+-----|\s/g, "");
    return `sel._domainkey.${d} v=DKIM1; k=rsa; p=${pub}`;
  }));
  const publicKeys = join(dir, "public-keys");
  writeFileSync(publicKeys, lines.join("\n") + "\n");
  return { keyFile, publicKeys };
}

// ---------------------------------------------------------------- messages

let serial = 0;

export interface MessageSpec {
  readonly from: string;
  readonly to?: string;
  readonly subject?: string;
  /** X-MS-Exchange-CrossTenant-Id; null: none. */
  readonly tenantId?: string | null;
  readonly resentFrom?: string;
  /** Raw header lines on top of the message, above Exchange Online's Received headers. */
  readonly top?: readonly string[];
  /** Raw header lines among the sender's own headers (below the Received headers). */
  readonly extra?: readonly string[];
}

export interface Message {
  /** Unique per message: Message-ID local part and last body line. */
  readonly token: string;
  readonly text: string;
}

/**
 * A message as Exchange Online hands it to a smarthost: its Received headers
 * on top, the sender's headers, the tenant-id header, a short body whose
 * last line carries the token.
 */
export function buildMessage(spec: MessageSpec): Message {
  const token = `e2e-${process.pid}-${++serial}-${Date.now().toString(36)}`;
  const lines = [
    ...(spec.top ?? []),
    "Received: from AM9PR01MB1234.eurprd01.prod.exchangelabs.com (2603:10a6:20b:1::12) by",
    " AM9PR01MB5678.eurprd01.prod.exchangelabs.com with HTTPS; Sat, 28 Nov 2026 10:59:58 +0000",
    "Received: from AM9PR01MB5678.eurprd01.prod.exchangelabs.com ([fe80::1]) by",
    " AM9PR01MB5678.eurprd01.prod.exchangelabs.com ([fe80::1%5]) with mapi id 15.20.7000.000;",
    " Sat, 28 Nov 2026 10:59:58 +0000",
    `From: ${spec.from}`,
    `To: ${spec.to ?? "Bob <bob@dest.example>"}`,
    `Subject: ${spec.subject ?? "e2e"} ${token}`,
    "Date: Sat, 28 Nov 2026 10:59:57 +0000",
    `Message-ID: <${token}@e2e.test>`,
    ...(spec.resentFrom === undefined ? [] : [`Resent-From: ${spec.resentFrom}`, "Resent-Date: Sat, 28 Nov 2026 10:59:58 +0000"]),
    ...(spec.extra ?? []),
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
    ...(spec.tenantId === null ? [] : [`X-MS-Exchange-CrossTenant-Id: ${spec.tenantId ?? TENANT}`]),
    "",
    "Hello from the e2e chain.",
    `e2e-end ${token}`,
    "",
  ];
  return { token, text: lines.join("\n") };
}

/** Replaces the body line of a (signed) message, as a tamperer between signer and relay would. */
export function alterBody(m: Message): Message {
  const text = m.text.replace("Hello from the e2e chain.", "Hello from the e2e chain, altered after signing.");
  if (text === m.text) throw new Error("alterBody: nothing altered");
  return { token: m.token, text };
}

// ---------------------------------------------------------------- SMTP clients

export interface SmtpReply {
  readonly code: number;
  /** The whole reply, lines joined by "\n", e.g. "550 5.7.1 queue_id: ...". */
  readonly text: string;
  /** From "250 2.0.0 Ok: queued as X". */
  readonly queueId?: string;
}

/** Postfix: "250 2.0.0 Ok: queued as X"; Sendmail: "250 2.0.0 X Message accepted for delivery". */
const queuedAs = (text: string) => {
  const m = /queued as ([0-9A-Za-z]+)|^250 2\.0\.0 ([0-9A-Za-z]+) Message accepted for delivery/m.exec(text);
  return m?.[1] ?? m?.[2];
};

/**
 * The reply that decided the transaction in a swaks transcript: the first
 * error reply, else the reply to the end of DATA.
 */
export function swaksOutcome(transcript: string): SmtpReply {
  let afterDot = false;
  let block: string[] = [];
  for (const line of transcript.split("\n")) {
    if (/^ [~-]> \.$/.test(line)) {
      afterDot = true;
      continue;
    }
    // "<-" before STARTTLS, "<~" after; a "*" marks an error ("<~*", "<**").
    const m = /^<([-~*]{1,3}) +(\d{3})([ -])(.*)$/.exec(line);
    if (m === null) continue;
    block.push(`${m[2]}${m[3]}${m[4]}`);
    if (m[3] === "-") continue;
    const text = block.join("\n");
    block = [];
    if (m[1]!.includes("*") || afterDot) return { code: Number(m[2]), text, queueId: queuedAs(text) };
  }
  throw new Error(`no outcome in swaks transcript:\n${transcript}`);
}

export type Cert = KeyPair | "none" | "no-tls";

const SMTPLIB_SCRIPT = String.raw`
import json, smtplib, ssl, sys, time
host, port, cert, key, sender, rcpt = sys.argv[1:7]
files = sys.argv[7:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, int(port), local_hostname="mail-am9pr01.outbound.protection.outlook.com", timeout=60)
s.starttls(context=ctx)
s.ehlo("mail-am9pr01.outbound.protection.outlook.com")
out = []
for f in files:
    with open(f, encoding="ascii") as fh:
        msg = fh.read()
    started = time.monotonic()
    code, resp = s.mail(sender)
    if code == 250:
        code, resp = s.rcpt(rcpt)
    if code == 250:
        # str: smtplib turns bare LF into CRLF
        code, resp = s.data(msg)
    out.append({"code": code, "text": resp.decode("utf-8", "replace"), "seconds": time.monotonic() - started})
    if code != 250:
        s.rset()
s.quit()
print(json.dumps(out))
`;

// ---------------------------------------------------------------- delivered messages

export interface Delivered {
  readonly raw: string;
  /** Unfolded headers as delivered to the relay target (smtp-sink's own X-* lines and Received left out). */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** Values of the headers with this name, any letter case, whitespace collapsed. */
  get(name: string): string[];
}

function parseDelivered(raw: string): Delivered {
  const head = raw.slice(0, raw.indexOf("\n\n"));
  const fields: string[] = [];
  for (const line of head.split("\n")) {
    if (/^[ \t]/.test(line) && fields.length > 0) fields[fields.length - 1] += "\n" + line;
    else fields.push(line);
  }
  // smtp-sink writes X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args, X-Rcpt-Args and its own Received first.
  const sinkOwn = /^(X-Client-Addr|X-Client-Proto|X-Helo-Args|X-Mail-Args|X-Rcpt-Args):/;
  let rest = fields.filter((f) => !sinkOwn.test(f));
  if (/^Received: [^\n]*\n\s+by smtp-sink /.test(rest[0] ?? "")) rest = rest.slice(1);
  const headers = rest.map((f): [string, string] => {
    const i = f.indexOf(":");
    return [f.slice(0, i), f.slice(i + 1).trim()];
  });
  return {
    raw,
    headers,
    get: (name) => headers.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v.replace(/\s+/g, " ")),
  };
}

/** What a private Postfix configuration needs to know about its surroundings. */
export interface PostfixConfigSpec {
  /** The chain's folder: queue, data directory and log go there. */
  readonly dir: string;
  /** Where Postfix relays to (smtp-sink). */
  readonly relayPort: number;
  readonly pki: Pick<Pki, "ca" | "server">;
  /** main.cf settings added or replaced. */
  readonly main?: Readonly<Record<string, string>> | undefined;
  /** One smtpd listener each: its port, its smtpd_milters, its chroot column (default n), more -o settings. */
  readonly listeners: ReadonlyArray<{
    readonly route: string;
    readonly port: number;
    readonly milters: string;
    readonly chroot?: boolean;
    readonly options?: Readonly<Record<string, string>>;
  }>;
}

/** A master.cf -o option; one with spaces goes in braces (Postfix >= 3.0). */
const masterOption = (name: string, value: string) => /\s/.test(value) ? `-o { ${name} = ${value} }` : `-o ${name}=${value}`;

/**
 * Writes main.cf and master.cf of a private Postfix instance into `confDir`
 * (nothing under /etc): the chain runs it, the Postfix audit tests read it
 * with postconf.
 */
export function writePostfixConfig(confDir: string, spec: PostfixConfigSpec): void {
  // data_directory must not exist beforehand: postfix creates it with the right owner.
  const main = {
    compatibility_level: "3.6",
    queue_directory: join(spec.dir, "queue"),
    data_directory: join(spec.dir, "data"),
    mail_owner: "postfix",
    setgid_group: "postdrop",
    myhostname: "mx.e2e.test",
    mydomain: "e2e.test",
    mydestination: "",
    inet_interfaces: "127.0.0.1",
    inet_protocols: "ipv4",
    mynetworks: "127.0.0.0/8",
    relayhost: `[127.0.0.1]:${spec.relayPort}`,
    alias_maps: "",
    alias_database: "",
    // Else Postfix rewrites the headers of loopback clients, which breaks DKIM signatures.
    local_header_rewrite_clients: "",
    smtpd_relay_restrictions: "permit_mynetworks, reject",
    smtpd_tls_security_level: "may",
    smtpd_tls_cert_file: spec.pki.server.cert,
    smtpd_tls_key_file: spec.pki.server.key,
    smtpd_tls_CAfile: spec.pki.ca,
    smtpd_tls_ask_ccert: "yes",
    smtpd_tls_loglevel: "1",
    smtp_tls_security_level: "none",
    milter_protocol: "6",
    milter_default_action: "tempfail",
    maillog_file: join(spec.dir, "postfix.log"),
    maillog_file_prefixes: spec.dir,
    smtputf8_enable: "no",
    biff: "no",
    ...spec.main,
  };
  mkdirSync(confDir, { recursive: true });
  writeFileSync(join(confDir, "main.cf"), Object.entries(main).map(([k, v]) => `${k} = ${v}`).join("\n") + "\n");
  const services = [
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "tlsmgr unix - - n 1000? 1 tlsmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "proxywrite unix - - n - 1 proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
  ];
  for (const l of spec.listeners) {
    const options = { syslog_name: `postfix/${l.route}`, smtpd_milters: l.milters, ...l.options };
    const lines = Object.entries(options).map(([k, v]) => `\n  ${masterOption(k, v)}`).join("");
    services.unshift(`127.0.0.1:${l.port} inet n - ${l.chroot ? "y" : "n"} - - smtpd${lines}`);
  }
  writeFileSync(join(confDir, "master.cf"), services.join("\n") + "\n");
  // Postfix rereads a file changed in the last second or two every 0.3 s until it has
  // "cooled down" (dict_load_file_xt, load_file): ~2 s for every postconf or postfix start.
  const past = new Date(Date.now() - 60_000);
  for (const f of ["main.cf", "master.cf"]) utimesSync(join(confDir, f), past, past);
}

// ---------------------------------------------------------------- the chain

export interface ChainOptions {
  /**
   * Route name -> milters in order, as Postfix's smtpd_milters spells them
   * ("inet:HOST:PORT", "unix:/path"); "opendkim" names the chain's OpenDKIM.
   * Each route is one smtpd listener on its own loopback port.
   */
  readonly routes: Record<string, readonly string[]>;
  /** main.cf settings on top of the chain's own (the bench sets in_flow_delay). */
  readonly main?: Readonly<Record<string, string>>;
}

export class Chain {
  readonly dir: string;
  pki!: Pki;
  #dkim!: { keyFile: (d: DkimDomain) => string; publicKeys: string };
  readonly ports = new Map<string, number>();
  #sinkDir: string;
  #sinkPort = 0;
  #sink: ChildProcess | undefined;
  #opendkim: ChildProcess | undefined;
  readonly #peers: ChildProcess[] = [];
  #opendkimSocket: string;
  readonly #milters: MilterProcess[] = [];
  #postfixConf: string;
  #postfixStarted = false;
  #seen = new Map<string, string>();
  #stopped = false;
  readonly #onExit = () => this.#emergencyStop();

  private constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "exota-e2e-"));
    // The postfix user must enter it (mktemp gives 0700).
    chmodSync(this.dir, 0o755);
    this.#sinkDir = join(this.dir, "sink");
    this.#opendkimSocket = join(this.dir, "opendkim.sock");
    this.#postfixConf = join(this.dir, "postfix");
    process.once("exit", this.#onExit);
  }

  /** Checks the tools, makes certificates and keys, starts smtp-sink and OpenDKIM. Postfix starts with {@link startPostfix}. */
  static async create(): Promise<Chain> {
    if (process.getuid?.() !== 0) throw new Error("the e2e chain must run as root (postfix start)");
    const missing = Object.values(TOOLS).filter((t) => !existsSync(t));
    if (missing.length > 0) throw new Error(`missing ${missing.join(", ")}: run scripts/test-deps.sh as root`);
    const chain = new Chain();
    try {
      [chain.pki, chain.#dkim] = await Promise.all([makePki(join(chain.dir, "tls")), makeDkimKeys(join(chain.dir, "dkim"))]);
      writeFileSync(join(chain.dir, "send.py"), SMTPLIB_SCRIPT);
      await Promise.all([chain.#startSink(), chain.#startOpendkim()]);
    } catch (e) {
      await chain.stop();
      throw e;
    }
    return chain;
  }

  async #startSink(): Promise<void> {
    mkdirSync(this.#sinkDir);
    chownSync(this.#sinkDir, Number(execFileSync("id", ["-u", "nobody"]).toString().trim()), 0);
    this.#sinkPort = await freePort();
    // -u: smtp-sink refuses to keep root privileges; -d: one file per transaction.
    this.#sink = spawn(TOOLS.smtpSink, ["-u", "nobody", "-d", join(this.#sinkDir, "msg."), `127.0.0.1:${this.#sinkPort}`, "64"], { stdio: "ignore" });
    await waitUntil("smtp-sink", () => connectable({ host: "127.0.0.1", port: this.#sinkPort }));
  }

  async #startOpendkim(): Promise<void> {
    const conf = join(this.dir, "opendkim.conf");
    writeFileSync(
      conf,
      [
        "Mode v",
        `Socket local:${this.#opendkimSocket}`,
        // Postfix connects as user postfix.
        "UMask 000",
        `PidFile ${join(this.dir, "opendkim.pid")}`,
        `AuthservID ${OPENDKIM_AUTHSERVID}`,
        `TestPublicKeys ${this.#dkim.publicKeys}`,
        // Loopback is an internal host by default, and OpenDKIM does not verify mail from internal hosts.
        "InternalHosts 192.0.2.1",
        "Syslog no",
        "Background no",
        "",
      ].join("\n"),
    );
    this.#opendkim = await this.startPeer(TOOLS.opendkim, ["-f", "-x", conf], { path: this.#opendkimSocket });
  }

  /**
   * Starts another peer of the chain (a DKIM verifier) in the foreground, waits
   * until it accepts connections at `listens`, and keeps it for stop().
   */
  async startPeer(
    cmd: string,
    args: readonly string[],
    listens: { path: string } | { host: string; port: number },
    timeoutMs = 20_000,
  ): Promise<ChildProcess> {
    const child = spawn(cmd, [...args], { stdio: ["ignore", "pipe", "pipe"] });
    this.#peers.push(child);
    let out = "";
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (out += d));
    await waitUntil(`${cmd} to listen`, () => {
      if (child.exitCode !== null) throw new Error(`${cmd} exited (${child.exitCode}): ${out}`);
      return ("host" in listens || existsSync(listens.path)) && connectable(listens);
    }, timeoutMs, 100).catch((e: Error) => {
      throw new Error(`${e.message}; its output:\n${out}`);
    });
    return child;
  }

  /** Starts exota-milter (or what EXOTA_MILTER_BINARY names) and keeps it for stop(). */
  async startMilter(env: Record<string, string>): Promise<MilterProcess> {
    const m = await startMilter({ env });
    this.#milters.push(m);
    return m;
  }

  /** Writes main.cf and master.cf (one smtpd listener per route) and runs `postfix start`. */
  async startPostfix(opts: ChainOptions): Promise<void> {
    mkdirSync(this.#postfixConf);
    mkdirSync(join(this.dir, "queue"));
    const listeners = [];
    for (const [route, milters] of Object.entries(opts.routes)) {
      const port = await freePort();
      this.ports.set(route, port);
      listeners.push({ route, port, milters: milters.map((m) => (m === "opendkim" ? `unix:${this.#opendkimSocket}` : m)).join(",") });
    }
    writePostfixConfig(this.#postfixConf, { dir: this.dir, relayPort: this.#sinkPort, pki: this.pki, main: opts.main, listeners });
    this.#postfixStarted = true;
    await mustExec(TOOLS.postfix, ["-c", this.#postfixConf, "start"]);
    for (const port of this.ports.values()) await waitUntil(`postfix on ${port}`, () => connectable({ host: "127.0.0.1", port }));
  }

  /** Where smtp-sink listens on 127.0.0.1, for another MTA of the chain. */
  get sinkPort(): number {
    return this.#sinkPort;
  }

  /** OpenDKIM's unix socket, for another MTA of the chain. */
  get opendkimSocket(): string {
    return this.#opendkimSocket;
  }

  /** The DKIM key record (TXT) of a domain, for verifiers that take it as an override instead of DNS. */
  dkimRecord(d: DkimDomain): string {
    const line = readFileSync(this.#dkim.publicKeys, "utf8").split("\n").find((l) => l.startsWith(`sel._domainkey.${d} `));
    if (line === undefined) throw new Error(`no DKIM key for ${d}`);
    return line.slice(line.indexOf(" ") + 1);
  }

  /** Postfix's config_directory (main.cf, master.cf) once startPostfix ran. */
  get postfixConfigDir(): string {
    return this.#postfixConf;
  }

  port(route: string): number {
    const p = this.ports.get(route);
    if (p === undefined) throw new Error(`no route ${route}`);
    return p;
  }

  /** Signs with dkimsign (python3-dkim): rsa-sha256, relaxed/relaxed, selector "sel". */
  async sign(m: Message, domain: DkimDomain): Promise<Message> {
    const out = await mustExec(
      TOOLS.dkimsign,
      ["--hcanon", "relaxed", "--bcanon", "relaxed", "--signalg", "rsa-sha256", "sel", domain, this.#dkim.keyFile(domain)],
      { input: m.text },
    );
    if (!out.startsWith("DKIM-Signature:")) throw new Error(`dkimsign gave no signature:\n${out}`);
    return { token: m.token, text: out };
  }

  #file(m: Message): string {
    const f = join(this.dir, `${m.token}.eml`);
    writeFileSync(f, m.text);
    return f;
  }

  /**
   * One message in one SMTP session with swaks to a route of the Postfix or to
   * a port; `cert` "none" = STARTTLS without a certificate, "no-tls" = plain SMTP.
   */
  async swaks(route: string | number, m: Message, cert: Cert = this.pki.trusted, envelope = { from: "alice@tenant.example", to: "bob@dest.example" }): Promise<SmtpReply> {
    const tls = cert === "no-tls" ? [] : cert === "none" ? ["--tls"] : ["--tls", "--tls-cert", cert.cert, "--tls-key", cert.key];
    const r = await exec(TOOLS.swaks, [
      "--server", `127.0.0.1:${typeof route === "number" ? route : this.port(route)}`,
      "--ehlo", "mail-am9pr01.outbound.protection.outlook.com",
      "--from", envelope.from, "--to", envelope.to,
      "--data", `@${this.#file(m)}`,
      "--timeout", "60",
      ...tls,
    ]);
    return swaksOutcome(r.stdout + r.stderr);
  }

  /** Several messages in one SMTP session (STARTTLS with the trusted certificate), with python3 smtplib. */
  async session(route: string, messages: readonly Message[]): Promise<Array<SmtpReply & { seconds: number }>> {
    const files = messages.map((m) => this.#file(m));
    const out = await mustExec(TOOLS.python3, [
      join(this.dir, "send.py"), "127.0.0.1", String(this.port(route)), this.pki.trusted.cert, this.pki.trusted.key,
      "alice@tenant.example", "bob@dest.example", ...files,
    ]);
    const results = JSON.parse(out) as Array<{ code: number; text: string; seconds: number }>;
    return results.map((r) => {
      // smtplib gives the reply without its code, lines joined by "\n".
      const text = r.text.split("\n").map((l) => `${r.code} ${l}`).join("\n");
      return { code: r.code, text, queueId: queuedAs(text), seconds: r.seconds };
    });
  }

  /** The message with this queue id (Postfix's or Sendmail's) as smtp-sink received it (waits for it). */
  async delivered(queueId: string | undefined, timeoutMs = 15_000): Promise<Delivered> {
    if (queueId === undefined) throw new Error("no queue id: the message was not queued");
    const mark = new RegExp(`by mx\\.e2e\\.test \\([^)]*\\) with \\S+ id ${queueId}\\b`);
    let found: string | undefined;
    await waitUntil(`delivery of ${queueId} to smtp-sink`, () => {
      for (const name of readdirSync(this.#sinkDir)) {
        let raw = this.#seen.get(name);
        if (raw === undefined) {
          raw = readFileSync(join(this.#sinkDir, name), "utf8");
          // Complete once the token line that ends every test body is there.
          if (/\ne2e-end \S+\n/.test(raw)) this.#seen.set(name, raw);
          else continue;
        }
        if (mark.test(raw)) {
          found = raw;
          return true;
        }
      }
      return false;
    }, timeoutMs);
    return parseDelivered(found!);
  }

  get opendkimPid(): number | undefined {
    return this.#opendkim?.pid;
  }

  /**
   * Takes the messages smtp-sink has written completely so far (raw text)
   * and removes their files: the bench counts deliveries with it.
   */
  takeDelivered(): string[] {
    const out: string[] = [];
    for (const name of readdirSync(this.#sinkDir)) {
      const file = join(this.#sinkDir, name);
      const raw = readFileSync(file, "utf8");
      if (!/\ne2e-end \S+\n/.test(raw)) continue;
      out.push(raw);
      rmSync(file);
    }
    return out;
  }

  postfixLog(): string {
    try {
      return readFileSync(join(this.dir, "postfix.log"), "utf8");
    } catch {
      return "";
    }
  }

  /** PID of the Postfix master process (its children are the rest of Postfix). */
  masterPid(): number | undefined {
    try {
      return Number(readFileSync(join(this.dir, "queue/pid/master.pid"), "utf8").trim()) || undefined;
    } catch {
      return undefined;
    }
  }

  /** Stops everything this chain started and removes its folder. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const errors: unknown[] = [];
    if (this.#postfixStarted) {
      const pid = this.masterPid();
      await exec(TOOLS.postfix, ["-c", this.#postfixConf, "stop"]).catch((e) => errors.push(e));
      if (pid !== undefined) {
        await waitUntil("postfix master to exit", () => !alive(pid), 3000, 50).catch(() => {
          try {
            process.kill(pid, "SIGKILL");
          } catch { /* gone meanwhile */ }
        });
      }
    }
    // OpenDKIM (libmilter) takes ~3 s to exit on SIGTERM; bun gives after() hooks 5 s in all.
    await Promise.all([
      ...this.#peers.map((p) => stopChild(p, 2500)),
      stopChild(this.#sink, 2000),
      ...this.#milters.map((m) => m.stop()),
    ]).catch((e) => errors.push(e));
    process.off("exit", this.#onExit);
    rmSync(this.dir, { recursive: true, force: true });
    if (errors.length > 0) throw new AggregateError(errors, "e2e chain: stopping failed");
  }

  /** The test process is exiting without stop(): kill what is left, synchronously, by PID. */
  #emergencyStop(): void {
    if (this.#stopped) return;
    if (this.#postfixStarted) {
      try {
        execFileSync(TOOLS.postfix, ["-c", this.#postfixConf, "abort"], { stdio: "ignore" });
      } catch { /* already down */ }
    }
    for (const c of [...this.#peers, this.#sink, ...this.#milters.map((m) => m.child)]) {
      if (c?.pid !== undefined && c.exitCode === null) {
        try {
          process.kill(c.pid, "SIGKILL");
        } catch { /* gone */ }
      }
    }
  }
}
