/**
 * The benchmark of issue 7 in one command: exota-milter (every check on,
 * adding its header) against a C libmilter filter that does nothing, side by
 * side on this machine, and one table of the figures with the ratios.
 *
 *   npm run bench                      (= bun bench/run.ts)
 *   bun bench/run.ts --quick           one short run per cell, no 1M-domain policy
 *   bun bench/run.ts --help
 *
 * Needs: Linux (/proc), python3, a C compiler and Debian's libmilter-dev for
 * the reference filter (bench/reference/null-filter.c; scripts/bench-deps.sh
 * installs them). Only loopback
 * TCP and unix sockets are used; every process started here is stopped by PID.
 * @module
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { decodeReply, encodeCommand, FrameReader } from "../src/milter/codec.ts";
import { DEFAULT_DOMAINS, type LoadResult, policyJson, procMemKb, tenantId } from "./load.ts";
import { serviceEnvironment } from "../tests/lib/service-unit.ts";

const ROOT = resolve(import.meta.dir, "..");
const BUN = process.execPath;
const LOAD = join(ROOT, "bench", "load.ts");
const EXOTA_HEADER = "X-ExOTA-Authentication-Results";

const HELP = `usage: bun bench/run.ts [options]
  --runs N          runs per cell, the median counts (default 3)
  --duration SEC    seconds measured per run (default 2.5)
  --warmup SEC      seconds of load before each run is measured (default 0.5)
  --warmup-process SEC  seconds of load on a fresh exota-milter before its first run (default 8)
  --conns LIST      connection counts (default 1,8,64)
  --per-conn N      messages per connection in the throughput cells; 1 = one message per connection (default 10)
  --transports LIST unix,tcp (default both)
  --domains N       domains of the big policy (default 1000000; 0 skips the policy rows)
  --idle N          idle connections for the RSS row (default 1000)
  --quick           --runs 1 --duration 1 --domains 0
  --no-deno         leave out the rows of exota-milter under Deno (deno run of the sources)
  --crosscheck      first compare this generator with a C one (miltload.c) on the C null filter
  --ref-dir DIR     where miltload.c and its Makefile are, for --crosscheck (default ../shared/bench)
  --json FILE       also write every figure as JSON
  --keep            keep the temporary directory (logs, policies)`;

interface Args {
  runs: number;
  duration: number;
  warmup: number;
  warmupProcess: number;
  conns: number[];
  perConn: number;
  transports: Array<"unix" | "tcp">;
  domains: number;
  idle: number;
  refDir: string;
  json: string | undefined;
  keep: boolean;
  crosscheck: boolean;
  deno: boolean;
}

function parse(): Args {
  const { values: a } = parseArgs({
    args: process.argv.slice(2),
    options: {
      runs: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      "warmup-process": { type: "string" },
      conns: { type: "string" },
      "per-conn": { type: "string" },
      transports: { type: "string" },
      domains: { type: "string" },
      idle: { type: "string" },
      quick: { type: "boolean" },
      "ref-dir": { type: "string" },
      json: { type: "string" },
      keep: { type: "boolean" },
      crosscheck: { type: "boolean" },
      "no-deno": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (a.help) {
    console.log(HELP);
    process.exit(0);
  }
  const quick = a.quick ?? false;
  const transports = (a.transports ?? "unix,tcp").split(",").map((t) => {
    if (t !== "unix" && t !== "tcp") throw new Error(`--transports: ${t}`);
    return t;
  });
  return {
    runs: Number(a.runs ?? (quick ? 1 : 3)),
    duration: Number(a.duration ?? (quick ? 1 : 2.5)),
    warmup: Number(a.warmup ?? 0.5),
    warmupProcess: Number(a["warmup-process"] ?? (quick ? 2 : 8)),
    conns: (a.conns ?? "1,8,64").split(",").map(Number),
    perConn: Number(a["per-conn"] ?? 10),
    transports,
    domains: Number(a.domains ?? (quick ? 0 : 1_000_000)),
    idle: Number(a.idle ?? 1000),
    refDir: resolve(a["ref-dir"] ?? process.env.EXOTA_BENCH_REF_DIR ?? join(ROOT, "..", "shared", "bench")),
    json: a.json,
    keep: a.keep ?? false,
    crosscheck: a.crosscheck ?? false,
    deno: !(a["no-deno"] ?? false),
  };
}

const log = (line: string) => process.stderr.write(`bench: ${line}\n`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function sh(cmd: string[], cwd = ROOT): Promise<void> {
  const p = Bun.spawn(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (${code}):\n${out}${err}`);
}

// ------------------------------------------------------------ processes

interface Filter {
  readonly name: string;
  readonly key: "null" | "nullnr" | "exota" | "deno";
  /** Command and environment for a socket spec. */
  readonly start: (socket: string) => { cmd: string[]; env?: Record<string, string> };
  readonly loadArgs: string[];
}

class Proc {
  constructor(readonly p: Subprocess, readonly logFile: string) {}
  get pid(): number {
    return this.p.pid;
  }
  async stop(): Promise<void> {
    if (this.p.exitCode !== null || this.p.signalCode !== null) return;
    this.p.kill("SIGTERM");
    // libmilter filters take seconds to exit on SIGTERM.
    const t = setTimeout(() => this.p.kill("SIGKILL"), 3000);
    await this.p.exited;
    clearTimeout(t);
  }
}

const started: Proc[] = [];

function spawnFilter(f: Filter, socket: string, logFile: string, extraEnv: Record<string, string> = {}): Proc {
  const { cmd, env } = f.start(socket);
  const fd = openSync(logFile, "a");
  const p = Bun.spawn(cmd, { cwd: ROOT, env: { ...process.env, ...env, ...extraEnv }, stdin: "ignore", stdout: fd, stderr: fd });
  closeSync(fd);
  const proc = new Proc(p, logFile);
  started.push(proc);
  return proc;
}

/**
 * Connects until the filter answers an option negotiation; resolves with the
 * milliseconds from `t0` to that answer.
 */
async function firstReply(socket: string, t0: number, timeoutMs = 30000, proc?: Proc): Promise<number> {
  const unix = socket.startsWith("unix:") ? socket.slice(5) : undefined;
  const m = /^inet:(\d+)@(.+)$/.exec(socket);
  const optneg = encodeCommand({ type: "optneg", version: 6, actions: 0x1ff, protocol: 0x1fffff });
  for (;;) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`no answer on ${socket} within ${timeoutMs} ms`);
    if (proc !== undefined && proc.p.exitCode !== null) throw new Error(`filter exited (${proc.p.exitCode}); see ${proc.logFile}`);
    const answered = await new Promise<number | undefined>((res) => {
      const reader = new FrameReader();
      let settled = false;
      const settle = (v: number | undefined) => {
        if (!settled) {
          settled = true;
          res(v);
        }
      };
      const socketHandlers = {
        open(s: import("bun").Socket<undefined>) {
          s.write(optneg);
        },
        data(s: import("bun").Socket<undefined>, d: Uint8Array) {
          reader.push(d);
          const f = reader.next();
          if (f?.ok && decodeReply(f.value.code, f.value.payload).ok) {
            settle(performance.now() - t0);
            s.end(encodeCommand({ type: "quit" })); // may call close() at once
          }
        },
        close() {
          settle(undefined);
        },
        error() {
          settle(undefined);
        },
      };
      const c = unix !== undefined
        ? Bun.connect({ unix, socket: socketHandlers })
        : Bun.connect({ hostname: m![2]!, port: Number(m![1]), socket: socketHandlers });
      c.catch(() => settle(undefined));
    });
    if (answered !== undefined) return answered;
    await Bun.sleep(1);
  }
}

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

async function runLoadProcess(args: string[]): Promise<LoadResult> {
  const p = Bun.spawn([BUN, LOAD, ...args, "--json", "--quiet"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  const line = out.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as LoadResult;
  } catch {
    throw new Error(`load generator failed: ${err}${out}`);
  }
}

// --------------------------------------------------------------- helpers

function machine(): string {
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? cpus()[0]?.model ?? "?";
  const kernel = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  return `${navigator.hardwareConcurrency} CPUs (nproc), ${model}, Linux ${kernel}, Bun ${Bun.version}`;
}

/** The machine is shared: how busy it was is part of the figures. */
const loadAverage = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(", ");

const fmt = (x: number | undefined, d = 0) => (x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(d));
const fmtRate = (x: number) => (x >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1));
const ms = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(1));

/** A big policy: `n` generated domains plus the generator's, one entry per line. */
function writeBigPolicy(path: string, n: number): void {
  const fd = openSync(path, "w");
  const lines: string[] = ["{"];
  const flush = () => {
    writeFileSync(fd, lines.join("\n") + "\n");
    lines.length = 0;
  };
  for (const d of DEFAULT_DOMAINS) {
    lines.push(`"${d}": {"tenant_id": "${tenantId(d)}", "dkim_enabled": true, "dkim_alignment_required": true},`);
  }
  for (let i = 0; i < n; i++) {
    const d = `tenant${i}.customer${i % 997}.example`;
    const hex = (i * 2654435761 >>> 0).toString(16).padStart(8, "0");
    lines.push(`"${d}": {"tenant_id": "${hex}-0000-4000-8000-${i.toString(16).padStart(12, "0")}", "dkim_enabled": ${i % 10 !== 0}, "dkim_alignment_required": true}${i + 1 < n ? "," : ""}`);
    if (lines.length >= 10000) flush();
  }
  lines.push("}");
  flush();
  closeSync(fd);
}

// ------------------------------------------------------------------- main

interface Cell {
  transport: string;
  conns: number;
  filter: Filter["key"];
  runs: LoadResult[];
  rate: number;
  p50: number;
  p99: number;
  max: number;
  cpuMs: number;
  hwmKb: number;
}

async function main(): Promise<number> {
  const args = parse();
  const tBench = performance.now();
  if (!existsSync("/proc/self/stat")) throw new Error("needs Linux (/proc)");
  if (args.crosscheck && !existsSync(join(args.refDir, "miltload.c"))) throw new Error(`--crosscheck: no miltload.c in ${args.refDir} (--ref-dir)`);
  if (!existsSync("/usr/include/libmilter/mfapi.h")) {
    throw new Error("the reference filter needs Debian's libmilter-dev and a C compiler: sudo ./scripts/bench-deps.sh");
  }
  const tmp = mkdtempSync(join(tmpdir(), "exota-bench-"));
  log(`working in ${tmp}`);
  // Logs apart from the policy files: the filter watches the policy's
  // directory, and a log written there would wake the watch on every line.
  const logs = join(tmp, "logs");
  mkdirSync(logs);
  const results: Record<string, unknown> = { machine: machine(), date: new Date().toISOString(), args, loadAtStart: loadAverage() };

  try {
    log("building dist/exota-milter and the reference filter");
    await sh([BUN, "build.ts"]);
    const nullBin = join(tmp, "null-filter");
    await sh(["gcc", "-O2", "-Wall", "-o", nullBin, join(ROOT, "bench", "reference", "null-filter.c"), "-lmilter", "-lpthread"]);
    const exotaBin = join(ROOT, "dist", "exota-milter");
    const policy = join(tmp, "policy.json");
    writeFileSync(policy, policyJson(DEFAULT_DOMAINS));

    // As the shipped service unit runs it (its Environment= lines).
    const unitEnv = serviceEnvironment();
    const exotaEnv = (socket: string, policyFile = policy): Record<string, string> => ({
      ...unitEnv,
      MILTER_SOCKET: socket,
      MILTER_POLICY_FILE: policyFile,
      // The million-domain policy is ~146 MiB; the default limit is 64.
      MILTER_POLICY_MAX_SIZE: "512",
      MILTER_X509_ENABLED: "true",
      MILTER_DKIM_ENABLED: "true",
      MILTER_DKIM_ALIGNMENT_REQUIRED: "true",
      MILTER_TENANT_ID_REQUIRED: "true",
      MILTER_TRUSTED_AUTHSERVID: "relay.bench.example",
      MILTER_ADD_HEADER: "true",
      MILTER_AUTHSERVID: "relay.bench.example",
      MILTER_MAX_CONNECTIONS: "2000",
    });
    /** The same program under Deno, from the sources, with README's permissions for this setting. */
    const denoCmd = [
      join(ROOT, "node_modules", ".bin", "deno"),
      "run",
      "--no-prompt",
      "--allow-env=MILTER_*,LOG_LEVEL,LOG_FORMAT,JOURNAL_STREAM,LISTEN_FDS,LISTEN_PID,LISTEN_FDNAMES",
      "--allow-sys=uid",
      `--allow-read=${tmp}`,
      `--allow-write=${tmp}`,
      "--allow-net",
      join(ROOT, "src", "main.ts"),
    ];
    const allFilters: Filter[] = [
      {
        name: "C libmilter null filter",
        key: "null",
        start: (s) => ({ cmd: [nullBin, "-p", s] }),
        loadArgs: ["--expect", "continue", "--expect-header", "X-Null-Milter"],
      },
      {
        name: "C null filter with NR_HDR",
        key: "nullnr",
        start: (s) => ({ cmd: [nullBin, "-n", "-p", s] }),
        loadArgs: ["--expect", "continue", "--expect-header", "X-Null-Milter"],
      },
      {
        name: "exota-milter (all checks)",
        key: "exota",
        start: (s) => ({ cmd: [exotaBin], env: exotaEnv(s) }),
        loadArgs: ["--expect", "policy", "--expect-header", EXOTA_HEADER, "--expect-removal", EXOTA_HEADER],
      },
      {
        name: "exota-milter under Deno",
        key: "deno",
        start: (s) => ({ cmd: denoCmd, env: exotaEnv(s) }),
        loadArgs: ["--expect", "policy", "--expect-header", EXOTA_HEADER, "--expect-removal", EXOTA_HEADER],
      },
    ];
    const FILTERS = allFilters.filter((f) => f.key !== "deno" || args.deno);
    const common = ["-m", String(args.perConn), "-r", "0.1", "-d", String(args.duration), "-w", String(args.warmup)];
    /**
     * A daemon runs for weeks: load it before measuring. Bun's JIT (and
     * Deno's V8) compiles for ~8 s on a fresh process (that CPU counts as the filter's); the C
     * filters need nothing, they get a second for symmetry.
     */
    const warmUp = async (f: Filter, socket: string, p: Proc) => {
      const seconds = f.key === "exota" || f.key === "deno" ? args.warmupProcess : 1;
      if (seconds <= 0) return;
      const r = await runLoadProcess(["-s", socket, "-c", "8", "--pid", String(p.pid), "-m", "10", "-r", "0.1", "-d", String(seconds), "-w", "0", ...f.loadArgs]);
      if (!r.ok) throw new Error(`${f.name}: warm-up failed: ${r.errors.join("; ")}`);
    };

    // ---- optional: this generator against the C one, on the C null filters
    const cross: string[] = [];
    if (args.crosscheck) {
      await sh(["make", "-s", "-C", args.refDir, `O=${join(tmp, "ref")}`, join(tmp, "ref", "miltload")]);
      const miltload = join(tmp, "ref", "miltload");
      cross.push("| filter | conns | generator | msgs/s | p50 ms | p99 ms | generator CPU us/msg |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |");
      for (const f of [FILTERS[0]!, FILTERS[1]!]) {
        const socket = `unix:${join(tmp, `cross-${f.key}.sock`)}`;
        const p = spawnFilter(f, socket, join(logs, `${f.key}-cross.log`));
        await firstReply(socket, performance.now(), 30000, p);
        for (const conns of [1, 8]) {
          const ours: LoadResult[] = [], theirs: Array<Record<string, number>> = [];
          for (let run = 0; run < args.runs; run++) {
            ours.push(await runLoadProcess(["-s", socket, "-c", String(conns), "-m", "10", "-r", "0.1", "-d", String(args.duration), "-w", "0", "--one-write", ...f.loadArgs]));
            const c = Bun.spawn([miltload, "-s", socket, "-c", String(conns), "-m", "10", "-r", "0.1", "-n", "0", "-d", String(args.duration), "--expect", "continue", "-q"], { stdout: "pipe", stderr: "pipe" });
            const out = await new Response(c.stdout).text();
            await c.exited;
            const kv = Object.fromEntries([...out.matchAll(/(\w+)=([\d.]+)/g)].map((m) => [m[1]!, Number(m[2])]));
            theirs.push(kv);
          }
          const name = f.key === "null" ? "C null filter" : "C null, NR_HDR";
          cross.push(`| ${name} | ${conns} | bench/load.ts | ${fmtRate(median(ours.map((r) => r.rate)))} | ${ms(median(ours.map((r) => r.p50)))} | ${ms(median(ours.map((r) => r.p99)))} | ${fmt(median(ours.map((r) => r.generatorCpuUs)))} |`);
          cross.push(`| ${name} | ${conns} | C miltload | ${fmtRate(median(theirs.map((r) => r.rate!)))} | ${ms(median(theirs.map((r) => r.p50_us! / 1000)))} | ${ms(median(theirs.map((r) => r.p99_us! / 1000)))} | ${fmt(median(theirs.map((r) => r.gen_us_per_msg!)))} |`);
        }
        await p.stop();
      }
      log("generator cross-check done");
    }
    results.crosscheck = cross;

    // ---- throughput and latency, side by side
    const cells: Cell[] = [];
    for (const transport of args.transports) {
      const sockets = new Map<string, string>();
      const procs = new Map<string, Proc>();
      for (const f of FILTERS) {
        const socket = transport === "unix" ? `unix:${join(tmp, `${f.key}.sock`)}` : `inet:${await freePort()}@127.0.0.1`;
        sockets.set(f.key, socket);
        const p = spawnFilter(f, socket, join(logs, `${f.key}-${transport}.log`));
        procs.set(f.key, p);
        await firstReply(socket, performance.now(), 30000, p);
        await warmUp(f, socket, p);
      }
      for (const conns of args.conns) {
        const byFilter = new Map<string, LoadResult[]>(FILTERS.map((f) => [f.key, []]));
        for (let run = 0; run < args.runs; run++) {
          for (const f of FILTERS) {
            const r = await runLoadProcess(["-s", sockets.get(f.key)!, "-c", String(conns), "--pid", String(procs.get(f.key)!.pid), ...common, ...f.loadArgs, "--label", `${f.key}/${transport}/${conns}`]);
            if (!r.ok) throw new Error(`${f.name} on ${transport} with ${conns} connections: ${r.errors.join("; ")}`);
            byFilter.get(f.key)!.push(r);
            log(`${transport.padEnd(4)} ${String(conns).padStart(2)} conns  ${f.key.padEnd(6)} run ${run + 1}: ${fmtRate(r.rate)} msgs/s, p99 ${ms(r.p99)} ms, CPU ${fmt(r.filterCpuMs, 3)} ms/msg`);
          }
        }
        for (const f of FILTERS) {
          const rs = byFilter.get(f.key)!;
          cells.push({
            transport,
            conns,
            filter: f.key,
            runs: rs,
            rate: median(rs.map((r) => r.rate)),
            p50: median(rs.map((r) => r.p50)),
            p99: median(rs.map((r) => r.p99)),
            max: median(rs.map((r) => r.max)),
            cpuMs: median(rs.map((r) => r.filterCpuMs ?? NaN)),
            hwmKb: Math.max(...rs.map((r) => r.filterHwmKb ?? 0)),
          });
        }
      }
      await Promise.all([...procs.values()].map((p) => p.stop()));
    }
    results.cells = cells;

    // ---- memory with idle connections (fresh processes): negotiated and past
    // CONNECT and HELO; and, harder, after one message each.
    const idle: Record<string, LoadResult> = {};
    if (args.idle > 0) {
      for (const messages of [0, 1]) {
        for (const f of FILTERS.filter((x) => x.key !== "nullnr")) {
          const socket = `unix:${join(tmp, `idle-${f.key}-${messages}.sock`)}`;
          const p = spawnFilter(f, socket, join(logs, `${f.key}-idle.log`));
          await firstReply(socket, performance.now(), 30000, p);
          const before = procMemKb(p.pid);
          const r = await runLoadProcess(["-s", socket, "--idle", String(args.idle), "--idle-messages", String(messages), "--pid", String(p.pid), ...f.loadArgs]);
          if (!r.ok) throw new Error(`${f.name} with ${args.idle} idle connections: ${r.errors.join("; ")}`);
          idle[`${f.key}${messages}`] = r;
          log(`${f.key}: ${r.idleConnections} idle connections (${messages} message(s) each), RSS ${fmt((r.filterRssKb ?? 0) / 1024, 1)} MB (fresh process: ${fmt(before.rss / 1024, 1)} MB), peak ${fmt((r.filterHwmKb ?? 0) / 1024, 1)} MB`);
          await p.stop();
        }
      }
    }
    results.idle = idle;

    // ---- start-up to the first answered option negotiation (bench/first-answer.py)
    const firstAnswer = async (mode: string[], cmd: string[], env: Record<string, string> = {}): Promise<number[]> => {
      const p = Bun.spawn(["python3", join(ROOT, "bench", "first-answer.py"), ...mode, "--", ...cmd], {
        cwd: ROOT, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe",
      });
      const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      if (code !== 0) throw new Error(`first-answer.py ${mode.join(" ")} ${cmd[0]}: ${err.trim()}`);
      return JSON.parse(out) as number[];
    };
    // The floor: a Bun program that only answers one frame on the activated socket.
    const floorSrc = join(tmp, "bun-floor.ts");
    writeFileSync(floorSrc, "Bun.listen({ fd: 3, socket: { data(s) { s.write(new Uint8Array([0, 0, 0, 1, 99])); } } } as never);\n");
    await sh([BUN, "build", floorSrc, "--compile", "--bytecode", "--outfile", join(tmp, "bun-floor")]);
    const startSock = join(tmp, "start.sock");
    const startup = {
      /** Socket activation: connected and OPTNEG sent before the start. */
      exota: await firstAnswer(["activate", "5"], [exotaBin], exotaEnv(`unix:${startSock}`)),
      bunFloor: await firstAnswer(["activate", "5"], [join(tmp, "bun-floor")]),
      /** Started, then connected to (retried every 0.2 ms) as a plain daemon. */
      exotaSpawned: await firstAnswer(["spawn", "5", startSock], [exotaBin], exotaEnv(`unix:${startSock}`)),
      null: await firstAnswer(["spawn", "5", startSock], FILTERS[0]!.start(`unix:${startSock}`).cmd),
      deno: args.deno ? await firstAnswer(["activate", "5"], denoCmd, exotaEnv(`unix:${startSock}`)) : [],
      denoSpawned: args.deno ? await firstAnswer(["spawn", "5", startSock], denoCmd, exotaEnv(`unix:${startSock}`)) : [],
    };
    log(`start-up to first answer (ms): ${Object.entries(startup).map(([k, v]) => `${k} ${v.join(", ")}`).join("; ")}`);
    results.startup = startup;

    // ---- the 1M-domain policy: load, lookups, reload under load
    let big: {
      domains: number; bytes: number; loadMs: number; rate: number; cpuMs: number; reload: LoadResult; reloadMs: number | undefined;
      baselineRate: number; baselineCpuMs: number; lookupNs: Record<string, { domains: number; ns: number }>;
    } | undefined;
    if (args.domains > 0) {
      const file = join(tmp, "policy-big.json");
      writeBigPolicy(file, args.domains);
      const bytes = Bun.file(file).size;
      log(`big policy: ${args.domains + DEFAULT_DOMAINS.length} domains, ${(bytes / 1e6).toFixed(0)} MB`);
      const socket = `unix:${join(tmp, "big.sock")}`;
      const f = FILTERS[2]!;
      const logFile = join(logs, "exota-big.log");
      const t0 = performance.now();
      const p = spawnFilter({ ...f, start: (s) => ({ cmd: [exotaBin], env: exotaEnv(s, file) }) }, socket, logFile);
      const loadMs = await firstReply(socket, t0, 60000, p);
      log(`big policy: spawn to first answer ${loadMs.toFixed(0)} ms`);
      await warmUp(f, socket, p);
      const tput = await runLoadProcess(["-s", socket, "-c", "8", "--pid", String(p.pid), ...common, ...f.loadArgs]);
      if (!tput.ok) throw new Error(`exota with the big policy: ${tput.errors.join("; ")}`);
      // One session sends messages back to back while the policy is reloaded (SIGHUP).
      const seconds = Math.max(4, Math.ceil((3 * loadMs) / 1000) + 2);
      const reload = await runLoadProcess(["-s", socket, "-c", "1", "--pid", String(p.pid), "-m", "0", "-r", "0.1", "-w", "0.5", "-d", String(seconds), "--hup-at", "1", ...f.loadArgs]);
      if (!reload.ok) throw new Error(`exota during a reload: ${reload.errors.join("; ")}`);
      await p.stop();
      const text = readFileSync(logFile, "utf8");
      const at = (re: RegExp) => {
        const m = re.exec(text);
        return m === null ? undefined : Date.parse(m[1]!);
      };
      const hup = at(/^(\S+) INFO .*SIGHUP: reloading/m);
      const done = at(/^(\S+) INFO .*policy reloaded from/m);
      const reloadMs = hup !== undefined && done !== undefined ? done - hup : undefined;
      if (done === undefined) throw new Error(`the reload did not finish within the run; see ${logFile}`);
      const baseline = cells.find((c) => c.transport === "unix" && c.conns === 8 && c.filter === "exota");
      // The lookup itself: random domains of a small, a tenth-size and the big policy.
      const tenth = join(tmp, "policy-tenth.json");
      writeBigPolicy(tenth, Math.ceil(args.domains / 10));
      const lk = Bun.spawn([BUN, join(ROOT, "bench", "lookup.ts"), policy, tenth, file], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
      const [lkOut, lkErr, lkCode] = await Promise.all([new Response(lk.stdout).text(), new Response(lk.stderr).text(), lk.exited]);
      if (lkCode !== 0) throw new Error(`bench/lookup.ts failed: ${lkErr}`);
      const lookupNs = JSON.parse(lkOut) as Record<string, { domains: number; ns: number }>;
      rmSync(tenth);
      big = {
        domains: args.domains + DEFAULT_DOMAINS.length, bytes, loadMs, rate: tput.rate, cpuMs: tput.filterCpuMs ?? NaN, reload, reloadMs,
        baselineRate: baseline?.rate ?? NaN, baselineCpuMs: baseline?.cpuMs ?? NaN, lookupNs,
      };
      log(`big policy: lookups ${Object.values(lookupNs).map((l) => `${l.domains} domains ${l.ns.toFixed(0)} ns`).join(", ")}`);
      log(`big policy: 8 conns ${fmtRate(tput.rate)} msgs/s; reload took ${fmt(reloadMs)} ms, max latency after SIGHUP ${ms(reload.maxAfterHup)} ms`);
      rmSync(file);
    }
    results.bigPolicy = big;

    // ---- the table
    const cell = (t: string, c: number, f: string) => cells.find((x) => x.transport === t && x.conns === c && x.filter === f);
    const out: string[] = [];
    out.push(`Machine: ${results.machine as string}`);
    out.push(`Command: npm run bench (bun bench/run.ts); median of ${args.runs} run(s) of ${args.duration} s per cell, ` +
      `${args.perConn} message(s) per connection, 10% reject-designed, ${new Date().toISOString().slice(0, 10)}`);
    out.push("");
    out.push("| socket | conns | filter | msgs/s | × null | p50 ms | p99 ms | max ms | CPU ms/msg | peak RSS MB |");
    out.push("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    const names: Record<string, string> = { null: "C null filter", nullnr: "C null, NR_HDR", exota: "**exota-milter**", deno: "exota-milter, Deno" };
    for (const t of args.transports) {
      for (const c of args.conns) {
        const base = cell(t, c, "null");
        for (const f of ["null", "nullnr", "exota", "deno"]) {
          const x = cell(t, c, f);
          if (x === undefined) continue;
          out.push(`| ${t} | ${c} | ${names[f]} | ${fmtRate(x.rate)} | ${base ? (x.rate / base.rate).toFixed(2) : "-"} | ${ms(x.p50)} | ${ms(x.p99)} | ${ms(x.max)} | ${fmt(x.cpuMs, 3)} | ${fmt(x.hwmKb / 1024, 1)} |`);
        }
      }
    }
    out.push("");
    // Goals.
    const goals: Array<[string, string, string, boolean | undefined]> = [];
    for (const t of args.transports) {
      for (const c of args.conns.filter((n) => n >= 8)) {
        const e = cell(t, c, "exota"), n = cell(t, c, "null");
        if (e && n) {
          const need = t === "unix" ? 2 : 1;
          goals.push([`throughput, ${t}, ${c} conns`, `>= ${need}.0 × null`, `${(e.rate / n.rate).toFixed(2)} × (${fmtRate(e.rate)} vs ${fmtRate(n.rate)})`, e.rate >= need * n.rate]);
        }
      }
    }
    const tcp1 = cell("tcp", 1, "exota");
    if (tcp1) goals.push(["no per-round-trip stall, tcp, 1 conn", "p99 far below 40 ms", `${fmtRate(tcp1.rate)} msgs/s, p99 ${ms(tcp1.p99)} ms (null: ${fmtRate(cell("tcp", 1, "null")?.rate ?? NaN)} msgs/s)`, tcp1.p99 < 10]);
    for (const t of args.transports) {
      for (const c of args.conns) {
        const e = cell(t, c, "exota"), n = cell(t, c, "null");
        if (e && n) goals.push([`p99 latency, ${t}, ${c} conns`, "<= null's", `${ms(e.p99)} vs ${ms(n.p99)} ms`, e.p99 <= n.p99]);
      }
    }
    // Deno: no goal but this one; its figures are in the table.
    const denoTcp1 = cell("tcp", 1, "deno");
    if (denoTcp1) goals.push(["Deno: no per-round-trip stall, tcp, 1 conn", "p99 far below 40 ms", `${fmtRate(denoTcp1.rate)} msgs/s, p99 ${ms(denoTcp1.p99)} ms`, denoTcp1.p99 < 10]);
    const exotaCells = cells.filter((x) => x.filter === "exota" && x.conns >= 8);
    if (exotaCells.length > 0) {
      const worst = Math.max(...exotaCells.map((x) => x.cpuMs));
      goals.push(["CPU per message (8 and 64 conns, worst cell)", "<= 0.15 ms", `${fmt(worst, 3)} ms`, worst <= 0.15]);
    }
    for (const messages of [0, 1]) {
      const e = idle[`exota${messages}`], n = idle[`null${messages}`];
      if (e === undefined) continue;
      const mb = (e.filterHwmKb ?? 0) / 1024;
      const what = messages === 0 ? "negotiated, after CONNECT and HELO" : "each after one message";
      goals.push([`peak RSS, ${args.idle} idle connections (${what})`, "<= 64 MB", `${fmt(mb, 1)} MB (C null: ${fmt((n?.filterHwmKb ?? 0) / 1024, 1)} MB)`, mb <= 64]);
    }
    {
      const s = median(startup.exota);
      goals.push([
        "start to first answered connection, socket activation (median of 5)",
        "<= 30 ms",
        `${fmt(s, 1)} ms (a Bun program that only answers: ${fmt(median(startup.bunFloor), 1)} ms; started before connecting: exota ${fmt(median(startup.exotaSpawned), 1)}, C null ${fmt(median(startup.null), 1)} ms)`,
        s <= 30,
      ]);
    }
    if (args.deno) {
      const d = idle.deno0, d1 = idle.deno1;
      goals.push([
        "Deno: peak RSS, idle connections; start to first answer",
        "-",
        `${fmt((d?.filterHwmKb ?? NaN) / 1024, 1)} MB (after one message each: ${fmt((d1?.filterHwmKb ?? NaN) / 1024, 1)} MB); ` +
        `${fmt(median(startup.deno), 1)} ms socket-activated, ${fmt(median(startup.denoSpawned), 1)} ms started before connecting`,
        undefined,
      ]);
    }
    if (big) {
      goals.push([`${big.domains.toLocaleString("en-US")}-domain policy (${(big.bytes / 1e6).toFixed(0)} MB): start to first answer`, "<= 3 s", `${(big.loadMs / 1000).toFixed(2)} s`, big.loadMs <= 3000]);
      const [small, tenth, full] = Object.values(big.lookupNs);
      goals.push([
        "lookup O(1): ns per lookup, random domains",
        "flat in the size",
        `${small!.ns.toFixed(0)} / ${tenth!.ns.toFixed(0)} / ${full!.ns.toFixed(0)} ns with ${small!.domains.toLocaleString("en-US")} / ${tenth!.domains.toLocaleString("en-US")} / ${full!.domains.toLocaleString("en-US")} domains (the rise: cache misses in a table bigger than the CPU's caches)`,
        full!.ns <= 2 * tenth!.ns,
      ]);
      goals.push([
        "the same filter with the big policy: unix, 8 conns",
        "-",
        `${fmtRate(big.rate)} vs ${fmtRate(big.baselineRate)} msgs/s, CPU ${fmt(big.cpuMs, 3)} vs ${fmt(big.baselineCpuMs, 3)} ms/msg (one run)`,
        undefined,
      ]);
      const pause = big.reload.maxAfterHup ?? NaN;
      goals.push(["reload (SIGHUP) of it under load: max latency", "<= 50 ms", `${ms(pause)} ms (reload took ${fmt(big.reloadMs)} ms; p99 ${ms(big.reload.p99)} ms)`, pause <= 50]);
    }
    if (cross.length > 0) {
      out.push("Generator cross-check (unix socket, median of the runs, both writing a message's frames in one batch:", "bench/load.ts --one-write, as the C miltload does):", "", ...cross, "");
    }
    out.push("| goal | target | measured | met |");
    out.push("| --- | --- | --- | --- |");
    for (const [g, target, measured, met] of goals) out.push(`| ${g} | ${target} | ${measured} | ${met === undefined ? "-" : met ? "yes" : "**no**"} |`);
    out.push("");
    results.loadAtEnd = loadAverage();
    out.push(`Total bench time: ${((performance.now() - tBench) / 1000).toFixed(0)} s; load average (1, 5, 15 min) at start ${results.loadAtStart as string}, at end ${results.loadAtEnd as string}`);
    results.goals = goals;
    console.log(out.join("\n"));
    if (args.json !== undefined) writeFileSync(args.json, JSON.stringify(results, null, 2));
    return 0;
  } finally {
    await Promise.all(started.map((p) => p.stop()));
    if (!args.keep) rmSync(tmp, { recursive: true, force: true });
    else log(`kept ${tmp}`);
  }
}

main().then((code) => process.exit(code), async (e: Error) => {
  console.error(`bench: ${e.message}`);
  await Promise.all(started.map((p) => p.stop()));
  process.exit(1);
});
