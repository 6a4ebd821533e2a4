/**
 * The same accept/reject checks over every kind of listening socket: TCP
 * (IPv4, IPv6), unix (`unix:` and `local:` spellings, mode, stale and foreign
 * files) and sockets inherited by systemd socket activation.
 */
import assert from "node:assert/strict";
import { existsSync, lstatSync, readFileSync, writeFileSync } from "node:fs";
import { connect as netConnect, createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  accepted,
  addedHeader,
  message,
  OUR_AUTHSERVID,
  policyFile,
  rejected,
  removeScratch,
  scratchDir,
  startTcpMilter,
  TRUSTED_AUTHSERVID,
} from "../lib/fixtures.ts";
import { Proto } from "../../src/milter/protocol.ts";
import { MilterClient, rawFrame, type Target } from "../lib/milter-client.ts";
import { freePort, MILTER_COMMAND, type MilterProcess, ROOT, runMilter, sleep, startMilter } from "../lib/milter-process.ts";

after(removeScratch);

const POLICY_FILE = policyFile();
const ENV = {
  MILTER_POLICY_FILE: POLICY_FILE,
  MILTER_DKIM_ENABLED: "true",
  MILTER_TRUSTED_AUTHSERVID: TRUSTED_AUTHSERVID,
  MILTER_ADD_HEADER: "true",
  MILTER_AUTHSERVID: OUR_AUTHSERVID,
};

/** One connection, two messages: an accepted one (with a header change) and a rejected one; then a second connection. */
async function acceptAndReject(target: Target): Promise<void> {
  for (const qid of ["A1", "B2"]) {
    const c = await MilterClient.connect(target);
    try {
      assert.deepEqual(
        await c.sendMessage(message({ queueId: `${qid}OK`, extraHeaders: [["X-ExOTA-Authentication-Results", "forged"]] })),
        accepted(1, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509: false, forwarded: false })),
      );
      assert.deepEqual(
        await c.sendMessage(message({ queueId: `${qid}NO`, session: false, from: "x@unknown.example" })),
        rejected(`${qid}NO`, "No policy for 5322.from_domain unknown.example"),
      );
      await c.quit();
    } finally {
      c.destroy();
    }
  }
}

/** Resolves when nothing accepts connections at `target` (refused), rejects if something does. */
function assertNotListening(target: Target): Promise<void> {
  return MilterClient.connect(target, 2000).then(
    (c) => {
      c.destroy();
      throw new Error(`something listens on ${JSON.stringify(target)}`);
    },
    () => undefined,
  );
}

const modeOf = (path: string) => lstatSync(path).mode & 0o777;

describe("TCP inet:PORT@127.0.0.1", () => {
  let m: Awaited<ReturnType<typeof startTcpMilter>>;
  before(async () => {
    m = await startTcpMilter(ENV);
  });
  after(() => m?.proc.stop());

  it("accepts and rejects", () => acceptAndReject({ host: "127.0.0.1", port: m.port }));
});

/** A free TCP port on ::1, or undefined when ::1 is not available here. */
function freePort6(): Promise<number | undefined> {
  return new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(undefined));
    s.listen(0, "::1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

describe("TCP inet6:PORT@::1", () => {
  let proc: MilterProcess | undefined;
  let port: number | undefined;
  before(async () => {
    port = await freePort6();
    if (port !== undefined) proc = await startMilter({ env: { ...ENV, MILTER_SOCKET: `inet6:${port}@::1` } });
  });
  after(() => proc?.stop());

  it("accepts and rejects", async (t) => {
    if (port === undefined) {
      t.skip("IPv6 loopback ::1 is not available on this machine");
      return;
    }
    assert.match(proc!.log(), new RegExp(`listening on inet6:${port}@::1`));
    await acceptAndReject({ host: "::1", port });
  });

  it("[::1] in brackets is accepted too", async (t) => {
    const p = await freePort6();
    if (p === undefined) {
      t.skip("IPv6 loopback ::1 is not available on this machine");
      return;
    }
    const other = await startMilter({ env: { ...ENV, MILTER_SOCKET: `inet6:${p}@[::1]` } });
    try {
      await acceptAndReject({ host: "::1", port: p });
    } finally {
      await other.stop();
    }
  });
});

describe("unix sockets", () => {
  const started: MilterProcess[] = [];
  const start = async (env: Record<string, string>) => {
    const p = await startMilter({ env: { ...ENV, ...env } });
    started.push(p);
    return p;
  };
  after(async () => {
    for (const p of started) await p.stop();
  });

  it("unix:/path: serves mail; the socket has MILTER_SOCKET_MODE; SIGTERM removes it", async () => {
    const path = join(scratchDir(), "milter.sock");
    const p = await start({ MILTER_SOCKET: `unix:${path}`, MILTER_SOCKET_MODE: "0666" });
    assert.ok(lstatSync(path).isSocket());
    assert.equal(modeOf(path).toString(8), "666");
    await acceptAndReject({ path });
    assert.equal(await p.stop(), 0);
    assert.equal(existsSync(path), false, "socket file removed at shutdown");
  });

  it("local:/path: serves mail, with another mode", async () => {
    const path = join(scratchDir(), "milter.sock");
    await start({ MILTER_SOCKET: `local:${path}`, MILTER_SOCKET_MODE: "600" });
    assert.equal(modeOf(path).toString(8), "600");
    await acceptAndReject({ path });
  });

  it("the default mode is 0660", async () => {
    const path = join(scratchDir(), "milter.sock");
    await start({ MILTER_SOCKET: `unix:${path}` });
    assert.equal(modeOf(path).toString(8), "660");
  });

  it("a stale socket file left by a killed process is replaced", async () => {
    const path = join(scratchDir(), "milter.sock");
    const first = await start({ MILTER_SOCKET: `unix:${path}`, MILTER_SOCKET_MODE: "0666" });
    assert.equal(await first.stop("SIGKILL"), null);
    assert.ok(lstatSync(path).isSocket(), "the killed process left its socket file");
    await assertNotListening({ path });
    await start({ MILTER_SOCKET: `unix:${path}`, MILTER_SOCKET_MODE: "0666" });
    assert.equal(modeOf(path).toString(8), "666");
    await acceptAndReject({ path });
  });

  it("a socket in use by a running milter is not taken over", async () => {
    const path = join(scratchDir(), "milter.sock");
    await start({ MILTER_SOCKET: `unix:${path}` });
    const r = await runMilter([], { ...ENV, MILTER_SOCKET: `unix:${path}` });
    assert.notEqual(r.code, 0);
    assert.match(r.output, new RegExp(`cannot listen: ${path} is in use`));
    // The first one still serves.
    await acceptAndReject({ path });
  });

  it("a regular file at the path makes start-up fail with a clear message, and is left alone", async () => {
    const path = join(scratchDir(), "milter.sock");
    writeFileSync(path, "not a socket\n");
    const r = await runMilter([], { ...ENV, MILTER_SOCKET: `unix:${path}` });
    assert.notEqual(r.code, 0);
    assert.match(r.output, new RegExp(`exota-milter: cannot listen: ${path} exists and is not a socket`));
    assert.equal(readFileSync(path, "utf8"), "not a socket\n");
  });

  it("a relative path is refused", async () => {
    const r = await runMilter([], { ...ENV, MILTER_SOCKET: "unix:milter.sock" });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /MILTER_SOCKET="unix:milter\.sock" is not valid/);
  });
});

describe("systemd socket activation (LISTEN_FDS)", () => {
  let proc: MilterProcess;
  let port: number;
  let ignoredPort: number;
  let path: string;
  before(async () => {
    port = await freePort();
    ignoredPort = await freePort();
    path = join(scratchDir(), "activated.sock");
    proc = await startMilter({
      command: ["python3", join(ROOT, "tests/lib/socket-activate.py"), "--tcp", `tcp=127.0.0.1:${port}`, "--unix", `unix=${path}`, "--", ...MILTER_COMMAND],
      env: { ...ENV, MILTER_SOCKET: `inet:${ignoredPort}@127.0.0.1` },
    });
  });
  after(() => proc?.stop());

  it("listens on the inherited sockets, named from LISTEN_FDNAMES", () => {
    assert.match(proc.log(), /listening on "systemd:tcp, systemd:unix"[ \n]/);
  });

  it("MILTER_SOCKET is ignored", () => assertNotListening({ host: "127.0.0.1", port: ignoredPort }));

  it("the inherited TCP socket serves mail", () => acceptAndReject({ host: "127.0.0.1", port }));

  it("the inherited unix socket serves mail", () => acceptAndReject({ path }));

  it("both at once", async () => {
    await Promise.all([acceptAndReject({ host: "127.0.0.1", port }), acceptAndReject({ path })]);
  });

  it("each inherited socket negotiates for its kind, on every connection: TCP has DATA sent and answered, unix skips it", async () => {
    const agreed = async (target: Target) => {
      const c = await MilterClient.connect(target);
      try {
        return (await c.negotiate()).protocol & (Proto.NODATA | Proto.NR_DATA);
      } finally {
        c.destroy();
      }
    };
    for (let i = 0; i < 3; i++) {
      assert.equal(await agreed({ host: "127.0.0.1", port }), 0, "TCP: DATA sent and answered (no Nagle stall)");
      assert.equal(await agreed({ path }), Proto.NODATA | Proto.NR_DATA, "unix: DATA skipped");
    }
  });

  it("LISTEN_FDS meant for another process (LISTEN_PID differs) is ignored", async () => {
    const own = await freePort();
    const p = await startMilter({ env: { ...ENV, MILTER_SOCKET: `inet:${own}@127.0.0.1`, LISTEN_FDS: "1", LISTEN_PID: "1" } });
    try {
      assert.match(p.log(), new RegExp(`listening on inet:${own}@127\\.0\\.0\\.1[ \\n]`));
      await acceptAndReject({ host: "127.0.0.1", port: own });
    } finally {
      await p.stop();
    }
  });
});

describe("back-pressure: an MTA that does not read the replies", () => {
  let proc: MilterProcess;
  let path: string;
  before(async () => {
    path = join(scratchDir(), "unread.sock");
    proc = await startMilter({ env: { ...ENV, MILTER_SOCKET: `unix:${path}` } });
  });
  after(() => proc?.stop());

  it("the milter stops reading until the replies are taken, serves others meanwhile, and loses no reply", async () => {
    // Offering no protocol flags, every HELO gets a reply: 5 bytes per 7 bytes sent, far more
    // replies than the socket buffers hold (a unix socket's: ~200 KB each way).
    const helos = 200_000;
    const optneg = new Uint8Array(12);
    new DataView(optneg.buffer).setUint32(0, 6);
    new DataView(optneg.buffer).setUint32(4, 0x1ff);
    const helo = rawFrame(0x48, new TextEncoder().encode("x\0"));
    const flood = new Uint8Array(17 + helos * helo.length);
    flood.set(rawFrame(0x4f, optneg));
    for (let i = 0; i < helos; i++) flood.set(helo, 17 + i * helo.length);

    const s = netConnect({ path });
    try {
      s.pause();
      await new Promise<void>((res, rej) => s.once("connect", res).once("error", rej));
      s.write(flood);
      // Wait until the milter takes no more.
      for (let last = -1, same = 0; same < 3; await sleep(100)) {
        same = s.writableLength === last ? same + 1 : 0;
        last = s.writableLength;
      }
      assert.ok(s.writableLength > 0, "the milter read everything although its replies were not taken");
      await acceptAndReject({ path });

      let all = Buffer.alloc(0);
      s.on("data", (d: Buffer) => (all = Buffer.concat([all, d])));
      s.resume();
      // The optneg reply (its length in its first 4 bytes), then one CONTINUE per HELO.
      const expected = () => (all.length < 4 ? Infinity : 4 + all.readUInt32BE(0) + helos * 5);
      for (let waited = 0; all.length < expected() && waited < 20_000; waited += 50) await sleep(50);
      await sleep(100); // nothing more comes
      assert.equal(all.length, expected());
      assert.equal(all[4], 0x4f, "first the optneg reply");
      const cont = Buffer.from(rawFrame(0x63));
      for (let at = 4 + all.readUInt32BE(0), n = 0; at < all.length; at += 5, n++) {
        if (!all.subarray(at, at + 5).equals(cont)) assert.fail(`reply ${n} is not CONTINUE`);
      }
    } finally {
      s.destroy();
    }
  });
});
