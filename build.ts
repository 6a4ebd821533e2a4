/**
 * Builds the executable, one file with the Bun runtime inside that needs
 * neither Bun nor node_modules on the relay host, and its man page:
 *
 *   bun build.ts            (npm run build)   dist/exota-milter for this machine, dist/exota-milter.8
 *
 * packaging/release.ts (npm run release) builds the release executables for
 * other targets with buildExecutable().
 */
import { $, type BunPlugin } from "bun";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import pkg from "./package.json" with { type: "json" };
import { manPage } from "./src/cli/manpage.ts";

const git = async (...args: string[]) => (await $`git ${args}`.cwd(import.meta.dir).nothrow().quiet()).stdout.toString().trim();

/** The commit built from; empty outside a git checkout. */
export const commit = await git("rev-parse", "--short=10", "HEAD");
const dirty = commit !== "" && (await git("status", "--porcelain", "--untracked-files=no")) !== "";
const tagged = commit !== "" && (await git("tag", "--points-at", "HEAD")).split("\n").includes(`v${pkg.version}`);

/**
 * package.json's version; a build of anything but the commit tagged
 * v<version> says which commit (and whether changed): 0.1.0+g1a2b3c4d5e.dirty.
 * Only [0-9A-Za-z.+~] and no "-", so that it is a Debian upstream version too.
 */
export const VERSION = commit === "" || (tagged && !dirty) ? pkg.version : `${pkg.version}+g${commit}${dirty ? ".dirty" : ""}`;

/** The commit's date (for the man page and the Debian changelog); SOURCE_DATE_EPOCH wins. */
export const DATE = process.env.SOURCE_DATE_EPOCH !== undefined
  ? new Date(Number(process.env.SOURCE_DATE_EPOCH) * 1000)
  : commit === ""
  ? new Date()
  : new Date(Number(await git("log", "-1", "--format=%ct")) * 1000);
const DAY = DATE.toISOString().slice(0, 10);

/**
 * LogTape's `#util` import picks its node:util-based inspect() under Bun; our
 * own formatter (src/log.ts) never calls it, and node:util costs ~4 ms of
 * start-up. Its portable JSON-based inspect() does the same job.
 */
const logtapePortableUtil: BunPlugin = {
  name: "logtape-portable-util",
  setup(build) {
    build.onResolve({ filter: /^#util$/ }, (args) =>
      args.importer.includes("/@logtape/logtape/") ? { path: args.importer.replace(/[^/]+$/, "util.js") } : undefined);
  },
};

/**
 * One executable. `target` undefined: this machine, with the Bun that runs
 * this script; any other target's runtime comes from the npm registry (or
 * Bun's cache). Never strip the result: that removes the embedded program.
 */
export async function buildExecutable(target: Bun.Build.CompileTarget | undefined, outfile: string): Promise<void> {
  const result = await Bun.build({
    entrypoints: [`${import.meta.dir}/src/main.ts`],
    // A daemon must not pick up .env or bunfig.toml from its working directory.
    compile: { outfile, autoloadDotenv: false, autoloadBunfig: false, ...(target !== undefined ? { target } : {}) },
    // splitting: modules imported dynamically (the LDAP client, node:http for
    // metrics, the man page) stay out of start-up unless used: ~12 MB less memory.
    splitting: true,
    // With ESM: --bytecode alone means CommonJS. ~20 ms instead of ~45 ms to the first answer.
    bytecode: true,
    format: "esm",
    minify: { syntax: true, whitespace: true },
    define: {
      EXOTA_VERSION: JSON.stringify(VERSION),
      EXOTA_TARGET: JSON.stringify(target ?? `bun-${process.platform}-${process.arch}`),
      EXOTA_BUN_VERSION: JSON.stringify(Bun.version),
      EXOTA_DATE: JSON.stringify(DAY),
    },
    plugins: [logtapePortableUtil],
  });
  if (!result.success) {
    for (const l of result.logs) console.error(l);
    throw new Error(`building ${outfile} for ${target ?? "this machine"} failed`);
  }
}

/** The man page exota-milter(8) of this version, as roff. */
export const MAN_PAGE = manPage(VERSION, DAY);

if (import.meta.main) {
  const outfile = `${import.meta.dir}/dist/exota-milter`;
  await buildExecutable(undefined, outfile);
  mkdirSync(dirname(outfile), { recursive: true });
  writeFileSync(`${outfile}.8`, MAN_PAGE);
  console.log(`built dist/exota-milter ${VERSION} and dist/exota-milter.8`);
}
