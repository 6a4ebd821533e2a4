/**
 * Faults an operator's worst day brings, against the compiled binary over
 * real sockets: clients that trickle bytes, a message that never ends,
 * standard error on a full disk or on a pipe whose reader is gone, SIGTERM
 * while mail flows, a flood of connections at the connection limit.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, constants, openSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { accepted, message, policyFile, rejected, removeScratch, scratchDir, startTcpMilter, type TcpMilter } from "../lib/fixtures.ts";
import { scrape, series } from "../lib/metrics.ts";
import { MilterClient, ProtocolError, rawFrame } from "../lib/milter-client.ts";
import { freePort, MILTER_COMMAND, sleep } from "../lib/milter-process.ts";

after(removeScratch);

/** Sends `bytes` one at a time every `everyMs` until done or the connection is closed; resolves when closed. */
async function trickle(c: MilterClient, bytes: Uint8Array, everyMs: number): Promise<void> {
  for (let i = 0; i < bytes.length && !c.closed; i++) {
    c.sendRaw(bytes.subarray(i, i + 1));
    await sleep(everyMs);
  }
}

/** A header frame of about 100 bytes: at 4 bytes/s it takes 25 s to arrive. */
const SLOW_HEADER = rawFrame(0x4c, new TextEncoder().encode(`X-Slow\0${"x".repeat(90)}\0`));

describe("slow clients", () => {
  let m: TcpMilter;
  const SLOTS = 8;
  before(async () => {
    m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      MILTER_IDLE_TIMEOUT: "2",
      MILTER_MAX_CONNECTIONS: String(SLOTS),
      LOG_FORMAT: "text",
    }, { metrics: true });
  });
  after(async () => {
    await m?.proc.stop();
  });

  it("clients sending one frame at 4 bytes/s cannot hold the slots: each is closed 2 s (MILTER_IDLE_TIMEOUT) after its frame began", async () => {
    const from = m.proc.log().length;
    const slow: MilterClient[] = [];
    try {
      for (let i = 0; i < SLOTS; i++) {
        const c = await m.connect();
        await c.sendMessage(message({ queueId: `SLOW${i}`, stopAfterHeaders: true }));
        slow.push(c);
      }
      const t0 = performance.now();
      const trickling = slow.map((c) => trickle(c, SLOW_HEADER, 250));
      await Promise.all(slow.map((c) => c.waitClosed(6000)));
      const elapsed = performance.now() - t0;
      assert.ok(elapsed >= 1800, `closed after ${elapsed} ms, before the 2 s timeout`);
      await Promise.all(trickling);
      // Mail flows again.
      const c = await m.connect();
      try {
        assert.deepEqual(await c.sendMessage(message({ queueId: "AFTERSLOW" })), accepted(0));
      } finally {
        c.destroy();
      }
      const lines = m.proc.log().slice(from).split("\n").filter((l) => l.includes("frame not complete 2 s after its first byte"));
      assert.equal(lines.length, SLOTS, m.proc.log().slice(from));
      assert.match(lines[0]!, /WARNING .*closing connection: "frame not complete 2 s after its first byte" conn=\d+/);
      const s = await m.scrape();
      assert.equal(series(s, "exota_milter_connections_timed_out_total")['exota_milter_connections_timed_out_total{timeout="frame"}'], SLOTS);
    } finally {
      for (const c of slow) c.destroy();
    }
  });
});

describe("MILTER_MESSAGE_TIMEOUT", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      MILTER_IDLE_TIMEOUT: "2",
      MILTER_MESSAGE_TIMEOUT: "3",
      LOG_FORMAT: "text",
    }, { metrics: true });
  });
  after(async () => {
    await m?.proc.stop();
  });

  it("a message sending a header every 0.5 s is closed 3 s after MAIL; messages that finish in time share a connection for longer", async () => {
    const from = m.proc.log().length;
    const dragging = await m.connect();
    const steady = await m.connect();
    try {
      await dragging.sendMessage(message({ queueId: "DRAG1", stopAfterHeaders: true }));
      const t0 = performance.now();
      // The steady connection: a message every 0.5 s, for longer than the message timeout.
      const steadyRun = (async () => {
        let n = 0;
        while (performance.now() - t0 < 4500) {
          assert.deepEqual(await steady.sendMessage(message({ queueId: `STEADY${n++}` })), accepted(0));
          await sleep(500);
        }
        return n;
      })();
      for (let i = 0; !dragging.closed && i < 20; i++) {
        await dragging.send({ type: "header", name: "X-Drag", value: String(i) });
        await sleep(500);
      }
      await dragging.waitClosed(2000);
      const elapsed = performance.now() - t0;
      assert.ok(elapsed >= 2800 && elapsed < 5000, `closed after ${elapsed} ms, timeout 3 s`);
      assert.ok((await steadyRun) >= 8);
      assert.equal(steady.closed, false);
      await m.proc.waitForLog(/WARNING .*closing connection: "message not finished 3 s after MAIL \(MILTER_MESSAGE_TIMEOUT\)"/, 1000, from);
      const s = await m.scrape();
      assert.deepEqual(series(s, "exota_milter_connections_timed_out_total"), {
        'exota_milter_connections_timed_out_total{timeout="idle"}': 0,
        'exota_milter_connections_timed_out_total{timeout="frame"}': 0,
        'exota_milter_connections_timed_out_total{timeout="message"}': 1,
      });
    } finally {
      dragging.destroy();
      steady.destroy();
    }
  });
});

/** Resolves with the exit code (or the signal) once the process has exited. */
function exited(child: ChildProcess): Promise<string> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(String(child.exitCode ?? child.signalCode));
  return new Promise((res) => child.once("exit", (code, signal) => res(String(code ?? signal))));
}

describe("log write failures", () => {
  const children: ChildProcess[] = [];
  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  });

  /**
   * Starts the milter (the runtime under test) with standard error on `stderrFd`; its log cannot be
   * read, so readiness is a connection that negotiates.
   */
  async function startBlind(stderrFd: number): Promise<{ child: ChildProcess; port: number; metricsPort: number }> {
    const port = await freePort();
    const metricsPort = await freePort();
    const child = spawn(MILTER_COMMAND[0]!, MILTER_COMMAND.slice(1), {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        MILTER_SOCKET: `inet:${port}@127.0.0.1`,
        MILTER_POLICY_FILE: policyFile(),
        MILTER_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
        LOG_FORMAT: "text",
      },
      stdio: ["ignore", "ignore", stderrFd],
    });
    children.push(child);
    for (let i = 0; i < 200; i++) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      try {
        await scrape(metricsPort);
        return { child, port, metricsPort };
      } catch {
        await sleep(25);
      }
    }
    throw new Error(`the milter did not come up; it exited with ${await exited(child)}`);
  }

  /**
   * 20 accepted and 5 rejected messages on one connection, all decided; the
   * process stays up. Returns the dropped-lines count once it reaches
   * `atLeast` (info lines leave up to 50 ms after their event), or after 2 s.
   */
  async function mailFlows(p: { child: ChildProcess; port: number; metricsPort: number }, atLeast: number): Promise<number> {
    const c = await MilterClient.connect({ host: "127.0.0.1", port: p.port });
    try {
      for (let i = 0; i < 20; i++) assert.deepEqual(await c.sendMessage(message({ queueId: `OK${i}` })), accepted(0));
      for (let i = 0; i < 5; i++) {
        const spec = message({ queueId: `NO${i}`, from: "Mallory <m@unknown.example>" });
        assert.deepEqual(await c.sendMessage(spec), rejected(`NO${i}`, "No policy for 5322.from_domain unknown.example"));
      }
      await c.quit();
    } finally {
      c.destroy();
    }
    assert.equal(p.child.exitCode, null);
    assert.equal(p.child.signalCode, null);
    const until = Date.now() + 2000;
    for (;;) {
      const dropped = (await scrape(p.metricsPort)).get("exota_milter_log_lines_dropped_total")!;
      if (dropped >= atLeast || Date.now() > until) return dropped;
      await sleep(25);
    }
  }

  it("standard error on a full disk (/dev/full): every line dropped and counted, mail decided, SIGTERM exits 0", async () => {
    const full = openSync("/dev/full", "w");
    let p;
    try {
      p = await startBlind(full);
    } finally {
      closeSync(full);
    }
    // The listening line and at least the 25 decisions.
    assert.ok((await mailFlows(p, 26)) >= 26);
    p.child.kill("SIGTERM");
    assert.equal(await exited(p.child), "0");
  });

  it("standard error on a pipe whose reader has gone (EPIPE, SIGPIPE): lines dropped and counted, mail decided, SIGTERM exits 0", async () => {
    const fifo = join(scratchDir(), "stderr.fifo");
    execFileSync("mkfifo", [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, "w");
    let p;
    try {
      p = await startBlind(writer);
    } finally {
      closeSync(writer);
    }
    closeSync(reader);
    assert.ok((await mailFlows(p, 25)) >= 25);
    p.child.kill("SIGTERM");
    assert.equal(await exited(p.child), "0");
  });
});

describe("SIGTERM", () => {
  it("a connection whose next message is on the wire is not idle: MAIL macros, or part of a frame, then the signal; the message is decided, then the connection closes; exit 0", async () => {
    const m = await startTcpMilter({ MILTER_POLICY_FILE: policyFile(), LOG_FORMAT: "text" });
    const macros = await m.connect();
    const partial = await m.connect();
    try {
      for (const c of [macros, partial]) assert.deepEqual(await c.sendMessage(message({ queueId: "FIRST" })), accepted(0));
      // The next message has begun: its MAIL-stage macros; two bytes of its first frame.
      macros.sendMacros("mail", { i: "NEXT1" });
      const rec = await partial.record(() => partial.sendMessage(message({ queueId: "NEXT2", session: false })));
      partial.sendRaw(rec.bytes.subarray(0, 2));
      await sleep(300);
      m.proc.child.kill("SIGTERM");
      await m.proc.waitForLog(/SIGTERM: stopping, 2 connection\(s\) open/);
      // Longer than a connection between messages is kept (1 s).
      await sleep(1500);
      assert.equal(macros.ended, false, "closed with the MAIL macros of a message received");
      assert.equal(partial.ended, false, "closed with part of a frame received");
      assert.deepEqual(await macros.sendMessage(message({ queueId: "NEXT1", session: false })), accepted(0));
      partial.sendRaw(rec.bytes.subarray(2));
      assert.deepEqual(await partial.collect(rec.answered), [[{ type: "continue" }], accepted(0)]);
      // Closed with the end-of-message reply: the message boundary.
      await Promise.all([macros.waitClosed(1000), partial.waitClosed(1000)]);
      assert.equal(await exited(m.proc.child), "0");
      assert.match(m.proc.log(), /stopped: "all connections closed"/);
    } finally {
      macros.destroy();
      partial.destroy();
      await m.proc.stop();
    }
  });

  /**
   * 20 connections each send messages back to back as Postfix does within
   * one SMTP session (CONNECT and HELO once, the next message 2 ms after the
   * last reply) until they see the milter close; SIGTERM after 0.8 s.
   * Cut: a message whose DATA the milter had answered (so it had the
   * message) that got no end-of-message reply. Begun after the close: a
   * message the client started on a connection the milter had closed with
   * its last reply (an MTA applies milter_default_action to it).
   */
  async function run(round: number): Promise<{ decided: number; cut: number; afterClose: number }> {
    const m = await startTcpMilter({ MILTER_POLICY_FILE: policyFile(), LOG_FORMAT: "text" });
    const stats = { decided: 0, cut: 0, afterClose: 0 };
    const clients: MilterClient[] = [];
    try {
      for (let i = 0; i < 20; i++) clients.push(await m.connect());
      const loops = clients.map(async (c, i) => {
        for (let n = 0;; n++) {
          // The SMTP round trip before the next message, then a look at the socket.
          await sleep(2);
          await new Promise((res) => setImmediate(res));
          if (c.ended) return;
          try {
            assert.deepEqual(await c.sendMessage(message({ queueId: `R${round}C${i}M${n}`, session: n === 0 })), accepted(0));
            stats.decided++;
          } catch (e) {
            if (!(e instanceof ProtocolError)) throw e;
            if (/reply to 'data'/.test(e.message)) stats.afterClose++;
            else stats.cut++;
            return;
          }
        }
      });
      await sleep(800);
      m.proc.child.kill("SIGTERM");
      await Promise.all(loops);
      assert.equal(await exited(m.proc.child), "0", m.proc.log());
      assert.match(m.proc.log(), /stopped: "all connections closed"/);
    } finally {
      for (const c of clients) c.destroy();
      await m.proc.stop();
    }
    return stats;
  }

  it("under load, 3 runs: every message the milter had is decided (0 cut); exit 0 before the deadline", { timeout: 60_000 }, async () => {
    const runs = [];
    for (let i = 0; i < 3; i++) runs.push(await run(i));
    console.log(`SIGTERM under load: ${runs.map((r) => `${r.decided} decided, ${r.cut} cut, ${r.afterClose} begun after the close`).join("; ")}`);
    for (const r of runs) {
      assert.ok(r.decided > 20, `only ${r.decided} messages under load`);
      assert.equal(r.cut, 0);
    }
  });
});

describe("a flood at MILTER_MAX_CONNECTIONS", () => {
  it("200 refused connections: one WARNING line at once, one line with the count 10 s later, every one in the metrics", { timeout: 60_000 }, async () => {
    const m = await startTcpMilter({
      MILTER_POLICY_FILE: policyFile(),
      MILTER_MAX_CONNECTIONS: "2",
      LOG_FORMAT: "text",
    }, { metrics: true });
    const held = [await m.connect(), await m.connect()];
    try {
      for (const c of held) await c.negotiate();
      const from = m.proc.log().length;
      const t0 = performance.now();
      for (let batch = 0; batch < 10; batch++) {
        await Promise.all(Array.from({ length: 20 }, async () => {
          const c = await m.connect();
          try {
            await c.waitClosed(5000);
          } finally {
            c.destroy();
          }
        }));
      }
      const s = await m.scrape();
      assert.deepEqual(series(s, "exota_milter_connections_refused_total"), {
        'exota_milter_connections_refused_total{reason="limit"}': 200,
        'exota_milter_connections_refused_total{reason="shutting_down"}': 0,
      });
      const refusing = () => m.proc.log().slice(from).split("\n").filter((l) => /refus/.test(l));
      if (performance.now() - t0 < 9000) assert.equal(refusing().length, 1, refusing().join("\n"));
      assert.match(refusing()[0]!, /WARNING .*refusing connection on inet:\d+@127\.0\.0\.1 conn=\d+ reason="2 connections open \(MILTER_MAX_CONNECTIONS\)"/);
      await m.proc.waitForLog(/WARNING .*refused 199 more connection\(s\) in the last 10 s reason="2 connections open \(MILTER_MAX_CONNECTIONS\)"/, 15_000, from);
      assert.equal(refusing().length, 2, refusing().join("\n"));
    } finally {
      for (const c of held) c.destroy();
      await m.proc.stop();
    }
  });
});
