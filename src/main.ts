/**
 * The command line: `run` (default) serves mail, `check` validates the
 * configuration and policy (`--postfix`: audits Postfix, `--verify-tenants`:
 * asks Microsoft), `explain` decides a saved message step by step,
 * `tenant-id` prints domains' tenant ids as Microsoft publishes them.
 * @module
 */
import process from "node:process";
import pkg from "../package.json" with { type: "json" };
import { type Config, helpText, loadConfig } from "./config.ts";
import { flushLogs, logger, setupLogging } from "./log.ts";
import { runDaemon } from "./server/daemon.ts";
import { openPolicy } from "./server/policy-provider.ts";
import { runtime } from "./server/runtime.ts";

// Set by build.ts (--define); running from source says so.
declare const EXOTA_VERSION: string | undefined;
declare const EXOTA_TARGET: string | undefined;
declare const EXOTA_BUN_VERSION: string | undefined;
declare const EXOTA_DATE: string | undefined;
const VERSION = typeof EXOTA_VERSION === "string" ? EXOTA_VERSION : `${pkg.version}-dev`;
const TARGET = typeof EXOTA_TARGET === "string" ? EXOTA_TARGET : "source";
const RUNTIME = typeof EXOTA_BUN_VERSION === "string" ? `Bun ${EXOTA_BUN_VERSION}` : runtime.name;

function fail(message: string): never {
  flushLogs();
  process.stderr.write(`exota-milter: ${message}\n`);
  process.exit(1);
}

const print = (line: string) => void process.stdout.write(line + "\n");

/** `check --verify-tenants`: every policy entry (file or directory) against Microsoft. */
async function checkTenants(config: Config, json: boolean): Promise<number> {
  const policy = await openPolicy(config, logger("policy"));
  if (typeof policy === "string") fail(`policy: ${policy}`);
  const listing = await policy.list();
  await policy.close();
  if (!listing.ok) fail(`policy: ${listing.error}`);
  const entries = listing.policies.map(([domain, r]) => ({ domain, tenantId: r.kind === "found" ? r.policy.tenantId : "" }));
  const { verifyTenants } = await import("./cli/tenant-id.ts");
  return verifyTenants(entries, config.tenantLookup, json, print);
}

/** Access a runtime granting it per resource (Deno) refused ends the command with its message, which names the flag. */
function refusal(e: unknown): never {
  if (runtime.isRefusal(e)) fail((e as Error).message);
  throw e;
}

let r: ReturnType<typeof loadConfig>;
try {
  r = loadConfig(process.argv.slice(2), process.env, process.getuid?.());
} catch (e) {
  refusal(e);
}
if (!r.ok) fail(r.error);
try {
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
    case "tenant-id": {
      // Loaded only here: the daemon's start-up does not pay for the commands' modules.
      const { tenantIdCommand } = await import("./cli/tenant-id.ts");
      process.exit(await tenantIdCommand(r.domains, r.config.tenantLookup, r.json, print));
      break;
    }
    case "check":
      if (r.check.postfix !== undefined || r.check.verifyTenants) {
        setupLogging(r.config.name, "warning", r.config.logFormat);
        let code = 0;
        if (r.check.postfix !== undefined) code = await (await import("./cli/postfix.ts")).checkPostfix(r.config, r.check.postfix.dir, r.check.json, print);
        if (r.check.verifyTenants) code = Math.max(code, await checkTenants(r.config, r.check.json));
        process.exit(code);
      }
    // falls through: the plain check of configuration and policy
    case "explain": {
      // Only problems go to the log here; the answer goes to standard output.
      setupLogging(r.config.name, "warning", r.config.logFormat);
      const policy = await openPolicy(r.config, logger("policy"));
      if (typeof policy === "string") fail(`policy: ${policy}`);
      // Loaded only here (check brings node:http and node:net): the daemon's start-up does not pay for them.
      const code = r.command === "explain"
        ? await (await import("./cli/explain.ts")).explain(r.config, r.explain, policy.lookup(), print).catch((e: Error) => fail(e.message))
        : await (await import("./cli/check.ts")).check(r.config, policy, print);
      await policy.close();
      process.exit(code);
    }
  }
} catch (e) {
  refusal(e);
}
