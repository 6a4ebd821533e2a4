/**
 * Starts the milter for integration tests and stops it again (by its own PID
 * only): the compiled dist/exota-milter, or with EXOTA_MILTER_RUNTIME=deno
 * `deno run` of the sources.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "../..");
/** The binary under test; EXOTA_MILTER_BINARY points elsewhere (e.g. a build of a mutated tree). */
export const BINARY = process.env.EXOTA_MILTER_BINARY ?? join(ROOT, "dist/exota-milter");

/** The runtime under test: the compiled Bun executable, or Deno running the sources. */
export const RUNTIME: "bun" | "deno" = process.env.EXOTA_MILTER_RUNTIME === "deno" ? "deno" : "bun";

/** README's narrow --allow-env for Deno: every variable the milter reads. */
export const DENO_ALLOW_ENV = "--allow-env=MILTER_*,LOG_LEVEL,LOG_FORMAT,JOURNAL_STREAM,LISTEN_FDS,LISTEN_PID,LISTEN_FDNAMES";
/** Whether it runs as root (a start-up warning). */
export const DENO_ALLOW_UID = "--allow-sys=uid";

/** `deno run` of the sources with these permission flags; the milter's arguments follow. */
export const denoCommand = (permissions: readonly string[]): string[] => [
  join(ROOT, "node_modules/.bin/deno"),
  "run",
  "--no-prompt",
  ...permissions,
  join(ROOT, "src/main.ts"),
];

/**
 * What runs the milter; its arguments follow. Under Deno with the whole
 * environment (so that mistyped MILTER_ names are found, as under Bun), and
 * net and read for any address and file, since the tests pick ports and
 * temporary files (tests/integration/deno.test.ts tries the narrow flags).
 */
export const MILTER_COMMAND: readonly string[] = RUNTIME === "deno"
  ? denoCommand(["--allow-env", DENO_ALLOW_UID, "--allow-net", "--allow-read", `--allow-write=${tmpdir()}`])
  : [BINARY];

export interface MilterProcess {
  readonly child: ChildProcess;
  /** Everything the milter wrote to stderr so far. */
  log(): string;
  /** Waits until a log line matches; `fromOffset` (a former `log().length`) ignores older output. */
  waitForLog(pattern: RegExp, timeoutMs?: number, fromOffset?: number): Promise<string>;
  /**
   * Stops the process (SIGTERM, SIGKILL after 5 s) and resolves with its exit
   * code (null when killed by a signal). `signal` = "SIGKILL" leaves
   * everything behind as a crash would (e.g. a stale unix socket file).
   */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface StartOptions {
  /** Environment variables on top of a clean base (PATH only). */
  readonly env?: Record<string, string>;
  readonly args?: readonly string[];
  /** Command to run instead of the binary itself (e.g. a socket-activation launcher). */
  readonly command?: readonly string[];
  /** Log line that means "ready"; default: the listening line. */
  readonly ready?: RegExp;
  /** How long to wait for it; default 10 s (an emulated CPU needs longer). */
  readonly readyTimeoutMs?: number;
}

/** A fresh temporary directory. */
export function tempDir(prefix = "exota-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Writes a policy object to a temporary file and returns its path. */
export function writePolicy(policy: unknown, dir = tempDir()): string {
  const path = join(dir, "policy.json");
  writeFileSync(path, typeof policy === "string" ? policy : JSON.stringify(policy, null, 2));
  return path;
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
/** Ports handed out by this process: the kernel may give a closed port out again. */
const handedOut = new Set<number>();

export const sleep = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));

/**
 * A loopback TCP port nobody listens on, and one this process has not handed
 * out before: two routes of the e2e chain once got the same port, and Postfix
 * served both with the first one's milters.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((res, rej) => {
      const s = createServer();
      s.once("error", rej);
      s.listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => res(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

export async function startMilter(opts: StartOptions = {}): Promise<MilterProcess> {
  const cmd = opts.command ?? MILTER_COMMAND;
  const child = spawn(cmd[0]!, [...cmd.slice(1), ...(opts.args ?? [])], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of waiters) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  let done = false;
  void exited.then(() => {
    done = true;
    for (const w of waiters) w();
  });

  const waitForLog = (pattern: RegExp, timeoutMs = 10_000, fromOffset = 0) =>
    new Promise<string>((res, rej) => {
      const check = () => {
        const m = pattern.exec(out.slice(fromOffset));
        if (m) {
          cleanup();
          res(m[0]);
        } else if (done) {
          cleanup();
          rej(new Error(`milter exited before logging ${pattern}; output:\n${out}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        rej(new Error(`timed out waiting for ${pattern}; output:\n${out}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  const proc: MilterProcess = {
    child,
    log: () => out,
    waitForLog,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (!done) child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  try {
    await waitForLog(opts.ready ?? / listening on /, opts.readyTimeoutMs);
  } catch (e) {
    // Nobody holds the process yet: left running, it would outlive the test (or the bench).
    await proc.stop("SIGKILL");
    throw e;
  }
  return proc;
}

/** Runs the milter to completion (for start-up errors, --help, --version). */
export function runMilter(
  args: readonly string[],
  env: Record<string, string> = {},
  command = MILTER_COMMAND,
): Promise<{ code: number | null; output: string }> {
  return new Promise((res) => {
    const child = spawn(command[0]!, [...command.slice(1), ...args], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      res({ code, output });
    });
  });
}
