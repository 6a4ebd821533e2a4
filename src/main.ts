/**
 * The command line: read the configuration, load the policy, listen, and
 * serve each connection with a session of the ExOTA filter.
 * @module
 */
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import process from "node:process";
import pkg from "../package.json" with { type: "json" };
import { type Config, helpText, loadConfig } from "./config.ts";
import { type DecisionRecord, ExotaFilter } from "./filter.ts";
import { logger, setupLogging } from "./log.ts";
import { LdapConfigError, LdapPolicyBackend } from "./policy/ldap-backend.ts";
import { mapLookup, parsePolicyFile } from "./policy/policy-file.ts";
import type { PolicyLookup } from "./policy/types.ts";
import { serveConnection } from "./server/connection.ts";
import { inheritedFds, type Listener, listenOn, listenOnFd } from "./server/listen.ts";

declare const EXOTA_VERSION: string | undefined;
const VERSION = typeof EXOTA_VERSION === "string" ? EXOTA_VERSION : `${pkg.version}-dev`;

function fail(message: string): never {
  process.stderr.write(`exota-milter: ${message}\n`);
  process.exit(1);
}

/** The LDAP backend, bound once (a wrong password stops start-up). */
async function startLdap(config: NonNullable<Config["ldap"]>): Promise<LdapPolicyBackend> {
  let bindPassword = config.bindPassword;
  if (config.bindPasswordFile !== "") {
    try {
      bindPassword = readFileSync(config.bindPasswordFile, "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      fail(`cannot read MILTER_LDAP_BINDPW_FILE ${config.bindPasswordFile}: ${(e as Error).message}`);
    }
  }
  let backend: LdapPolicyBackend;
  try {
    backend = new LdapPolicyBackend({ ...config, bindPassword }, logger("ldap"));
  } catch (e) {
    fail(`cannot read MILTER_LDAP_CA_FILE ${config.caFile}: ${(e as Error).message}`);
  }
  try {
    await backend.start();
  } catch (e) {
    if (e instanceof LdapConfigError) fail(e.message);
    throw e;
  }
  return backend;
}

function loadPolicy(config: Config): PolicyLookup {
  let text: string;
  try {
    text = readFileSync(config.policyFile, "utf8");
  } catch (e) {
    fail(`cannot read policy file ${config.policyFile}: ${(e as Error).message}`);
  }
  const parsed = parsePolicyFile(text, config.policyFile);
  if (!parsed.ok) fail(`invalid policy: ${parsed.error}`);
  logger().info("policy loaded from {file}: {domains} domain(s)", { file: config.policyFile, domains: parsed.policies.size });
  return mapLookup(parsed.policies);
}

async function run(config: Config): Promise<void> {
  setupLogging(config.name, config.logLevel);
  const log = logger();
  const sessionLog = logger("session");
  const lookup = config.ldap !== undefined ? (await startLdap(config.ldap)).lookup : loadPolicy(config);
  const traceOn = sessionLog.isEnabledFor("debug");

  let nextConn = 0;
  const open = new Set<Socket>();
  const onConnection = (socket: Socket, listener: string) => {
    const conn = (++nextConn).toString();
    if (open.size >= config.maxConnections) {
      sessionLog.warn("refusing connection on {listener}: {open} connections open (MILTER_MAX_CONNECTIONS)", { conn, listener, open: open.size });
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    open.add(socket);
    if (traceOn) sessionLog.debug("connection accepted on {listener}", { conn, listener });
    const filter = new ExotaFilter(config.filter, () => lookup, {
      decided: (r: DecisionRecord) => logDecision(sessionLog, conn, r),
      failed: (qid, error) => sessionLog.error("decision failed, message tempfailed: {error}", { conn, qid, error }),
      warn: (qid, message) => sessionLog.warn(message, { conn, qid }),
      trace: traceOn ? (qid, line) => sessionLog.debug(line, { conn, qid }) : undefined,
    });
    serveConnection(socket, { connId: conn, filter, maxFrame: config.maxFrame, idleTimeoutMs: config.idleTimeoutMs, log: sessionLog, onClose: () => open.delete(socket) });
  };

  const listeners: Listener[] = [];
  try {
    const fds = inheritedFds(process.env, process.pid);
    if (fds.length > 0) {
      for (const { fd, name } of fds) listeners.push(await listenOnFd(fd, name, onConnection));
    } else {
      listeners.push(await listenOn(config.socket, config.socketMode, onConnection));
    }
  } catch (e) {
    fail(`cannot listen: ${(e as Error).message}`);
  }
  log.info("{name} {version} listening on {sockets}", { name: config.name, version: VERSION, sockets: listeners.map((l) => l.name).join(", ") });

  const stop = (signal: string) => {
    log.info("stopping on {signal}", { signal });
    for (const l of listeners) l.server.close();
    for (const s of open) s.destroy();
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

function logDecision(log: ReturnType<typeof logger>, conn: string, r: DecisionRecord): void {
  const v = r.verdict;
  const props = { conn, qid: r.queueId, client: r.client, from_domain: v.fromDomain };
  if (v.action === "continue") {
    log.info("decision", {
      ...props,
      verdict: "continue",
      policy_domain: v.policyDomain,
      dkim: v.dkimChecked,
      dkim_aligned: v.dkimAligned,
      x509: v.x509Checked,
      forwarded: v.forwarded,
      removed_headers: v.changes.filter((c) => c.kind === "delete").length,
    });
  } else {
    log.info("decision", { ...props, verdict: v.action, reason: v.reason });
  }
}

const r = loadConfig(process.argv.slice(2), process.env);
if (!r.ok) fail(r.error);
if (r.command === "help") {
  process.stdout.write(helpText("exota-milter") + "\n");
} else if (r.command === "version") {
  process.stdout.write(`exota-milter ${VERSION}\n`);
} else if (r.command === "run") {
  await run(r.config);
}
