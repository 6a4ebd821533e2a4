/**
 * The running milter: listeners, one session per connection, policy reload
 * on SIGHUP and on file change, metrics, and a graceful stop on SIGTERM or
 * SIGINT (stop accepting, let messages in flight finish up to a deadline;
 * a second signal exits at once).
 * @module
 */
import process from "node:process";
import type { Logger } from "@logtape/logtape";
import type { Config } from "../config.ts";
import { type DecisionRecord, ExotaFilter } from "../filter.ts";
import { droppedLogLines, literal, logger } from "../log.ts";
import { accessNeeded, ACTIVATION_ENV } from "./access.ts";
import { type ConnectionHandle, serveConnection } from "./connection.ts";
import { inheritedFds, type Listener, listenOn, listenOnFd } from "./listen.ts";
import { Metrics, serveMetrics } from "./metrics.ts";
import { RefusalLog } from "./refusals.ts";
import { FilePolicyProvider, LdapPolicyProvider, openPolicy } from "./policy-provider.ts";
import type { MilterSocket, SocketEvents } from "./runtime-api.ts";
import { runtime } from "./runtime.ts";
import { hostPort } from "./socket-spec.ts";

export function logDecision(log: Logger, conn: string, r: DecisionRecord, reportOnly: boolean): void {
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
  } else if (reportOnly) {
    log.info("decision (report only, message let through)", { ...props, verdict: `would ${v.action}`, reason: v.reason });
  } else {
    log.info("decision", { ...props, verdict: v.action, reason: v.reason });
  }
}

/** Runs until stopped; `fail` ends start-up with a message. */
export async function runDaemon(config: Config, version: string, fail: (message: string) => never): Promise<void> {
  const log = logger();
  const sessionLog = logger("session");
  const traceOn = sessionLog.isEnabledFor("debug");
  const open = new Map<MilterSocket, ConnectionHandle>();
  const metrics = new Metrics({
    connectionsOpen: () => open.size,
    policyEntries: () => policy.entries(),
    ldap: () => (policy instanceof LdapPolicyProvider ? policy.backend.stats : undefined),
    logLinesDropped: droppedLogLines,
  });

  // A runtime that grants access per resource (Deno) says now what it would refuse later.
  const envRefused = runtime.refused(ACTIVATION_ENV);
  const fds = envRefused.length === 0 ? inheritedFds(process.env, process.pid) : [];
  const refused = [...envRefused, ...runtime.refused(accessNeeded(config, fds.length > 0))];
  if (refused.length > 0) fail(`${runtime.name} refuses what this configuration needs; grant it with ${refused.join(", ")}`);

  const opened = await openPolicy(config, logger("policy"), (r) => metrics.reloaded(r.ok), true);
  if (typeof opened === "string") fail(`policy: ${opened}`);
  const policy = opened;
  // A big policy file leaves its bytes (150 MB for a million domains) as
  // garbage: collect them before serving rather than whenever the GC sees fit.
  if ((policy.entries() ?? 0) > 100_000) runtime.collectGarbage();
  // Watching costs ~8 ms (inotify, Bun's watch module): it starts after the
  // first connections of a socket-activated start are answered; watch()
  // catches up on a change made in between.
  if (policy instanceof FilePolicyProvider && config.policyWatch) setTimeout(() => policy.watch(), 200);

  let nextConn = 0;
  const refusals = new RefusalLog(sessionLog);
  // Configuration faults of the MTA, each logged once: they would repeat for every message.
  const misconfigurations = new Set<string>();
  const now = () => performance.now();
  const onConnection = (socket: MilterSocket, listener: string, tcp: boolean): SocketEvents | undefined => {
    const conn = (++nextConn).toString();
    if (stopping || open.size >= config.maxConnections) {
      metrics.refused(stopping ? "shutting_down" : "limit");
      refusals.refused(conn, listener, stopping ? "shutting down" : `${open.size} connections open (MILTER_MAX_CONNECTIONS)`);
      socket.end();
      return undefined;
    }
    metrics.connectionOpened();
    if (traceOn) sessionLog.debug("connection accepted on {listener}", { conn, listener });
    const filter = new ExotaFilter(config.filter, () => policy.lookup(), {
      decided: (r) => {
        metrics.decided(r.verdict.action, r.verdict.action === "continue" ? "" : r.verdict.reason, r.latencyMs);
        logDecision(sessionLog, conn, r, config.filter.reportOnly);
      },
      failed: (qid, error) => sessionLog.error("decision failed, message tempfailed: {error}", { conn, qid, error }),
      warn: (qid, message) => sessionLog.warn(literal(message), { conn, qid }),
      misconfigured: (message) => {
        if (misconfigurations.has(message)) return;
        misconfigurations.add(message);
        sessionLog.warn(literal(message), { conn });
      },
      trace: traceOn ? (qid, line) => sessionLog.debug(literal(line), { conn, qid }) : undefined,
      now,
    }, tcp);
    const handle = serveConnection(socket, {
      connId: conn,
      filter,
      maxFrame: config.maxFrame,
      idleTimeoutMs: config.idleTimeoutMs,
      messageTimeoutMs: config.messageTimeoutMs,
      onTimeout: (kind) => metrics.timedOut(kind),
      log: sessionLog,
      onClose: () => {
        open.delete(socket);
        if (stopping && open.size === 0) finish("all connections closed");
      },
    });
    open.set(socket, handle);
    return handle;
  };

  const listeners: Listener[] = [];
  try {
    if (fds.length > 0) {
      for (const { fd, name } of fds) listeners.push(await listenOnFd(fd, name, onConnection));
    } else {
      listeners.push(await listenOn(config.socket, config.socketMode, onConnection));
    }
    if (config.metricsListen !== undefined) {
      const { host, port } = config.metricsListen;
      await serveMetrics(metrics, host, port);
      log.info("metrics on http://{address}/metrics", { address: hostPort(host, port) });
    }
  } catch (e) {
    fail(`cannot listen: ${(e as Error).message}`);
  }
  process.on("SIGHUP", () => {
    log.info("SIGHUP: reloading the policy");
    policy.reload();
  });

  let stopping = false;
  const finish = (why: string) => {
    log.info("stopped: {why}", { why });
    void policy.close();
    process.exit(0);
  };
  const stop = (signal: string) => {
    if (stopping) {
      log.warn("{signal} again: exiting at once, {open} connection(s) dropped", { signal, open: open.size });
      process.exit(1);
    }
    stopping = true;
    log.info("{signal}: stopping, {open} connection(s) open, waiting up to {seconds} s for messages in flight", {
      signal,
      open: open.size,
      seconds: config.shutdownTimeoutMs / 1000,
    });
    for (const l of listeners) l.close();
    if (open.size === 0) finish("no connections open");
    for (const handle of open.values()) handle.drain();
    setTimeout(() => finish(`deadline reached, ${open.size} connection(s) dropped`), config.shutdownTimeoutMs).unref();
  };
  // A log reader that went away must not end the process (log.ts drops and counts its lines).
  process.on("SIGPIPE", () => {});
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // Once start-up has worked: a start-up error stays the first line of the output.
  for (const w of config.warnings) log.warn(literal(w));
  // Announce readiness only once the signal handlers are in place: a signal
  // sent on the "listening" line must not hit the default action (exit).
  log.info("{name} {version} listening on {sockets}", {
    name: config.name,
    version,
    sockets: listeners.map((l) => l.name).join(", "),
    policy: policy.description,
    report_only: config.filter.reportOnly || undefined,
  });
}
