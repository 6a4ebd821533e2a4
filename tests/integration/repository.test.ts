/**
 * The repository itself: no build output committed (a 111 MB executable once
 * was, and every clone downloaded it).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ROOT } from "../lib/milter-process.ts";

const LIMIT = 5 * 1024 * 1024;

function git(args: string[], input?: string): string {
  const r = spawnSync("git", args, { cwd: ROOT, encoding: "utf8", input, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `git ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

describe("the repository", () => {
  const isClone = existsSync(join(ROOT, ".git"));

  it("tracks no file over 5 MB (sizes as staged, whatever the working tree holds)", (t) => {
    if (!isClone) return t.skip("not a git checkout");
    // mode SP object SP stage TAB path, NUL-terminated
    const entries = git(["ls-files", "-z", "--stage"]).split("\0").filter((e) => e !== "").map((e) => {
      const [meta, path] = e.split("\t") as [string, string];
      return { object: meta.split(" ")[1]!, path };
    });
    assert.ok(entries.length > 50, `only ${entries.length} tracked files?`);
    const sizes = git(["cat-file", "--batch-check=%(objectsize)"], entries.map((e) => e.object).join("\n") + "\n").trim().split("\n").map(Number);
    assert.equal(sizes.length, entries.length);
    const big = entries.flatMap((e, i) => (sizes[i]! > LIMIT ? [`${e.path} (${sizes[i]} bytes)`] : []));
    assert.deepEqual(big, [], "build outputs belong in dist/ (ignored), not in git");
  });

  it("ignores the build outputs: dist/ and an executable named main at the top", (t) => {
    if (!isClone) return t.skip("not a git checkout");
    const r = spawnSync("git", ["check-ignore", "--no-index", "dist/exota-milter", "dist/release/x.deb", "main"], { cwd: ROOT, encoding: "utf8" });
    assert.equal(r.stdout, "dist/exota-milter\ndist/release/x.deb\nmain\n");
  });
});
