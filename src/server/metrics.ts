/**
 * Prometheus metrics in the text exposition format, served on a loopback
 * address when MILTER_METRICS_LISTEN is set.
 * @module
 */
import type { RequestListener, Server } from "node:http";
import type { TimeoutKind } from "./connection.ts";

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * A reason without what varies per message (a domain, a CN), so label
 * values stay few: "No policy for 5322.from_domain x.example" ->
 * "No policy for 5322.from_domain".
 */
export function reasonLabel(reason: string): string {
  const colon = reason.indexOf(": ");
  const head = colon >= 0 ? reason.slice(0, colon) : reason;
  return head.replace(/ \S*[.@]\S*$/, "");
}

const escapeLabel = (s: string) => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

export interface MetricsSources {
  connectionsOpen(): number;
  policyEntries(): number | undefined;
  ldap(): { queries: number; cacheHits: number; errors: number } | undefined;
  logLinesDropped(): number;
}

export class Metrics {
  readonly #messages = new Map<string, { verdict: string; reason: string; n: number }>();
  readonly #buckets = new Array<number>(BUCKETS.length).fill(0);
  #latencySum = 0;
  #latencyCount = 0;
  #connections = 0;
  readonly #timedOut: Record<TimeoutKind, number> = { idle: 0, frame: 0, message: 0 };
  readonly #refused = { limit: 0, shutting_down: 0 };
  #reloadsOk = 0;
  #reloadsFailed = 0;

  constructor(readonly sources: MetricsSources) {}

  decided(verdict: string, reason: string, latencyMs: number | undefined): void {
    const label = reasonLabel(reason);
    const key = `${verdict}\0${label}`;
    const m = this.#messages.get(key);
    if (m !== undefined) m.n++;
    else this.#messages.set(key, { verdict, reason: label, n: 1 });
    if (latencyMs !== undefined) {
      const s = latencyMs / 1000;
      for (let i = 0; i < BUCKETS.length; i++) if (s <= BUCKETS[i]!) this.#buckets[i]!++;
      this.#latencySum += s;
      this.#latencyCount++;
    }
  }

  connectionOpened(): void {
    this.#connections++;
  }

  refused(reason: "limit" | "shutting_down"): void {
    this.#refused[reason]++;
  }

  timedOut(kind: TimeoutKind): void {
    this.#timedOut[kind]++;
  }

  reloaded(ok: boolean): void {
    if (ok) this.#reloadsOk++;
    else this.#reloadsFailed++;
  }

  render(): string {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    metric("exota_milter_messages_total", "counter", "Messages decided, by verdict and reason.");
    for (const m of this.#messages.values()) {
      out.push(`exota_milter_messages_total{verdict="${escapeLabel(m.verdict)}",reason="${escapeLabel(m.reason)}"} ${m.n}`);
    }
    metric("exota_milter_decision_seconds", "histogram", "Time from end of message to verdict.");
    BUCKETS.forEach((b, i) => out.push(`exota_milter_decision_seconds_bucket{le="${b}"} ${this.#buckets[i]}`));
    out.push(`exota_milter_decision_seconds_bucket{le="+Inf"} ${this.#latencyCount}`);
    out.push(`exota_milter_decision_seconds_sum ${this.#latencySum}`, `exota_milter_decision_seconds_count ${this.#latencyCount}`);
    metric("exota_milter_connections_open", "gauge", "Milter connections open now.");
    out.push(`exota_milter_connections_open ${this.sources.connectionsOpen()}`);
    metric("exota_milter_connections_total", "counter", "Milter connections accepted.");
    out.push(`exota_milter_connections_total ${this.#connections}`);
    metric("exota_milter_connections_refused_total", "counter", "Milter connections refused: at MILTER_MAX_CONNECTIONS, or while shutting down.");
    for (const [reason, n] of Object.entries(this.#refused)) out.push(`exota_milter_connections_refused_total{reason="${reason}"} ${n}`);
    metric(
      "exota_milter_connections_timed_out_total",
      "counter",
      "Milter connections closed for a timeout: idle (silent), frame (one frame too slow), message (MAIL to end of message too slow).",
    );
    for (const [kind, n] of Object.entries(this.#timedOut)) out.push(`exota_milter_connections_timed_out_total{timeout="${kind}"} ${n}`);
    metric("exota_milter_log_lines_dropped_total", "counter", "Log lines standard error refused (full disk, reader gone); mail is decided regardless.");
    out.push(`exota_milter_log_lines_dropped_total ${this.sources.logLinesDropped()}`);
    metric("exota_milter_policy_reloads_total", "counter", "Policy reloads, by result.");
    out.push(`exota_milter_policy_reloads_total{result="ok"} ${this.#reloadsOk}`);
    out.push(`exota_milter_policy_reloads_total{result="failed"} ${this.#reloadsFailed}`);
    const entries = this.sources.policyEntries();
    if (entries !== undefined) {
      metric("exota_milter_policy_entries", "gauge", "Domains in the policy in force.");
      out.push(`exota_milter_policy_entries ${entries}`);
    }
    const ldap = this.sources.ldap();
    if (ldap !== undefined) {
      metric("exota_milter_ldap_queries_total", "counter", "LDAP searches sent.");
      out.push(`exota_milter_ldap_queries_total ${ldap.queries}`);
      metric("exota_milter_ldap_errors_total", "counter", "LDAP lookups that failed (message tempfailed).");
      out.push(`exota_milter_ldap_errors_total ${ldap.errors}`);
      metric("exota_milter_ldap_cache_hits_total", "counter", "Policy answers served from the cache.");
      out.push(`exota_milter_ldap_cache_hits_total ${ldap.cacheHits}`);
    }
    return out.join("\n") + "\n";
  }
}

export function serveMetrics(metrics: Metrics, host: string, port: number): Promise<Server> {
  return listenHttp(host, port, (req, res) => {
    if (req.method === "GET" && (req.url === "/metrics" || req.url === "/")) {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
      res.end(metrics.render());
    } else {
      res.writeHead(404).end();
    }
  });
}

/** An HTTP server listening on host:port; rejects with the runtime's error (`check` tries it the same way). */
export async function listenHttp(host: string, port: number, handler?: RequestListener): Promise<Server> {
  // Loaded only when metrics are on: node:http costs ~8 MB of memory at start-up.
  const { createServer } = await import("node:http");
  const server = createServer(handler);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}
