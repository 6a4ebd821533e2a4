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

function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : v instanceof Error ? (v.stack ?? v.message) : JSON.stringify(v) ?? String(v);
  return /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s);
}

function renderMessage(record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : formatValue(part);
  }
  return message;
}

/** Message and the properties not already shown in it, as key=value. */
function textBody(name: string, record: LogRecord): string {
  let line = `${name}: ${renderMessage(record)}`;
  const raw = typeof record.rawMessage === "string" ? record.rawMessage : "";
  for (const [k, v] of Object.entries(record.properties)) {
    if (v !== undefined && !raw.includes(`{${k}}`)) line += ` ${k}=${formatValue(v)}`;
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
 * One write(2) per line on fd 2, as process.stderr does for files and pipes on
 * Linux, without its stream (whose set-up costs ~7 ms of start-up here).
 */
function writeStderr(line: string): void {
  try {
    writeSync(2, line);
  } catch {
    // A non-blocking fd that is full, or a closed one: let the stream cope.
    process.stderr.write(line);
  }
}

export function setupLogging(name: string, level: LogLevel, format: LogFormat = "text"): void {
  configureSync({
    reset: true,
    sinks: { stderr: (record: LogRecord) => writeStderr(formatRecord(format, name, record)) },
    loggers: [
      { category: ["exota-milter"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

export function logger(...category: string[]): Logger {
  return getLogger(["exota-milter", ...category]);
}
