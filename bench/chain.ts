/**
 * The benchmark of issue 18: what exota-milter costs where the postmaster
 * feels it, in the whole Postfix chain of tests/e2e:
 *
 *   smtp-source (Debian's postfix package; one DKIM-signed Exchange Online
 *   style message per SMTP session) -> private Postfix 3.x smtpd
 *   -> OpenDKIM (verify) -> exota-milter -> Postfix smtp -> smtp-sink
 *
 *   npm run bench:chain                (= bun bench/chain.ts; as root)
 *   bun bench/chain.ts --help
 *
 * Rows, each one smtpd listener of the same private Postfix: no milter,
 * OpenDKIM only, + exota-milter on a unix socket, + exota-milter on TCP
 * (+ the Python original on TCP with --original). Each row runs at 1, 8 and
 * 32 connections, `--repeats` times, the row order reversed every other
 * repeat (the machine is shared); the median counts. Every message must
 * arrive at smtp-sink with the verdict the row stands for (OpenDKIM's
 * dkim=pass, exota-milter's header); rejects are counted from Postfix's log.
 *
 * Figures: messages/s (smtp-source's wall time), median and p99 SMTP session
 * time (smtpd's "connect from" to "disconnect from" in Postfix's log, which
 * has microseconds), CPU per message of each process group (Postfix: master,
 * its children and its reaped children; OpenDKIM; the milter), from
 * /proc/PID/stat, taken once every message of the run has been delivered.
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { connect } from "node:net";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { buildMessage, Chain, EXOTA, exotaEnv, OPENDKIM_AUTHSERVID, POLICY } from "../tests/e2e/chain.ts";
import { freePort, writePolicy } from "../tests/lib/milter-process.ts";
import { serviceEnvironment } from "../tests/lib/service-unit.ts";
import { DEFAULT_DOMAINS, DEFAULTS as LOAD_DEFAULTS, policyJson, runLoad } from "./load.ts";

const ROOT = resolve(import.meta.dir, "..");
const SMTP_SOURCE = "/usr/sbin/smtp-source";
const STRACE = "/usr/bin/strace";
const HELO = "mail-am9pr01.outbound.protection.outlook.com";

const HELP = `usage: bun bench/chain.ts [options]        (as root: it starts a private Postfix)
  --conns LIST      SMTP connections in parallel (default 1,8,32)
  --messages N      messages per run (default 600)
  --repeats N       runs per cell, row order reversed every other repeat; the median counts (default 3)
  --warmup N        messages through each milter row before measuring (default 1500)
  --jit-warmup N    messages sent straight to each Bun-based milter first, at full speed, one per
                    connection (default 20000): Bun's JIT finishes compiling the message path only
                    after ~10,000 messages, which a relay has long behind it
  --rows LIST       none,opendkim,lean,bunlean,unix,tcp (default all)
  --original CMD    also a row with the Python original (a command line; it gets the same
                    MILTER_* environment and MILTER_SOCKET=inet:PORT@127.0.0.1)
  --env NAME=VALUE  more environment for exota-milter (repeatable), e.g. MIMALLOC_PURGE_DELAY=1000
  --json FILE       also write every figure as JSON
  --no-build        use dist/exota-milter as it is`;

type RowKey = "none" | "opendkim" | "lean" | "bunlean" | "unix" | "tcp" | "original";
const ROW_NAMES: Record<RowKey, string> = {
  none: "Postfix, no milter",
  opendkim: "Postfix + OpenDKIM",
  lean: "+ C lean filter, unix",
  bunlean: "+ Bun lean filter, unix",
  unix: "+ exota-milter, unix",
  tcp: "+ exota-milter, TCP",
  original: "+ Python original, TCP",
};

interface Args {
  conns: number[];
  messages: number;
  repeats: number;
  warmup: number;
  jitWarmup: number;
  rows: RowKey[];
  original: string | undefined;
  json: string | undefined;
  env: Record<string, string>;
  build: boolean;
}

function parse(): Args {
  const { values: a } = parseArgs({
    args: process.argv.slice(2),
    options: {
      conns: { type: "string" },
      messages: { type: "string" },
      repeats: { type: "string" },
      warmup: { type: "string" },
      "jit-warmup": { type: "string" },
      rows: { type: "string" },
      original: { type: "string" },
      json: { type: "string" },
      env: { type: "string", multiple: true },
      "no-build": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (a.help) {
    console.log(HELP);
    process.exit(0);
  }
  const rows = (a.rows ?? "none,opendkim,lean,bunlean,unix,tcp").split(",").map((r) => {
    if (!["none", "opendkim", "lean", "bunlean", "unix", "tcp"].includes(r)) throw new Error(`--rows: ${r}`);
    return r as RowKey;
  });
  if (a.original !== undefined) rows.push("original");
  return {
    conns: (a.conns ?? "1,8,32").split(",").map(Number),
    messages: Number(a.messages ?? 600),
    repeats: Number(a.repeats ?? 3),
    warmup: Number(a.warmup ?? 1500),
    jitWarmup: Number(a["jit-warmup"] ?? 20000),
    rows,
    original: a.original,
    json: a.json,
    env: Object.fromEntries((a.env ?? []).map((kv) => {
      const i = kv.indexOf("=");
      if (i <= 0) throw new Error(`--env: ${kv} is not NAME=VALUE`);
      return [kv.slice(0, i), kv.slice(i + 1)];
    })),
    build: !(a["no-build"] ?? false),
  };
}

const log = (line: string) => process.stderr.write(`bench:chain: ${line}\n`);
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const percentile = (sorted: readonly number[], p: number) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

// ------------------------------------------------------------------ /proc

/** utime+stime and cutime+cstime (reaped children) of a process in ticks; undefined when gone. */
function procTicks(pid: number): { self: number; children: number; ppid: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { ppid: Number(f[1]), self: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) };
  } catch {
    return undefined;
  }
}

const TICK_MS = 10; // USER_HZ = 100 on Linux

/**
 * CPU ms of Postfix so far: the master, its live children and the children it
 * has reaped (an smtpd that exits meanwhile moves from the one to the other).
 */
function postfixCpuMs(master: number): number {
  const m = procTicks(master);
  if (m === undefined) throw new Error("the Postfix master is gone");
  let ticks = m.self + m.children;
  for (const name of readdirSync("/proc")) {
    const pid = Number(name);
    if (!(pid > 0) || pid === master) continue;
    const p = procTicks(pid);
    if (p !== undefined && p.ppid === master) ticks += p.self;
  }
  return ticks * TICK_MS;
}

const cpuMs = (pid: number | undefined) => pid === undefined ? 0 : (procTicks(pid)?.self ?? 0) * TICK_MS;

// -------------------------------------------------------- Postfix's log

/** Reads what Postfix logged since `offset`. */
function logSince(file: string, offset: number): { text: string; end: number } {
  const size = statSync(file).size;
  if (size <= offset) return { text: "", end: offset };
  const buf = Buffer.alloc(size - offset);
  const fd = openSync(file, "r");
  try {
    readSync(fd, buf, 0, buf.length, offset);
  } finally {
    closeSync(fd);
  }
  return { text: buf.toString("utf8"), end: size };
}

/** What one route's smtpd logged: sessions that carried a message, and the messages its milters refused. */
function sessions(text: string, route: string): { sessions: number; rejects: number; tempfails: number } {
  let sessions = 0, rejects = 0, tempfails = 0;
  const tag = `postfix/${route}/smtpd[`;
  for (const line of text.split("\n")) {
    if (!line.includes(tag)) continue;
    // " data=": not the chain's own "is it up?" connects.
    if (line.includes("]: disconnect from ") && line.includes(" data=")) sessions++;
    else if (line.includes("milter-reject: END-OF-MESSAGE")) {
      if (/: 4\d\d /.test(line.slice(line.indexOf("END-OF-MESSAGE")))) tempfails++;
      else rejects++;
    }
  }
  return { sessions, rejects, tempfails };
}

// ------------------------------------------------------------------ main

interface Run {
  row: RowKey;
  conns: number;
  repeat: number;
  messages: number;
  seconds: number;
  rate: number;
  p50: number;
  p99: number;
  cpu: { postfix: number; opendkim: number; milter: number };
}

/**
 * Runs smtp-source under strace, which stops it only at connect(2) and
 * close(2) (seccomp-bpf): session time = connect to close of its socket, in
 * microseconds (smtp-source reports no times; Postfix logs whole seconds).
 * Resolves with the session times in ms.
 */
async function smtpSource(port: number, conns: number, messages: number, file: string, trace: string): Promise<number[]> {
  // -A: go on after a reject (counted from Postfix's log); no -d: one message per session.
  const source = [SMTP_SOURCE, "-A", "-s", String(conns), "-m", String(messages), "-M", HELO, "-f", "alice@tenant.example", "-t", "bob@dest.example", "-F", file, `127.0.0.1:${port}`];
  await new Promise<void>((res, rej) => {
    const p = spawn(STRACE, ["-f", "--seccomp-bpf", "-ttt", "-e", "trace=connect,close", "-o", trace, ...source], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    p.stderr.on("data", (d) => (err += d));
    p.once("error", rej);
    p.once("exit", (code) => code === 0 ? res() : rej(new Error(`smtp-source exited ${code}: ${err}`)));
  });
  const open = new Map<string, number>();
  const times: number[] = [];
  for (const m of readFileSync(trace, "utf8").matchAll(/^\S+\s+(\d+\.\d+) (connect|close)\((\d+)/gm)) {
    const t = Number(m[1]) * 1000;
    if (m[2] === "connect") open.set(m[3]!, t);
    else {
      const t0 = open.get(m[3]!);
      if (t0 !== undefined) times.push(t - t0);
      open.delete(m[3]!);
    }
  }
  return times;
}

async function main(): Promise<number> {
  const args = parse();
  if (process.getuid?.() !== 0) throw new Error("run as root: the bench starts a private Postfix (postfix start)");
  for (const tool of [SMTP_SOURCE, STRACE]) if (!existsSync(tool)) throw new Error(`no ${tool}: sudo ./scripts/bench-deps.sh`);
  const tBench = performance.now();
  if (args.build) {
    log("building dist/exota-milter");
    const b = Bun.spawnSync([process.execPath, "build.ts"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (b.exitCode !== 0) throw new Error(`build failed:\n${b.stdout}${b.stderr}`);
  }
  log("setting up the chain (keys, certificates, OpenDKIM, smtp-sink)");
  const chain = await Chain.create();
  let original: ChildProcess | undefined;
  const leans: ChildProcess[] = [];
  const stopAll = async () => {
    await Promise.all([original, ...leans].map(async (child) => {
      if (child === undefined || child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      // libmilter filters take seconds to exit on SIGTERM.
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }));
    await chain.stop();
  };
  process.once("SIGINT", () => void stopAll().finally(() => process.exit(130)));
  try {
    // A directory of its own: exota-milter watches the policy's directory, and Postfix's log
    // beside it would wake the watch with every line (measured: most of its CPU per message).
    const policyDir = join(chain.dir, "policy");
    mkdirSync(policyDir);
    // With the load generator's domains too, so that the direct warm-up below is accepted, as the chain's mail is.
    const policy = writePolicy({ ...POLICY, ...JSON.parse(policyJson(DEFAULT_DOMAINS)) }, policyDir);
    // smtp-source speaks no TLS: the loopback client is on the x509 allow-list (the default), every other check on.
    // As the shipped service unit runs it (its Environment= lines); the lean filters get them too.
    const unitEnv = serviceEnvironment();
    const env = (socket: string) =>
      exotaEnv({
        ...unitEnv,
        MILTER_POLICY_FILE: policy,
        MILTER_SOCKET: socket,
        MILTER_SOCKET_MODE: "0666",
        MILTER_X509_IP_WHITELIST: "127.0.0.1,::1",
        LOG_LEVEL: "info",
        ...args.env,
      });
    const milters = new Map<RowKey, { child: ChildProcess }>();
    const routes: Record<string, string[]> = {};
    /** The socket of each Bun-based milter row, as bench/load.ts names it. */
    const direct = new Map<RowKey, string>();
    for (const row of args.rows) {
      if (row === "none") routes[row] = [];
      else if (row === "opendkim") routes[row] = ["opendkim"];
      else if (row === "lean" || row === "bunlean") {
        const sock = join(chain.dir, `${row}.sock`);
        const child = await startLean(row === "lean" ? buildLeanC(chain.dir) : buildLeanBun(chain.dir), sock, unitEnv);
        leans.push(child);
        milters.set(row, { child });
        routes[row] = ["opendkim", `unix:${sock}`];
        if (row === "bunlean") direct.set(row, `unix:${sock}`);
      } else if (row === "unix") {
        const sock = join(chain.dir, "exota.sock");
        milters.set(row, await chain.startMilter(env(`unix:${sock}`)));
        routes[row] = ["opendkim", `unix:${sock}`];
        direct.set(row, `unix:${sock}`);
      } else {
        const port = await freePort();
        const e = env(`inet:${port}@127.0.0.1`);
        if (row === "tcp") {
          milters.set(row, await chain.startMilter(e));
          direct.set(row, `inet:${port}@127.0.0.1`);
        }
        else milters.set(row, { child: original = await startOriginal(args.original!, e, port) });
        routes[row] = ["opendkim", `inet:127.0.0.1:${port}`];
      }
    }
    // in_flow_delay (1 s) stalls a fast row at 32 connections: the bench measures the milters, not Postfix's brake.
    await chain.startPostfix({ routes, main: { in_flow_delay: "0" } });
    const master = chain.masterPid();
    if (master === undefined) throw new Error("no Postfix master PID");
    const logFile = join(chain.dir, "postfix.log");

    const message = await chain.sign(buildMessage({ from: "Alice <alice@tenant.example>" }), "tenant.example");
    const file = join(chain.dir, "bench.eml");
    writeFileSync(file, message.text);
    const delivers = (row: RowKey, raw: string): boolean => {
      if (row === "none") return true;
      const dkim = new RegExp(`^Authentication-Results: ${OPENDKIM_AUTHSERVID.replaceAll(".", "\\.")};\\s+dkim=pass`, "m").test(raw);
      if (row === "opendkim" || row === "lean" || row === "bunlean") return dkim;
      return dkim && new RegExp(`^${EXOTA}: [^\\n]*\\n\\s+auth=pass 5322_from_domain=tenant\\.example dkim=True dkim_aligned=True`, "m").test(raw);
    };

    /** One run: sends, waits for every accepted message at the sink, checks each. */
    const run = async (row: RowKey, conns: number, messages: number, repeat: number): Promise<Run> => {
      const milterPid = milters.get(row)?.child.pid;
      chain.takeDelivered();
      const offset = statSync(logFile).size;
      const cpu0 = { postfix: postfixCpuMs(master), opendkim: cpuMs(chain.opendkimPid), milter: cpuMs(milterPid) };
      const t0 = performance.now();
      const times = (await smtpSource(chain.port(row), conns, messages, file, join(chain.dir, "trace"))).sort((a, b) => a - b);
      const seconds = (performance.now() - t0) / 1000;
      // Delivery continues after the last session: wait for it, and for smtpd's last log lines.
      let delivered: string[] = [];
      let s = sessions("", row);
      const until = performance.now() + 60_000;
      for (;;) {
        delivered = delivered.concat(chain.takeDelivered());
        s = sessions(logSince(logFile, offset).text, row);
        if (delivered.length + s.rejects + s.tempfails >= messages && s.sessions >= messages) break;
        if (performance.now() > until) break;
        await Bun.sleep(20);
      }
      const cpu1 = { postfix: postfixCpuMs(master), opendkim: cpuMs(chain.opendkimPid), milter: cpuMs(milterPid) };
      const bad = delivered.filter((raw) => !delivers(row, raw)).length;
      if (delivered.length !== messages || s.rejects + s.tempfails > 0 || bad > 0 || s.sessions !== messages || times.length !== messages) {
        throw new Error(
          `${row}, ${conns} conns: ${messages} sent, ${delivered.length} delivered (${bad} without the expected verdict), ` +
            `${s.rejects} rejected, ${s.tempfails} tempfailed, ${s.sessions} sessions logged by Postfix, ${times.length} traced`,
        );
      }
      const per = (a: number, b: number) => (b - a) / messages;
      return {
        row, conns, repeat, messages, seconds,
        rate: messages / seconds,
        p50: percentile(times, 50),
        p99: percentile(times, 99),
        cpu: { postfix: per(cpu0.postfix, cpu1.postfix), opendkim: per(cpu0.opendkim, cpu1.opendkim), milter: per(cpu0.milter, cpu1.milter) },
      };
    };

    // A milter runs for weeks: Bun's JIT has long compiled the message path (~10,000 messages), which at
    // the chain's ~150 messages/s would take minutes per row; the load generator does it in seconds.
    for (const [row, socket] of direct) {
      if (args.jitWarmup <= 0) break;
      log(`warming up ${row}'s JIT with ${args.jitWarmup} messages straight to its socket`);
      const r = await runLoad({
        ...LOAD_DEFAULTS, socket, concurrency: 8, perConn: 1, messages: args.jitWarmup, warmup: 0, quiet: true,
        authservId: OPENDKIM_AUTHSERVID,
        expect: row === "bunlean" ? "continue" : "policy",
        expectHeader: row === "bunlean" ? undefined : EXOTA,
      });
      if (!r.ok) throw new Error(`the JIT warm-up of ${row} failed: ${r.errors.join("; ")}`);
    }
    // Then each row through the chain (OpenDKIM's and Postfix's caches too) before measuring.
    for (const row of args.rows) {
      if (args.warmup <= 0 || row === "none") continue;
      log(`warming up ${row} with ${args.warmup} messages`);
      await run(row, 8, args.warmup, -1);
    }

    const runs: Run[] = [];
    const loads: string[] = [];
    for (const conns of args.conns) {
      for (let repeat = 0; repeat < args.repeats; repeat++) {
        const order = repeat % 2 === 0 ? args.rows : [...args.rows].reverse();
        for (const row of order) {
          const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
          loads.push(load);
          const r = await run(row, conns, args.messages, repeat);
          runs.push(r);
          log(`${String(conns).padStart(2)} conns  ${row.padEnd(8)} run ${repeat + 1}: ${r.rate.toFixed(1)} msgs/s, session p50 ${r.p50.toFixed(1)} p99 ${r.p99.toFixed(1)} ms, ` +
            `CPU ms/msg Postfix ${r.cpu.postfix.toFixed(2)} OpenDKIM ${r.cpu.opendkim.toFixed(2)} milter ${r.cpu.milter.toFixed(2)} (load ${load})`);
        }
      }
    }

    // ---- the table
    const cell = (row: RowKey, conns: number) => {
      const rs = runs.filter((r) => r.row === row && r.conns === conns);
      return {
        rate: median(rs.map((r) => r.rate)),
        rates: rs.map((r) => r.rate),
        p50: median(rs.map((r) => r.p50)),
        p99: median(rs.map((r) => r.p99)),
        postfix: median(rs.map((r) => r.cpu.postfix)),
        opendkim: median(rs.map((r) => r.cpu.opendkim)),
        milter: median(rs.map((r) => r.cpu.milter)),
      };
    };
    const f1 = (x: number) => Number.isFinite(x) ? x.toFixed(1) : "-";
    const f2 = (x: number) => Number.isFinite(x) ? x.toFixed(2) : "-";
    const pct = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)}%`;
    const loadNums = loads.map((l) => Number(l.split(" ")[0]));
    const out: string[] = [];
    out.push(`Machine: ${navigator.hardwareConcurrency} CPUs, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, ${postfixVersion()}, Bun ${Bun.version}`);
    out.push(`Command: npm run bench:chain; ${args.messages} messages per run, one per SMTP session, median of ${args.repeats} runs (row order reversed every other run), ` +
      `${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; 1-minute load average during the runs ${Math.min(...loadNums).toFixed(2)}-${Math.max(...loadNums).toFixed(2)}`);
    out.push("");
    out.push("| row | conns | msgs/s (runs) | vs OpenDKIM only | session p50 ms | p99 ms | CPU ms/msg Postfix | OpenDKIM | milter |");
    out.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const conns of args.conns) {
      const base = args.rows.includes("opendkim") ? cell("opendkim", conns) : undefined;
      for (const row of args.rows) {
        const c = cell(row, conns);
        const vs = base === undefined || row === "none" || row === "opendkim" ? "" : `${pct((c.rate / base.rate - 1) * 100)}, p50 ${c.p50 - base.p50 >= 0 ? "+" : ""}${f1(c.p50 - base.p50)} ms`;
        out.push(`| ${ROW_NAMES[row]} | ${conns} | ${f1(c.rate)} (${c.rates.map((r) => r.toFixed(0)).join(", ")}) | ${vs} | ${f1(c.p50)} | ${f1(c.p99)} | ${f2(c.postfix)} | ${row === "none" ? "-" : f2(c.opendkim)} | ${milters.has(row) ? f2(c.milter) : "-"} |`);
      }
    }
    out.push("");
    // ---- the goals of issue 18
    const goals: Array<[string, string, string, boolean]> = [];
    if (args.rows.includes("opendkim")) {
      for (const [row, limit] of [["unix", 5], ["tcp", 8]] as const) {
        if (!args.rows.includes(row)) continue;
        for (const conns of args.conns.filter((c) => c === 8 || c === 32)) {
          const c = cell(row, conns), b = cell("opendkim", conns);
          const cost = (1 - c.rate / b.rate) * 100;
          goals.push([`throughput cost, ${row}, ${conns} conns`, `<= ${limit}%`, `${cost.toFixed(1)}% (${f1(c.rate)} vs ${f1(b.rate)} msgs/s)`, cost <= limit]);
        }
        if (args.conns.includes(8)) {
          const c = cell(row, 8), b = cell("opendkim", 8);
          goals.push([`added median session time, ${row}, 8 conns`, "<= +1 ms", `${f1(c.p50 - b.p50)} ms (${f1(c.p50)} vs ${f1(b.p50)} ms)`, c.p50 - b.p50 <= 1]);
        }
      }
    }
    for (const row of ["unix", "tcp"] as const) {
      if (!args.rows.includes(row)) continue;
      const worst = Math.max(...args.conns.map((c) => cell(row, c).milter));
      goals.push([`exota-milter CPU per message, ${row} (worst conns)`, "<= 0.3 ms", `${f2(worst)} ms`, worst <= 0.3]);
    }
    out.push("| goal | target | measured | met |");
    out.push("| --- | --- | --- | --- |");
    for (const [g, target, measured, met] of goals) out.push(`| ${g} | ${target} | ${measured} | ${met ? "yes" : "**no**"} |`);
    out.push("");
    out.push(`Total bench time: ${((performance.now() - tBench) / 1000).toFixed(0)} s`);
    console.log(out.join("\n"));
    if (args.json !== undefined) writeFileSync(args.json, JSON.stringify({ args, runs, loads, goals }, null, 2));
    return 0;
  } finally {
    await stopAll();
  }
}

function postfixVersion(): string {
  const r = Bun.spawnSync(["/usr/sbin/postconf", "-d", "-h", "mail_version"], { stdout: "pipe", stderr: "pipe" });
  return `Postfix ${r.stdout.toString().trim()}, ${opendkimVersion()}`;
}

function opendkimVersion(): string {
  const r = Bun.spawnSync(["/usr/sbin/opendkim", "-V"], { stdout: "pipe", stderr: "pipe" });
  return /OpenDKIM Filter v(\S+)/.exec(r.stdout.toString())?.[0]?.replace("Filter v", "") ?? "OpenDKIM";
}

/** bench/reference/lean-filter.c (the C bar of bench:cbar), built into `dir`. */
function buildLeanC(dir: string): string {
  const bin = join(dir, "lean-filter");
  const b = Bun.spawnSync(["gcc", "-O2", "-Wall", "-o", bin, join(ROOT, "bench/reference/lean-filter.c"), "-lmilter", "-lpthread"], { stdout: "pipe", stderr: "pipe" });
  if (b.exitCode !== 0) throw new Error(`building the C lean filter failed (sudo ./scripts/bench-deps.sh):\n${b.stderr}`);
  return bin;
}

/** bench/reference/lean-filter.ts (the same protocol on Bun: the runtime's floor), compiled into `dir` as exota-milter is. */
function buildLeanBun(dir: string): string {
  const bin = join(dir, "lean-filter-bun");
  const b = Bun.spawnSync([process.execPath, "build", "--compile", join(ROOT, "bench/reference/lean-filter.ts"), "--outfile", bin], { stdout: "pipe", stderr: "pipe" });
  if (b.exitCode !== 0) throw new Error(`building the Bun lean filter failed:\n${b.stderr}`);
  return bin;
}

/** A lean filter (`bin -p unix:SOCK`) started on a unix socket Postfix can write to, with `env` on top of ours. */
async function startLean(bin: string, sock: string, env: Record<string, string>): Promise<ChildProcess> {
  // libmilter and Bun make the socket with the umask: Postfix connects as user postfix.
  const child = spawn("/bin/sh", ["-c", 'umask 000 && exec "$0" -p "$1"', bin, `unix:${sock}`], { stdio: "ignore", env: { ...process.env, ...env } });
  const until = performance.now() + 30_000;
  while (!(await connectable({ path: sock }))) {
    if (child.exitCode !== null) throw new Error(`${bin} exited (${child.exitCode})`);
    if (performance.now() > until) throw new Error(`${bin} does not listen on ${sock} after 30 s`);
    await Bun.sleep(50);
  }
  return child;
}

/** The Python original (or any milter command) on a TCP port; ready once the port accepts. */
async function startOriginal(cmd: string, env: Record<string, string>, port: number): Promise<ChildProcess> {
  const parts = cmd.split(/\s+/).filter((p) => p !== "");
  const child = spawn(parts[0]!, parts.slice(1), { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, stdio: "ignore" });
  const until = performance.now() + 30_000;
  while (!(await connectable({ host: "127.0.0.1", port }))) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited (${child.exitCode})`);
    if (performance.now() > until) throw new Error(`${cmd}: nothing listens on 127.0.0.1:${port} after 30 s`);
    await Bun.sleep(50);
  }
  return child;
}

function connectable(target: { host: string; port: number } | { path: string }): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(target);
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

main().then((code) => process.exit(code), (e: Error) => {
  console.error(`bench:chain: ${e.message}`);
  process.exit(1);
});
