/**
 * Logging: LogTape, one line per record on standard error. Three formats:
 * text (time stamp, level, message, key=value properties), journal (the
 * same with a syslog priority prefix `<6>` and no time stamp: journald adds
 * its own) and json (one object per line, for log shippers).
 * @module
 */
import { configureSync, getLogger, type Logger, type LogRecord } from "@logtape/logtape";
import { writeSync } from "node:fs";
import process from "node:process";
import type { LogFormat, LogLevel } from "./config.ts";

const LEVEL_NAMES: Record<string, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO",
  warning: "WARNING",
  error: "ERROR",
  fatal: "FATAL",
};

/** sd-daemon(3) / syslog priorities. */
const PRIORITY: Record<string, number> = { trace: 7, debug: 7, info: 6, warning: 4, error: 3, fatal: 2 };

// deno-lint-ignore no-control-regex
const PLAIN = /^[^\s"=\x00-\x1f\x7f]+$/;

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/g;
const escapeControl = (c: string) =>
  c === "\n" ? "\\n" : c === "\r" ? "\\r" : c === "\t" ? "\\t" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;

function formatValue(v: unknown): string {
  if (typeof v === "boolean" || typeof v === "number") return String(v);
  const s = typeof v === "string" ? v : v instanceof Error ? (v.stack ?? v.message) : JSON.stringify(v) ?? String(v);
  return PLAIN.test(s) ? s : JSON.stringify(s);
}

function renderMessage(record: LogRecord): string {
  const parts = record.message;
  if (parts.length === 1) return String(parts[0]);
  let message = "";
  for (let i = 0; i < parts.length; i++) message += i % 2 === 0 ? String(parts[i]) : formatValue(parts[i]);
  return message;
}

/**
 * Message and the properties not already shown in it, as key=value; a
 * control character anywhere (a MILTER_NAME or a queue id with a newline or
 * a terminal escape) is written as \n, \xNN: one record, one line.
 */
function textBody(name: string, record: LogRecord): string {
  return rawTextBody(name, record).replace(CONTROL, escapeControl);
}

function rawTextBody(name: string, record: LogRecord): string {
  let line = `${name}: ${renderMessage(record)}`;
  const raw = typeof record.rawMessage === "string" && record.rawMessage.includes("{") ? record.rawMessage : "";
  const props = record.properties;
  for (const k in props) {
    const v = props[k];
    if (v !== undefined && (raw === "" || !raw.includes(`{${k}}`))) line += ` ${k}=${formatValue(v)}`;
  }
  return line;
}

export function formatRecord(format: LogFormat, name: string, record: LogRecord): string {
  switch (format) {
    case "text":
      return `${new Date(record.timestamp).toISOString()} ${LEVEL_NAMES[record.level]} ${textBody(name, record)}\n`;
    case "journal":
      return `<${PRIORITY[record.level]}>${textBody(name, record)}\n`;
    case "json": {
      const props: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(record.properties)) props[k] = v instanceof Error ? v.message : v;
      return JSON.stringify({
        time: new Date(record.timestamp).toISOString(),
        level: record.level,
        name,
        message: renderMessage(record),
        ...props,
      }) + "\n";
    }
  }
}

/** write(2) of `bytes` from `offset`: how many it took, or a throw with the errno's `code`. */
export type WriteFd = (bytes: Uint8Array, offset: number) => number;

/**
 * All of each text to a file descriptor with write(2), as process.stderr
 * does for files and pipes on Linux, without its stream (whose set-up costs
 * ~7 ms of start-up, and whose error event on a full disk or a vanished
 * reader would end the process). Logging never takes mail down: what a
 * failing fd refuses (ENOSPC, EPIPE, EIO) is dropped and counted. What a
 * full non-blocking fd refuses (EAGAIN) waits, up to `max` bytes, and is
 * retried by `later` and by the next text.
 */
export class FdWriter {
  /** What waits after EAGAIN, in order from #head: chunks, so a retry while the fd stays full copies nothing. */
  #backlog: Uint8Array[] = [];
  #head = 0;
  #waiting = 0;
  #retrying = false;
  #dropped = 0;
  readonly #write: WriteFd;
  readonly #later: (retry: () => void) => void;
  readonly #max: number;

  constructor(write: WriteFd, later: (retry: () => void) => void, max = 1 << 20) {
    this.#write = write;
    this.#later = later;
    this.#max = max;
  }

  /** Lines the fd did not take (a line cut short counts). */
  get dropped(): number {
    return this.#dropped;
  }

  write(text: string): void {
    const bytes = encoder.encode(text);
    if (this.#waiting > 0) {
      if (this.#waiting + bytes.length > this.#max) return this.#drop(bytes);
      this.#backlog.push(bytes);
      this.#waiting += bytes.length;
      return this.#flush();
    }
    const done = this.#writeAll(bytes);
    if (done < bytes.length) {
      this.#backlog.push(bytes.subarray(done));
      this.#waiting = bytes.length - done;
      this.#retryLater();
    }
  }

  /** How much of `bytes` left before EAGAIN; what another error refuses is dropped (and counts as left). */
  #writeAll(bytes: Uint8Array): number {
    let done = 0;
    try {
      while (done < bytes.length) done += this.#write(bytes, done);
    } catch (e) {
      if ((e as { code?: string }).code === "EAGAIN") return done;
      this.#drop(bytes.subarray(done));
      return bytes.length;
    }
    return done;
  }

  #flush(): void {
    while (this.#head < this.#backlog.length) {
      const chunk = this.#backlog[this.#head]!;
      const done = this.#writeAll(chunk);
      this.#waiting -= done;
      if (done < chunk.length) {
        this.#backlog[this.#head] = chunk.subarray(done);
        return this.#retryLater();
      }
      this.#head++;
    }
    this.#backlog = [];
    this.#head = 0;
  }

  #retryLater(): void {
    if (this.#retrying) return;
    this.#retrying = true;
    this.#later(() => {
      this.#retrying = false;
      this.#flush();
    });
  }

  #drop(bytes: Uint8Array): void {
    for (const b of bytes) if (b === 10) this.#dropped++;
  }
}
const encoder = new TextEncoder();
const stderr = new FdWriter((bytes, offset) => writeSync(2, bytes, offset), (retry) => {
  const t = setTimeout(retry, 10);
  t.unref?.();
});

/** How many log lines were dropped so far, for the metrics. */
export function droppedLogLines(): number {
  return stderr.dropped;
}

/**
 * Lines wait up to FLUSH_MS (or FLUSH_CHARS) and leave in one write(2): at a
 * relay's pace, one message per SMTP session, a write per decision line was
 * ~6% of the milter's CPU per message (bench/load.ts --rate 100: 0.770 vs
 * 0.725 ms); under load the decisions of many connections share a write.
 * Each line keeps the time stamp of its event. Warnings and worse, and the
 * exit, flush at once, so nothing is lost or reordered when the process stops.
 */
const FLUSH_MS = 50;
/** Or sooner, once this many characters wait. */
const FLUSH_CHARS = 64 * 1024;
class LineBuffer {
  #pending = "";
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly flush = (): void => {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending === "") return;
    const text = this.#pending;
    this.#pending = "";
    stderr.write(text);
  };
  add(line: string, urgent: boolean): void {
    this.#pending += line;
    if (urgent || this.#pending.length >= FLUSH_CHARS) this.flush();
    else if (this.#timer === undefined) {
      this.#timer = setTimeout(this.flush, FLUSH_MS);
      // Unreferenced: a command that is done does not wait for it; the exit flushes.
      this.#timer.unref?.();
    }
  }
}
const lines = new LineBuffer();
process.on("exit", lines.flush);

/** A log message is a template: braces in a text of ours ({verify}) or of a message must be doubled to stay as they are. */
export const literal = (text: string): string => text.replaceAll("{", "{{").replaceAll("}", "}}");

/** Writes the lines still waiting; before writing to standard error directly. */
export const flushLogs: () => void = lines.flush;

const URGENT = new Set(["warning", "error", "fatal"]);

export function setupLogging(name: string, level: LogLevel, format: LogFormat = "text"): void {
  configureSync({
    reset: true,
    sinks: { stderr: (record: LogRecord) => lines.add(formatRecord(format, name, record), URGENT.has(record.level)) },
    loggers: [
      { category: ["exota-milter"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

export function logger(...category: string[]): Logger {
  return getLogger(["exota-milter", ...category]);
}
