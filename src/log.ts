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

/**
 * All of `text` to fd 2 with write(2), as process.stderr does for files and
 * pipes on Linux, without its stream (whose set-up costs ~7 ms of start-up,
 * and whose error event on a full disk or a vanished reader would end the
 * process). Logging never takes mail down: what a failing fd refuses
 * (ENOSPC, EPIPE, EIO) is dropped and counted. What a full non-blocking fd
 * refuses (EAGAIN) waits, up to BACKLOG_MAX bytes, and is retried shortly.
 */
function writeStderr(text: string): void {
  let bytes = encoder.encode(text);
  if (backlog !== undefined) {
    if (backlog.length + bytes.length > BACKLOG_MAX) return drop(bytes);
    const all = new Uint8Array(backlog.length + bytes.length);
    all.set(backlog);
    all.set(bytes, backlog.length);
    bytes = all;
    backlog = undefined;
  }
  let done = 0;
  try {
    while (done < bytes.length) done += writeSync(2, bytes, done);
  } catch (e) {
    const rest = bytes.subarray(done);
    if ((e as { code?: string }).code !== "EAGAIN") return drop(rest);
    backlog = rest;
    if (retry === undefined) {
      retry = setTimeout(() => {
        retry = undefined;
        if (backlog !== undefined) writeStderr("");
      }, 10);
      retry.unref?.();
    }
  }
}
const BACKLOG_MAX = 1 << 20;
let backlog: Uint8Array | undefined;
let retry: ReturnType<typeof setTimeout> | undefined;
const encoder = new TextEncoder();

/** Lines standard error did not take (a line cut short counts). */
let dropped = 0;
function drop(bytes: Uint8Array): void {
  for (const b of bytes) if (b === 10) dropped++;
}

/** How many log lines were dropped so far, for the metrics. */
export function droppedLogLines(): number {
  return dropped;
}

/**
 * Lines wait for the end of the event-loop turn and leave in one write(2):
 * under load the decisions of every connection served in one turn share it
 * (a write per line cost as much CPU as the reply to the MTA). Warnings and
 * worse, and the exit, flush at once, so nothing is lost or reordered when
 * the process stops.
 */
class LineBuffer {
  #pending = "";
  #scheduled = false;
  readonly flush = (): void => {
    this.#scheduled = false;
    if (this.#pending === "") return;
    const text = this.#pending;
    this.#pending = "";
    writeStderr(text);
  };
  add(line: string, urgent: boolean): void {
    this.#pending += line;
    if (urgent) this.flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.flush);
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
