/**
 * The pure modules (DESIGN.md section 5) import no runtime modules and use
 * no runtime globals, so they run unchanged under Bun and Deno. Backends
 * (LDAP) are the only I/O and are excluded.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { describe, it } from "node:test";

const SRC = new URL("../../src/", import.meta.url);
const PURE_DIRS = ["milter", "mail", "policy", "postfix"];
const EXCLUDED = /backend|ldap/i;
/** Packages a pure module may import (the policy schema uses valibot). */
const ALLOWED_PACKAGES = new Set(["valibot"]);

function pureFiles(): string[] {
  const out: string[] = [];
  for (const dir of PURE_DIRS) {
    for (const name of readdirSync(new URL(`${dir}/`, SRC)).sort()) {
      const rel = `${dir}/${name}`;
      if (!name.endsWith(".ts") || EXCLUDED.test(name)) continue;
      if (!statSync(new URL(rel, SRC)).isFile()) continue;
      out.push(rel);
    }
  }
  out.push("filter.ts");
  return out;
}

/** Source without comments (block and line; `://` in strings is kept). */
function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/(^|[^:\\])\/\/.*$/gm, "$1");
}

/** Every module specifier: static imports/exports, side-effect imports, dynamic import(), require(). */
function specifiers(src: string): string[] {
  const code = stripComments(src);
  const out: string[] = [];
  const patterns = [
    /\b(?:import|export)\b[^"';]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["'`]([^"'`]+)["'`]\s*\)/g,
    /\brequire\s*\(\s*["'`]([^"'`]+)["'`]\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) out.push(m[1]!);
  return out;
}

const isBunModule = (spec: string) => spec === "bun" || spec.startsWith("bun:");

/** Uses of Bun's or Deno's own API, which only the runtime adapters (src/server/runtime-*.ts) may make. */
function runtimeApiUses(src: string): string[] {
  const uses = specifiers(src).filter(isBunModule).map((spec) => `imports ${spec}`);
  const code = stripComments(src);
  if (/\bDeno\s*\./.test(code)) uses.push("uses Deno.");
  if (/\bBun\s*\./.test(code)) uses.push("uses Bun.");
  if (/\bversions\s*\.\s*(?:bun|deno)\b/.test(code)) uses.push("asks process.versions which runtime runs");
  return uses;
}

/** Problems of one source text; empty when pure. */
function impurities(src: string): string[] {
  const problems: string[] = [];
  for (const spec of specifiers(src)) {
    if (isBunModule(spec)) continue; // runtimeApiUses
    if (spec.startsWith("node:")) problems.push(`imports ${spec}`);
    else if (spec.startsWith("npm:") || spec.startsWith("jsr:")) problems.push(`imports ${spec}`);
    else if (!spec.startsWith("./") && !spec.startsWith("../") && !ALLOWED_PACKAGES.has(spec)) problems.push(`imports package ${spec}`);
  }
  problems.push(...runtimeApiUses(src));
  const code = stripComments(src);
  for (const [re, what] of [
    [/\bglobalThis\s*(?:\.\s*|\[\s*["'])(?:Deno|Bun|process)\b/, "uses a runtime via globalThis"],
    [/(?<![.\w])process\s*\./, "uses process."],
    [/\brequire\s*\(/, "uses require()"],
  ] as const) {
    if (re.test(code)) problems.push(what);
  }
  return problems;
}

describe("pure modules", () => {
  const files = pureFiles();

  it("the list covers the protocol, mail, decision and filter modules, and not the LDAP backend", () => {
    for (const f of ["milter/codec.ts", "milter/session.ts", "mail/address.ts", "mail/auth-results.ts", "policy/decide.ts", "policy/policy-file.ts", "policy/json-entries.ts", "filter.ts"]) {
      assert.ok(files.includes(f), `${f} is checked`);
    }
    assert.ok(!files.some((f) => /ldap|backend/.test(f)));
  });

  for (const file of files) {
    it(`${file} imports no runtime module and uses no runtime global`, () => {
      const src = readFileSync(new URL(file, SRC), "utf8");
      assert.deepEqual(impurities(src), []);
    });
  }

  it("the checker itself finds impurities (so the tests above can fail)", () => {
    assert.deepEqual(impurities('import { readFileSync } from "node:fs";'), ["imports node:fs"]);
    assert.deepEqual(impurities('import type { Socket } from "bun";'), ["imports bun"]);
    assert.deepEqual(impurities('import { test } from "bun:test";'), ["imports bun:test"]);
    assert.deepEqual(impurities('import "node:process";'), ["imports node:process"]);
    assert.deepEqual(impurities('const m = await import("node:os");'), ["imports node:os"]);
    assert.deepEqual(impurities('export { x } from "ldapts";'), ["imports package ldapts"]);
    assert.deepEqual(impurities('import {\n  a,\n  b,\n} from "node:net";'), ["imports node:net"]);
    assert.deepEqual(impurities("const t = Deno.readTextFileSync(p);"), ["uses Deno."]);
    assert.deepEqual(impurities("Bun.write(p, s);"), ["uses Bun."]);
    assert.deepEqual(runtimeApiUses("const b = process.versions.bun;"), ["asks process.versions which runtime runs"]);
    assert.deepEqual(impurities("const e = process.env.X;"), ["uses process."]);
    assert.deepEqual(impurities('const d = globalThis["Deno"];'), ["uses a runtime via globalThis"]);
    assert.deepEqual(impurities('const fs = require("fs");'), ["imports package fs", "uses require()"]);
    // Comments and lookalikes do not count.
    assert.deepEqual(impurities("// Deno.listen has no fd option\n/* Bun.listen */ const u = `http://${d}/`;"), []);
    assert.deepEqual(impurities('import { x } from "./a.ts";\nimport * as v from "valibot";\nconst p = this.process.x;'), []);
  });
});

/** Every .ts file under src/, relative to it. */
function sourceFiles(dir = ""): string[] {
  return readdirSync(new URL(dir, SRC), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(`${dir}${e.name}/`) : e.name.endsWith(".ts") ? [`${dir}${e.name}`] : []
  );
}

/** The adapters of the runtime seam, and the Deno declarations tsc checks one of them against. */
const ADAPTERS = new Set(["server/runtime-bun.ts", "server/runtime-deno.ts", "server/deno-api.d.ts"]);

describe("the runtime seam", () => {
  it("outside the runtime adapters, no module uses Bun's or Deno's own API", () => {
    const files = sourceFiles();
    assert.ok(files.includes("main.ts") && files.includes("server/daemon.ts"));
    const uses = files.filter((f) => !ADAPTERS.has(f)).flatMap((f) => runtimeApiUses(readFileSync(new URL(f, SRC), "utf8")).map((u) => `${f} ${u}`));
    assert.deepEqual(uses, []);
  });
});
