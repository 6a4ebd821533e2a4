/**
 * Logging: LogTape, one line per record on standard error, with the record's
 * properties as key=value pairs (conn=, qid=, ...).
 * @module
 */
import { configureSync, getLogger, type Logger, type LogRecord } from "@logtape/logtape";
import process from "node:process";
import type { LogLevel } from "./config.ts";

const LEVEL_NAMES: Record<string, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO",
  warning: "WARNING",
  error: "ERROR",
  fatal: "FATAL",
};

function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : v instanceof Error ? (v.stack ?? v.message) : JSON.stringify(v) ?? String(v);
  return /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s);
}

export function formatRecord(name: string, record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : formatValue(part);
  }
  let line = `${new Date(record.timestamp).toISOString()} ${LEVEL_NAMES[record.level]} ${name}: ${message}`;
  // Properties already shown in the message are not repeated.
  const raw = typeof record.rawMessage === "string" ? record.rawMessage : "";
  for (const [k, v] of Object.entries(record.properties)) {
    if (v !== undefined && !raw.includes(`{${k}}`)) line += ` ${k}=${formatValue(v)}`;
  }
  return line + "\n";
}

export function setupLogging(name: string, level: LogLevel): void {
  configureSync({
    reset: true,
    sinks: { stderr: (record: LogRecord) => void process.stderr.write(formatRecord(name, record)) },
    loggers: [
      { category: ["exota-milter"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

export function logger(...category: string[]): Logger {
  return getLogger(["exota-milter", ...category]);
}
