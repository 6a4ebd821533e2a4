/**
 * Builds dist/exota-milter: one executable with the Bun runtime inside, that
 * needs neither Bun nor node_modules on the relay host.
 *
 *   bun build.ts            (npm run build)
 */
import { $, type BunPlugin } from "bun";
import pkg from "./package.json" with { type: "json" };

const git = (await $`git describe --always --dirty --abbrev=10`.nothrow().quiet()).stdout.toString().trim();
const version = git === "" ? pkg.version : `${pkg.version}+${git}`;

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

const result = await Bun.build({
  entrypoints: ["src/main.ts"],
  // A daemon must not pick up .env or bunfig.toml from its working directory.
  compile: { outfile: "dist/exota-milter", autoloadDotenv: false, autoloadBunfig: false },
  // splitting: modules imported dynamically (the LDAP client, node:http for
  // metrics) stay out of start-up unless configured: ~12 MB less memory.
  splitting: true,
  bytecode: true,
  format: "esm",
  minify: { syntax: true, whitespace: true },
  define: { EXOTA_VERSION: JSON.stringify(version) },
  plugins: [logtapePortableUtil],
});
if (!result.success) {
  for (const l of result.logs) console.error(l);
  process.exit(1);
}
console.log(`built dist/exota-milter ${version}`);
