/**
 * Hostile and broken input: connections that send malformed frames are
 * closed (and the reason logged) while a well-behaved connection in the
 * middle of a message is not disturbed; the process stays up. Also resource
 * limits, and start-up errors of the binary.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { encodeCommand } from "../../src/milter/codec.ts";
import {
  accepted,
  addedHeader,
  EXO_CLIENT,
  expectReplies,
  message,
  OUR_AUTHSERVID,
  policyFile,
  rejected,
  removeScratch,
  scratchDir,
  startTcpMilter,
  type TcpMilter,
  TENANT,
  TRUSTED_AUTHSERVID,
  dkimPass,
} from "../lib/fixtures.ts";
import { MilterClient, rawFrame } from "../lib/milter-client.ts";
import { runMilter, RUNTIME, sleep } from "../lib/milter-process.ts";
import pkg from "../../package.json" with { type: "json" };

const ENV = {
  MILTER_DKIM_ENABLED: "true",
  MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID,
  MILTER_TENANT_ID_REQUIRED: "true",
  MILTER_ADD_HEADER: "true",
  MILTER_AUTHSERVID: OUR_AUTHSERVID,
};

const bytes = (...parts: Array<number[] | Uint8Array | string>) => {
  const chunks = parts.map((p) => (typeof p === "string" ? new TextEncoder().encode(p) : Uint8Array.from(p)));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
};

/** Deterministic garbage (xorshift32), so a failure can be reproduced. */
function garbage(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

after(removeScratch);

const OPTNEG = encodeCommand({ type: "optneg", version: 6, actions: 0x1ff, protocol: 0x1fffff });

describe("bad input while a good connection is in the middle of a message", () => {
  let m: TcpMilter;
  let good: MilterClient;
  const GOOD_HEADERS: Array<readonly [string, string]> = [
    ["Authentication-Results", dkimPass("tenant.example")],
    ["Received", "from DB9PR05MB1234.eurprd05.prod.outlook.com by AM0PR05MB5678.eurprd05.prod.outlook.com"],
    ["From", "Alice <alice@tenant.example>"],
    ["Subject", "still here"],
    ["X-MS-Exchange-CrossTenant-Id", TENANT],
  ];

  before(async () => {
    m = await startTcpMilter({ ...ENV, MILTER_POLICY_FILE: policyFile() });
    good = await m.connect();
    await good.negotiate();
    await good.step("connect", {}, { type: "connect", ...EXO_CLIENT });
    await good.step("helo", {}, { type: "helo", name: "EUR05-DB8-obe.outbound.protection.outlook.com" });
    await good.step("mail", { i: "GOOD1" }, { type: "mail", args: ["<alice@tenant.example>"] });
    await good.step("rcpt", { i: "GOOD1" }, { type: "rcpt", args: ["<bob@destination.example>"] });
    await good.step("data", { i: "GOOD1" }, { type: "data" });
    // The first half of the headers now, the rest after the bad connections.
    for (const [name, value] of GOOD_HEADERS.slice(0, 2)) await good.step(undefined, {}, { type: "header", name, value });
  });
  after(async () => {
    good?.destroy();
    await m?.proc.stop();
  });

  /**
   * Opens a connection, lets `act` misbehave on it, and expects the milter to
   * close it and log a line matching `reason`.
   */
  async function expectClosed(act: (c: MilterClient) => void | Promise<void>, reason: RegExp): Promise<void> {
    const from = m.proc.log().length;
    const c = await m.connect();
    try {
      await act(c);
      await c.waitClosed();
      await m.proc.waitForLog(reason, 2000, from);
    } finally {
      c.destroy();
    }
  }

  it("a truncated frame, then the MTA closes: logged", () =>
    expectClosed((c) => {
      c.sendRaw(OPTNEG.subarray(0, 9));
      c.end();
    }, /WARNING .*connection closed by the MTA in the middle of a frame \(9 bytes pending\)/));

  it("an unknown command byte", () =>
    expectClosed((c) => {
      c.sendRaw(OPTNEG);
      c.sendRaw(rawFrame(0x5a, bytes("junk\0")));
    }, /WARNING .*closing connection: "malformed command: unknown command 'Z'/));

  it("a length field of 2 GiB (0x7fffffff)", () =>
    expectClosed((c) => {
      c.sendRaw(OPTNEG);
      c.sendRaw(bytes([0x7f, 0xff, 0xff, 0xff, 0x4c], "X-Big\0"));
    }, /WARNING .*closing connection: "malformed frame: frame length 2147483647 exceeds the limit of 1048576 bytes/));

  it("a length field of 0xffffffff", () =>
    expectClosed((c) => c.sendRaw(bytes([0xff, 0xff, 0xff, 0xff])), /closing connection: "malformed frame: frame length 4294967295 exceeds/));

  it("a zero length", () =>
    expectClosed((c) => {
      c.sendRaw(OPTNEG);
      c.sendRaw(bytes([0, 0, 0, 0]));
    }, /WARNING .*closing connection: "malformed frame: frame length 0/));

  it("random garbage", () => expectClosed((c) => c.sendRaw(garbage(8192, 0x5eed)), /WARNING .*closing connection: "malformed frame/));

  it("an HTTP request", () =>
    expectClosed(
      (c) => c.sendRaw(bytes("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")),
      /closing connection: "malformed frame: frame length 1195725856 exceeds/,
    ));

  it("a command before negotiation", () =>
    expectClosed(
      (c) => c.sendRaw(encodeCommand({ type: "connect", ...EXO_CLIENT })),
      /WARNING .*closing connection: "'connect' command before option negotiation/,
    ));

  it("a well-formed frame with a broken payload (header without NUL)", () =>
    expectClosed((c) => {
      c.sendRaw(OPTNEG);
      c.sendRaw(rawFrame(0x4c, bytes("From\0alice@tenant.example")));
    }, /WARNING .*closing connection: "malformed command: header: string without NUL terminator/));

  it("a truncated optneg payload", () =>
    expectClosed((c) => c.sendRaw(rawFrame(0x4f, bytes([0, 0, 0, 6]))), /closing connection: "malformed command: optneg: payload of 4 bytes, expected 12/));

  it("an MTA that offers milter protocol version 1", () =>
    expectClosed(
      (c) => c.sendRaw(encodeCommand({ type: "optneg", version: 1, actions: 0x1ff, protocol: 0x1fffff })),
      /closing connection: "negotiation failed: MTA speaks milter protocol version 1/,
    ));

  it("an MTA that does not allow header changes", () =>
    expectClosed(
      (c) => c.sendRaw(encodeCommand({ type: "optneg", version: 6, actions: 0x01, protocol: 0x1fffff })),
      /closing connection: "negotiation failed: MTA does not offer the actions CHGHDRS/,
    ));

  it("garbage right after a valid message on the same connection", () =>
    expectClosed(async (c) => {
      assert.deepEqual(
        await c.sendMessage(message({ queueId: "PRE1", from: "x@unknown.example" })),
        rejected("PRE1", "No policy for 5322.from_domain unknown.example"),
      );
      c.sendRaw(bytes([0, 0, 0, 0]));
    }, /closing connection: "malformed frame: frame length 0/));

  it("the good connection then completes its message correctly", async () => {
    assert.equal(good.closed, false);
    for (const [name, value] of GOOD_HEADERS.slice(2)) await good.step(undefined, {}, { type: "header", name, value });
    await good.step("eoh", { i: "GOOD1" }, { type: "eoh" });
    const replies = await good.step("eom", { i: "GOOD1" }, { type: "eom", chunk: new Uint8Array(0) });
    assert.deepEqual(
      replies,
      accepted(0, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509: false, forwarded: false })),
    );
    await good.quit();
  });

  it("the process is alive and serves new connections", async () => {
    assert.equal(m.proc.child.exitCode, null);
    assert.equal(m.proc.child.signalCode, null);
    await expectReplies(() => m.connect(), message({ queueId: "AFTER1" }), accepted(0, addedHeader({
      domain: "tenant.example",
      dkim: true,
      aligned: true,
      x509: false,
      forwarded: false,
    })));
    assert.doesNotMatch(m.proc.log(), /ERROR|bug while handling/);
  });
});

describe("resource limits", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      MILTER_IDLE_TIMEOUT: "1",
      MILTER_MAX_CONNECTIONS: "2",
      MILTER_MAX_FRAME_SIZE: "65536",
    });
  });
  after(async () => {
    await m?.proc.stop();
  });

  it("MILTER_MAX_CONNECTIONS: one more connection is closed at once and logged; a freed slot is usable again", async () => {
    const a = await m.connect();
    const b = await m.connect();
    try {
      await a.negotiate();
      await b.negotiate();
      const from = m.proc.log().length;
      const c = await m.connect();
      try {
        await c.waitClosed(2000);
      } finally {
        c.destroy();
      }
      await m.proc.waitForLog(/WARNING .*refusing connection on inet:\d+@127\.0\.0\.1 .*2 connections open/, 2000, from);
      await a.quit();
      // The slot is given back when the close is noticed; poll briefly.
      let served = false;
      for (let i = 0; i < 20 && !served; i++) {
        const d = await m.connect();
        try {
          await d.negotiate();
          assert.deepEqual(await d.sendMessage(message({ queueId: "SLOT1" })), accepted(0));
          await d.quit();
          served = true;
        } catch {
          await sleep(25);
        } finally {
          d.destroy();
        }
      }
      assert.ok(served, "a connection after one closed is served");
      await b.quit();
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  it("MILTER_MAX_FRAME_SIZE: a frame of exactly the limit is taken", async () => {
    const c = await m.connect();
    try {
      await c.negotiate();
      const spec = message({ queueId: "EXACT1", extraHeaders: [["X-Big", "x".repeat(65536 - 1 - 6 - 1)]] });
      const rec = await c.record(() => c.sendMessage(spec));
      // The X-Big header frame: 4 length bytes, then 65536 bytes.
      const frame = rawFrame(0x4c, bytes("X-Big\0", "x".repeat(65536 - 1 - 6 - 1), "\0"));
      assert.equal(frame.length, 4 + 65536);
      c.sendRaw(rec.bytes);
      // Over TCP DATA gets its reply too.
      assert.deepEqual(await c.collect(rec.answered), [[{ type: "continue" }], accepted(0)]);
      await c.quit();
    } finally {
      c.destroy();
    }
  });

  it("MILTER_MAX_FRAME_SIZE: a larger frame closes the connection", async () => {
    const from = m.proc.log().length;
    const c = await m.connect();
    try {
      await c.negotiate();
      c.sendRaw(rawFrame(0x4c, bytes("X-Big\0", "x".repeat(70000), "\0")));
      await c.waitClosed();
      await m.proc.waitForLog(/closing connection: "malformed frame: frame length 70008 exceeds the limit of 65536 bytes/, 2000, from);
    } finally {
      c.destroy();
    }
  });

  it("MILTER_IDLE_TIMEOUT: a silent connection is closed (also one stuck mid-frame)", async () => {
    const from = m.proc.log().length;
    const silent = await m.connect();
    const stuck = await m.connect();
    try {
      await silent.negotiate();
      stuck.sendRaw(OPTNEG.subarray(0, 7));
      const started = Date.now();
      await Promise.all([silent.waitClosed(6000), stuck.waitClosed(6000)]);
      assert.ok(Date.now() - started >= 800, "not closed before the timeout");
      await m.proc.waitForLog(/closing connection: "idle for 1 s"[^\n]*\n[^]*closing connection: "idle for 1 s"/, 2000, from);
    } finally {
      silent.destroy();
      stuck.destroy();
    }
  });
});

describe("start-up errors and the command line", () => {
  const rawPolicyFile = (text: string) => {
    const path = join(scratchDir(), "policy.json");
    writeFileSync(path, text);
    return path;
  };

  it("a policy file with a syntax error: exit 1, naming the file, line and column", async () => {
    const path = rawPolicyFile('{\n  "tenant.example": {\n    "tenant_id": "",\n  }\n}\n');
    const r = await runMilter([], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.equal(r.output, `exota-milter: policy: ${path}:4:3: expected a string in double quotes\n`);
  });

  it("a policy file with an unknown key: exit 1, naming the file, line, domain and key", async () => {
    const path = rawPolicyFile('{\n  "tenant.example": {\n    "tenant_id": "",\n    "dkim": true\n  }\n}\n');
    const r = await runMilter([], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`^exota-milter: policy: ${path}:4: domain "tenant.example", key "dkim": unknown key`));
  });

  it("a duplicate domain in the policy file is an error", async () => {
    const path = rawPolicyFile('{\n  "tenant.example": {},\n  "Tenant.Example": {}\n}\n');
    const r = await runMilter([], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`policy: ${path}:3`));
  });

  it("a missing policy file: exit 1, naming it", async () => {
    const path = join(scratchDir(), "absent.json");
    const r = await runMilter([], { MILTER_POLICY_FILE: path });
    assert.equal(r.code, 1);
    assert.match(r.output, new RegExp(`cannot read policy file ${path}`));
  });

  it("MILTER_DKIM_ENABLED=yepp: exit 1, naming the variable", async () => {
    const r = await runMilter([], { MILTER_DKIM_ENABLED: "yepp", MILTER_POLICY_FILE: policyFile() });
    assert.equal(r.code, 1);
    assert.match(r.output, /^exota-milter: MILTER_DKIM_ENABLED="yepp" is not valid: expected a boolean word/);
  });

  it("a flag beats the environment, and a bad flag is named as a flag", async () => {
    const r = await runMilter(["--dkim-enabled=yepp"], { MILTER_DKIM_ENABLED: "true", MILTER_POLICY_FILE: policyFile() });
    assert.equal(r.code, 1);
    assert.match(r.output, /--dkim-enabled="yepp" is not valid/);
  });

  it("DKIM without a trusted authserv-id: exit 1, naming the variable", async () => {
    const r = await runMilter([], { MILTER_DKIM_ENABLED: "true", MILTER_POLICY_FILE: policyFile() });
    assert.equal(r.code, 1);
    assert.match(r.output, /MILTER_TRUSTED_AUTHSERVID .*is required when MILTER_DKIM_ENABLED is true/);
  });

  it("a bad socket spec: exit 1, naming the variable", async () => {
    const r = await runMilter([], { MILTER_SOCKET: "inet:99999@127.0.0.1", MILTER_POLICY_FILE: policyFile() });
    assert.equal(r.code, 1);
    assert.match(r.output, /MILTER_SOCKET="inet:99999@127.0.0.1" is not valid/);
  });

  it("an unknown option: exit 1", async () => {
    const r = await runMilter(["--bogus"], {});
    assert.equal(r.code, 1);
    assert.match(r.output, /--bogus.*\(see --help\)/);
  });

  it("--version and -V print the version, the build target and the runtime, and exit 0", async () => {
    for (const flag of ["--version", "-V"]) {
      const r = await runMilter([flag], {});
      assert.equal(r.code, 0, flag);
      const m = /^exota-milter (\S+) \((\S+), (Bun|Deno) (\S+)\)\n$/.exec(r.output);
      assert.ok(m, r.output);
      if (RUNTIME === "deno") {
        // The sources, unbuilt, say so.
        assert.deepEqual(m.slice(1, 4), [`${pkg.version}-dev`, "source", "Deno"], flag);
        assert.match(m[4]!, /^\d+\.\d+\.\d+/, flag);
        continue;
      }
      // build.ts: package.json's version, and the commit when it is not the release's tag.
      assert.match(m[1]!, new RegExp(`^${pkg.version.replaceAll(".", "\\.")}(\\+g[0-9a-f]{10}(\\.dirty)?)?$`), flag);
      assert.equal(m[2], `bun-${process.platform}-${process.arch}`, flag);
      assert.deepEqual(m.slice(3), ["Bun", process.versions.bun], flag);
    }
  });

  it("--help and -h describe every setting and exit 0", async () => {
    for (const flag of ["--help", "-h"]) {
      const r = await runMilter([flag], {});
      assert.equal(r.code, 0, flag);
      assert.match(r.output, /^Usage: exota-milter /, flag);
      for (const v of ["MILTER_SOCKET", "MILTER_DKIM_ENABLED", "MILTER_TRUSTED_AUTHSERVID", "MILTER_X509_IP_WHITELIST", "MILTER_POLICY_FILE", "LOG_LEVEL"]) {
        assert.ok(r.output.includes(v), `${flag} mentions ${v}`);
      }
    }
  });
});
