/**
 * The command line: `run` (default) serves mail, `check` validates the
 * configuration and policy, `explain` decides a saved message step by step.
 * @module
 */
import process from "node:process";
import pkg from "../package.json" with { type: "json" };
import { check } from "./cli/check.ts";
import { explain } from "./cli/explain.ts";
import { helpText, loadConfig } from "./config.ts";
import { flushLogs, logger, setupLogging } from "./log.ts";
import { runDaemon } from "./server/daemon.ts";
import { openPolicy } from "./server/policy-provider.ts";

// Set by build.ts (--define); running from source says so.
declare const EXOTA_VERSION: string | undefined;
declare const EXOTA_TARGET: string | undefined;
declare const EXOTA_BUN_VERSION: string | undefined;
declare const EXOTA_DATE: string | undefined;
const VERSION = typeof EXOTA_VERSION === "string" ? EXOTA_VERSION : `${pkg.version}-dev`;
const TARGET = typeof EXOTA_TARGET === "string" ? EXOTA_TARGET : "source";
const RUNTIME = typeof EXOTA_BUN_VERSION === "string"
  ? `Bun ${EXOTA_BUN_VERSION}`
  : process.versions.bun !== undefined ? `Bun ${process.versions.bun}` : `Deno ${process.versions.deno}`;

function fail(message: string): never {
  flushLogs();
  process.stderr.write(`exota-milter: ${message}\n`);
  process.exit(1);
}

const print = (line: string) => void process.stdout.write(line + "\n");

const r = loadConfig(process.argv.slice(2), process.env, process.getuid?.());
if (!r.ok) fail(r.error);
switch (r.command) {
  case "help":
    print(helpText("exota-milter"));
    break;
  case "version":
    print(`exota-milter ${VERSION} (${TARGET}, ${RUNTIME})`);
    break;
  case "man": {
    const { manPage } = await import("./cli/manpage.ts");
    process.stdout.write(manPage(VERSION, typeof EXOTA_DATE === "string" ? EXOTA_DATE : new Date().toISOString().slice(0, 10)));
    break;
  }
  case "run":
    setupLogging(r.config.name, r.config.logLevel, r.config.logFormat);
    await runDaemon(r.config, VERSION, fail);
    break;
  case "check":
  case "explain": {
    // Only problems go to the log here; the answer goes to standard output.
    setupLogging(r.config.name, "warning", r.config.logFormat);
    const policy = await openPolicy(r.config, logger("policy"));
    if (typeof policy === "string") fail(`policy: ${policy}`);
    const code = r.command === "explain"
      ? await explain(r.config, r.explain, policy.lookup(), print).catch((e: Error) => fail(e.message))
      : await check(r.config, policy, print);
    await policy.close();
    process.exit(code);
  }
}
