/**
 * What only Deno has: permissions. README's narrow flags serve mail; one
 * flag fewer stops the milter at start with a line naming what is missing.
 * And what Deno cannot do fails clearly. Runs in the Deno pass of the suite
 * (EXOTA_MILTER_RUNTIME=deno).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { accepted, message, policyFile, rejected, removeScratch, scratchDir } from "../lib/fixtures.ts";
import { MilterClient, type Target } from "../lib/milter-client.ts";
import { DENO_ALLOW_ENV, DENO_ALLOW_UID, denoCommand, freePort, RUNTIME, runMilter, startMilter } from "../lib/milter-process.ts";

after(removeScratch);

const DENO_ONLY = { skip: RUNTIME === "deno" ? false : "Deno's permissions and limits (EXOTA_MILTER_RUNTIME=deno)" };

/** policyFile() writes into a directory of its own, as README advises: --allow-read of it covers both. */
const dirOf = (path: string) => path.slice(0, path.lastIndexOf("/"));

async function serves(target: Target): Promise<void> {
  const c = await MilterClient.connect(target);
  try {
    assert.deepEqual(await c.sendMessage(message({ queueId: "DENO1" })), accepted(0));
    assert.deepEqual(
      await c.sendMessage(message({ queueId: "DENO2", session: false, from: "x@unknown.example" })),
      rejected("DENO2", "No policy for 5322.from_domain unknown.example"),
    );
  } finally {
    c.destroy();
  }
}

describe("Deno with README's narrow permission flags", DENO_ONLY, () => {
  it("TCP: --allow-env, --allow-read of the policy's directory, --allow-net of the socket", async () => {
    const file = policyFile();
    const port = await freePort();
    const proc = await startMilter({
      command: denoCommand([DENO_ALLOW_ENV, DENO_ALLOW_UID, `--allow-read=${dirOf(file)}`, `--allow-net=127.0.0.1:${port}`]),
      env: { MILTER_POLICY_FILE: file, MILTER_SOCKET: `inet:${port}@127.0.0.1` },
    });
    try {
      await serves({ host: "127.0.0.1", port });
      // Deno lists the environment only with a plain --allow-env.
      assert.match(proc.log(), /WARNING .*the names in the environment are not readable .*a mistyped MILTER_ variable goes unnoticed/);
    } finally {
      assert.equal(await proc.stop(), 0);
    }
  });

  it("unix socket, metrics: read, write and net of the socket path, net of the metrics address", async () => {
    const file = policyFile();
    const path = join(scratchDir(), "deno.sock");
    const metrics = await freePort();
    const proc = await startMilter({
      command: denoCommand([
        DENO_ALLOW_ENV,
        DENO_ALLOW_UID,
        `--allow-read=${dirOf(file)},${path}`,
        `--allow-write=${path}`,
        `--allow-net=unix:${path},127.0.0.1:${metrics}`,
      ]),
      env: { MILTER_POLICY_FILE: file, MILTER_SOCKET: `unix:${path}`, MILTER_METRICS_LISTEN: `127.0.0.1:${metrics}` },
    });
    try {
      await serves({ path });
      const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
      assert.match(text, /^exota_milter_messages_total\{verdict="reject",reason="No policy for 5322.from_domain"\} 1$/m);
    } finally {
      assert.equal(await proc.stop(), 0);
    }
  });
});

describe("Deno with a permission missing: exit 1 at start, naming the flag", DENO_ONLY, () => {
  it("no --allow-net for the socket", async () => {
    const file = policyFile();
    const port = await freePort();
    const r = await runMilter([], { MILTER_POLICY_FILE: file, MILTER_SOCKET: `inet:${port}@127.0.0.1` }, denoCommand([DENO_ALLOW_ENV, DENO_ALLOW_UID, `--allow-read=${dirOf(file)}`]));
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`^exota-milter: Deno \\S+ refuses what this configuration needs; grant it with --allow-net=127\\.0\\.0\\.1:${port} \\(MILTER_SOCKET\\)\\n$`));
  });

  it("--allow-read of the file only, while the file is watched: its directory is named", async () => {
    const file = policyFile();
    const r = await runMilter([], { MILTER_POLICY_FILE: file, MILTER_SOCKET: `inet:${await freePort()}@127.0.0.1` }, denoCommand([DENO_ALLOW_ENV, DENO_ALLOW_UID, `--allow-read=${file}`, "--allow-net"]));
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`grant it with --allow-read=${dirOf(file)} \\(MILTER_POLICY_WATCH watches the directory\\)\\n$`));
  });

  it("--allow-env without LOG_FORMAT: the variable is named, nothing else happens", async () => {
    const r = await runMilter([], { MILTER_POLICY_FILE: policyFile() }, denoCommand(["--allow-env=MILTER_*,LOG_LEVEL", DENO_ALLOW_UID, "--allow-read", "--allow-net"]));
    assert.equal(r.code, 1);
    assert.equal(r.output, 'exota-milter: Requires env access to "LOG_FORMAT", run again with the --allow-env flag\n');
  });

  it("no --allow-sys=uid (to warn about root): named", async () => {
    const r = await runMilter([], { MILTER_POLICY_FILE: policyFile() }, denoCommand([DENO_ALLOW_ENV, "--allow-read", "--allow-net"]));
    assert.equal(r.code, 1);
    assert.equal(r.output, 'exota-milter: Requires sys access to "uid", run again with the --allow-sys flag\n');
  });
});

describe("what Deno cannot do", DENO_ONLY, () => {
  it("inet6 on the wildcard address (Deno has no IPV6_V6ONLY): exit 1 with the reason", async () => {
    const port = await freePort();
    const r = await runMilter([], { MILTER_POLICY_FILE: policyFile(), MILTER_SOCKET: `inet6:${port}@::` });
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`^exota-milter: cannot listen: \\[::\\]:${port}: Deno cannot listen on IPv6 only \\(no IPV6_V6ONLY\\)`, "m"));
  });
});
