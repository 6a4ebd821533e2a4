/**
 * The test helper that starts the binary: a process that never logs its
 * ready line must not be left running (it once outlived a bench run).
 */
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startMilter, tempDir, writePolicy } from "../lib/milter-process.ts";

const connects = (path: string) =>
  new Promise<boolean>((res) => {
    const s = connect({ path });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });

describe("startMilter", () => {
  it("kills the process when its ready line does not come in time", async () => {
    const dir = tempDir();
    const sock = join(dir, "m.sock");
    await assert.rejects(
      startMilter({ env: { MILTER_POLICY_FILE: writePolicy({}, dir), MILTER_SOCKET: `unix:${sock}` }, ready: /a line it never logs/, readyTimeoutMs: 3000 }),
      // The output in the error shows it got as far as listening: the kill, not the start, is under test.
      /timed out waiting for[^]* listening on /,
    );
    // It did listen (the socket file is there), and nothing answers on it any more.
    assert.equal(await connects(sock), false);
    rmSync(dir, { recursive: true, force: true });
  });
});
