/**
 * The C bar of issue 18 in one command: exota-milter (every check on)
 * against a libmilter filter that negotiates exactly like it and does
 * nothing else (bench/reference/lean-filter.c), on a unix socket, driven by
 * the C load generator bench/reference/miltload.c, at 8 and 64 connections,
 * with reused connections (10 messages each) and with one message per
 * connection; the two filters take turns, in an order reversed every other
 * run, and the median of the runs counts.
 *
 *   npm run bench:cbar                 (= bun bench/cbar.ts)
 *   bun bench/cbar.ts --help
 *
 * Needs Linux (/proc), gcc and Debian's libmilter-dev (scripts/bench-deps.sh).
 * Only unix sockets in a temporary directory; every process started here is
 * stopped by its PID.
 * @module
 */
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { procCpuMs } from "./load.ts";
import { serviceEnvironment } from "../tests/lib/service-unit.ts";

const ROOT = resolve(import.meta.dir, "..");
const EXOTA_HEADER = "X-ExOTA-Authentication-Results";

const HELP = `usage: bun bench/cbar.ts [options]
  --conns LIST      milter connections in parallel (default 8,64)
  --per-conn LIST   messages per connection; 1 = one message per connection (default 10,1)
  --runs N          runs per cell, the median counts (default 3)
  --duration SEC    seconds per run (default 3)
  --warmup SEC      seconds of load on the fresh exota-milter before measuring (default 8)
  --json FILE       also write every figure as JSON
  --keep            keep the temporary directory (logs)`;

interface Args {
  conns: number[];
  perConn: number[];
  runs: number;
  duration: number;
  warmup: number;
  json: string | undefined;
  keep: boolean;
}

function parse(): Args {
  const { values: a } = parseArgs({
    args: process.argv.slice(2),
    options: {
      conns: { type: "string" },
      "per-conn": { type: "string" },
      runs: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      json: { type: "string" },
      keep: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (a.help) {
    console.log(HELP);
    process.exit(0);
  }
  return {
    conns: (a.conns ?? "8,64").split(",").map(Number),
    perConn: (a["per-conn"] ?? "10,1").split(",").map(Number),
    runs: Number(a.runs ?? 3),
    duration: Number(a.duration ?? 3),
    warmup: Number(a.warmup ?? 8),
    json: a.json,
    keep: a.keep ?? false,
  };
}

const log = (line: string) => process.stderr.write(`bench:cbar: ${line}\n`);
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const load1 = () => Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);

function sh(cmd: string[]): string {
  const p = Bun.spawnSync(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed (${p.exitCode}):\n${p.stdout}${p.stderr}`);
  return p.stdout.toString();
}

type Key = "exota" | "lean";
const NAMES: Record<Key, string> = { exota: "**exota-milter**", lean: "C lean filter" };

/** One miltload RESULT line, with the filter's CPU per message. */
interface Result {
  filter: Key;
  conns: number;
  perConn: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  connP50Ms: number;
  connP99Ms: number;
  cpuMs: number;
  load: number;
}

const started: Subprocess[] = [];

async function stopAll(): Promise<void> {
  await Promise.all(started.map(async (p) => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGTERM");
    // libmilter filters take seconds to exit on SIGTERM.
    const t = setTimeout(() => p.kill("SIGKILL"), 3000);
    await p.exited;
    clearTimeout(t);
  }));
}

async function main(): Promise<number> {
  const args = parse();
  if (!existsSync("/proc/self/stat")) throw new Error("needs Linux (/proc)");
  if (!existsSync("/usr/include/libmilter/mfapi.h")) throw new Error("the C filter needs Debian's libmilter-dev and gcc: sudo ./scripts/bench-deps.sh");
  const tBench = performance.now();
  const tmp = mkdtempSync(join(tmpdir(), "exota-cbar-"));
  try {
    log("building dist/exota-milter, the C lean filter and miltload");
    sh([process.execPath, "build.ts"]);
    const lean = join(tmp, "lean-filter"), miltload = join(tmp, "miltload");
    sh(["gcc", "-O2", "-Wall", "-o", lean, join(ROOT, "bench/reference/lean-filter.c"), "-lmilter", "-lpthread"]);
    sh(["gcc", "-O2", "-Wall", "-o", miltload, join(ROOT, "bench/reference/miltload.c"), "-lpthread"]);
    const policy = join(tmp, "policy.json");
    writeFileSync(policy, sh([miltload, "--print-policy"]));

    const sockets: Record<Key, string> = { exota: `unix:${join(tmp, "exota.sock")}`, lean: `unix:${join(tmp, "lean.sock")}` };
    const spawnLogged = (cmd: string[], env: Record<string, string>, logName: string) => {
      const fd = openSync(join(tmp, logName), "a");
      const p = Bun.spawn(cmd, { cwd: tmp, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, stdin: "ignore", stdout: fd, stderr: fd });
      closeSync(fd);
      started.push(p);
      return p;
    };
    const procs: Record<Key, Subprocess> = {
      // Every check on, the default info log line per decision, to a file.
      exota: spawnLogged([join(ROOT, "dist/exota-milter")], {
        // As the shipped service unit runs it (its Environment= lines).
        ...serviceEnvironment(),
        MILTER_SOCKET: sockets.exota,
        MILTER_POLICY_FILE: policy,
        MILTER_X509_ENABLED: "true",
        MILTER_DKIM_ENABLED: "true",
        MILTER_DKIM_ALIGNMENT_REQUIRED: "true",
        MILTER_TENANT_ID_REQUIRED: "true",
        MILTER_TRUSTED_AUTHSERVID: "relay.bench.example",
        MILTER_ADD_HEADER: "true",
        MILTER_AUTHSERVID: "relay.bench.example",
        MILTER_MAX_CONNECTIONS: "2000",
      }, "exota.log"),
      lean: spawnLogged([lean, "-p", sockets.lean], {}, "lean.log"),
    };
    const expect: Record<Key, string[]> = {
      exota: ["-r", "0.1", "--expect", "policy", "--expect-header", EXOTA_HEADER],
      lean: ["-r", "0.1", "--expect", "continue"],
    };

    /** Runs miltload; throws unless every verdict checked out. */
    const drive = async (key: Key, conns: number, perConn: number, opts: string[]): Promise<Record<string, number>> => {
      const p = Bun.spawn([miltload, "-s", sockets[key], "-c", String(conns), "-m", String(perConn), "-q", ...expect[key], ...opts], { stdout: "pipe", stderr: "pipe" });
      const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      const line = out.split("\n").find((l) => l.startsWith("RESULT "));
      if (code !== 0 || line === undefined) throw new Error(`miltload on ${key} (${conns} conns, ${perConn} per connection) failed (${code}):\n${err}${out}`);
      return Object.fromEntries([...line.matchAll(/(\w+)=([\d.]+)/g)].map((m) => [m[1]!, Number(m[2])]));
    };

    for (const key of ["exota", "lean"] as const) {
      const until = performance.now() + 30_000;
      for (;;) {
        if (procs[key].exitCode !== null) throw new Error(`${key} exited (${procs[key].exitCode}); see ${join(tmp, `${key}.log`)}`);
        try {
          await drive(key, 1, 1, ["-n", "1", "-d", "5"]);
          break;
        } catch (e) {
          if (performance.now() > until) throw e;
          await Bun.sleep(50);
        }
      }
    }
    // The bar is only fair while both ask the MTA for the same: steps, no-reply flags, macros.
    const negotiation = async (key: Key) => {
      const p = Bun.spawn([miltload, "-s", sockets[key], "-n", "1", "--expect", "none"], { stdout: "pipe", stderr: "pipe" });
      const [out] = await Promise.all([new Response(p.stdout).text(), p.exited]);
      return /^negotiated: (.*)$/m.exec(out)?.[1] ?? "(none)";
    };
    const [ours, theirs] = [await negotiation("exota"), await negotiation("lean")];
    if (ours !== theirs) {
      throw new Error(`the C lean filter does not negotiate like exota-milter; bring bench/reference/lean-filter.c in step:\n  exota-milter: ${ours}\n  lean filter:  ${theirs}`);
    }
    log(`both negotiate ${ours}`);
    // A daemon runs for weeks: Bun's JIT compiles for ~8 s on a fresh process. The C filter needs nothing.
    log(`warming up exota-milter for ${args.warmup} s`);
    await drive("exota", 8, 10, ["-n", "0", "-d", String(args.warmup)]);

    const results: Result[] = [];
    for (const perConn of args.perConn) {
      for (const conns of args.conns) {
        for (let run = 0; run < args.runs; run++) {
          const order: Key[] = run % 2 === 0 ? ["exota", "lean"] : ["lean", "exota"];
          for (const key of order) {
            const load = load1();
            const cpu0 = procCpuMs(procs[key].pid);
            const r = await drive(key, conns, perConn, ["-n", "0", "-d", String(args.duration)]);
            const cpu = (procCpuMs(procs[key].pid) - cpu0) / r.msgs!;
            const res: Result = {
              filter: key, conns, perConn, load, cpuMs: cpu,
              rate: r.rate!, p50Ms: r.p50_us! / 1000, p99Ms: r.p99_us! / 1000, connP50Ms: r.conn_p50_us! / 1000, connP99Ms: r.conn_p99_us! / 1000,
            };
            results.push(res);
            log(`${String(conns).padStart(2)} conns, ${perConn} msg/conn, ${key.padEnd(5)} run ${run + 1}: ${res.rate.toFixed(0)} msgs/s, p99 ${res.p99Ms.toFixed(2)} ms, ` +
              `connection set-up p99 ${res.connP99Ms.toFixed(2)} ms, CPU ${res.cpuMs.toFixed(3)} ms/msg (load ${load.toFixed(2)})`);
          }
        }
      }
    }

    // ---- the table
    const cell = (key: Key, conns: number, perConn: number) => {
      const rs = results.filter((r) => r.filter === key && r.conns === conns && r.perConn === perConn);
      const m = (f: (r: Result) => number) => median(rs.map(f));
      return { rate: m((r) => r.rate), rates: rs.map((r) => r.rate), p50: m((r) => r.p50Ms), p99: m((r) => r.p99Ms), cp50: m((r) => r.connP50Ms), cp99: m((r) => r.connP99Ms), cpu: m((r) => r.cpuMs) };
    };
    const f2 = (x: number) => (x < 10 ? x.toFixed(2) : x.toFixed(1));
    const loads = results.map((r) => r.load);
    const out: string[] = [];
    const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "?";
    out.push(`Machine: ${navigator.hardwareConcurrency} CPUs, ${model}, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, Bun ${Bun.version}`);
    out.push(`Command: npm run bench:cbar; unix socket, C miltload, median of ${args.runs} runs of ${args.duration} s per cell (order reversed every other run), ` +
      `10% reject-designed, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; 1-minute load average during the runs ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`);
    out.push("");
    out.push("| msgs/conn | conns | filter | msgs/s (runs) | × C | p50 ms | p99 ms | set-up p50 ms | set-up p99 ms | CPU ms/msg |");
    out.push("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    const goals: Array<[string, string, string, boolean]> = [];
    for (const perConn of args.perConn) {
      for (const conns of args.conns) {
        const c = cell("lean", conns, perConn), e = cell("exota", conns, perConn);
        for (const [key, x] of [["lean", c], ["exota", e]] as const) {
          out.push(`| ${perConn} | ${conns} | ${NAMES[key]} | ${Math.round(x.rate).toLocaleString("en-US")} (${x.rates.map((r) => r.toFixed(0)).join(", ")}) | ${(x.rate / c.rate).toFixed(2)} | ${f2(x.p50)} | ${f2(x.p99)} | ${f2(x.cp50)} | ${f2(x.cp99)} | ${x.cpu.toFixed(3)} |`);
        }
        const what = `${conns} conns, ${perConn === 1 ? "one message per connection" : `${perConn} messages per connection`}`;
        goals.push([`throughput, ${what}`, ">= 1.0 × C", `${(e.rate / c.rate).toFixed(2)} × (${e.rate.toFixed(0)} vs ${c.rate.toFixed(0)})`, e.rate >= c.rate]);
        goals.push([`p99 latency (MAIL to final reply), ${what}`, "<= C's", `${f2(e.p99)} vs ${f2(c.p99)} ms`, e.p99 <= c.p99]);
        if (perConn === 1) goals.push([`p99 connection set-up (connect to ready for MAIL), ${what}`, "<= C's", `${f2(e.cp99)} vs ${f2(c.cp99)} ms`, e.cp99 <= c.cp99]);
      }
    }
    out.push("");
    out.push("| goal | target | measured | met |");
    out.push("| --- | --- | --- | --- |");
    for (const [g, target, measured, met] of goals) out.push(`| ${g} | ${target} | ${measured} | ${met ? "yes" : "**no**"} |`);
    out.push("");
    out.push(`Total bench time: ${((performance.now() - tBench) / 1000).toFixed(0)} s`);
    console.log(out.join("\n"));
    if (args.json !== undefined) writeFileSync(args.json, JSON.stringify({ args, results, goals }, null, 2));
    return 0;
  } finally {
    await stopAll();
    if (args.keep) log(`kept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }
}

main().then((code) => process.exit(code), async (e: Error) => {
  console.error(`bench:cbar: ${e.message}`);
  await stopAll();
  process.exit(1);
});
