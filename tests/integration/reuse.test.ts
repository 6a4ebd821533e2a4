/**
 * One milter connection, many messages, as an MTA reuses it: every message
 * is decided on its own facts. Nothing of an earlier (or aborted) message may
 * authorise a later one; what belongs to the SMTP session (the client
 * address, the certificate from the HELO stage) stays until the session ends.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  accepted,
  addedHeader,
  ALLOWLISTED_CLIENT,
  EXO_CLIENT,
  EXOTA,
  type Facts,
  message,
  policyFile,
  rejected,
  removeScratch,
  startTcpMilter,
  type TcpMilter,
  TRUSTED_CN,
  ALL_CHECKS_ENV,
} from "../lib/fixtures.ts";
import type { MilterClient } from "../lib/milter-client.ts";
import type { Reply } from "../../src/milter/types.ts";

after(removeScratch);

describe("connection reuse", () => {
  let m: TcpMilter;
  before(async () => {
    m = await startTcpMilter({
      ...ALL_CHECKS_ENV,
      MILTER_X509_IP_WHITELIST: ALLOWLISTED_CLIENT.address,
      MILTER_POLICY_FILE: policyFile(),
    });
  });
  after(async () => {
    await m?.proc.stop();
  });

  const ok = (x509 = true, deletions = 0) =>
    accepted(deletions, addedHeader({ domain: "tenant.example", dkim: true, aligned: true, x509, forwarded: false }));

  /** First message of a session: CONNECT from Exchange Online, HELO with the trusted certificate. */
  const first = (f: Facts = {}) => message({ cn: TRUSTED_CN, ...f });
  /** A later message of the same session: no CONNECT, no HELO. */
  const next = (f: Facts = {}) => message({ session: false, ...f });

  async function withConnection(fn: (c: MilterClient) => Promise<void>): Promise<void> {
    const c = await m.connect();
    try {
      await fn(c);
      await c.quit();
    } finally {
      c.destroy();
    }
  }

  const send = (c: MilterClient, f: Facts, expected: Reply[], what: string) =>
    c.sendMessage(first(f)).then((r) => assert.deepEqual(r, expected, what));

  it("accept, reject, accept with ABORT between messages; the HELO certificate stays valid", () =>
    withConnection(async (c) => {
      assert.deepEqual(await c.sendMessage(first({ queueId: "MSG1" })), ok(), "message 1");
      await c.abort();
      assert.deepEqual(await c.sendMessage(next({ queueId: "MSG2", tenantIds: [] })), rejected("MSG2", "Tenant-ID is missing!"), "message 2");
      await c.abort();
      assert.deepEqual(await c.sendMessage(next({ queueId: "MSG3" })), ok(), "message 3");
      await c.abort();
    }));

  it("accept, reject, accept without ABORT (a new MAIL after end of message)", () =>
    withConnection(async (c) => {
      assert.deepEqual(await c.sendMessage(first({ queueId: "MSG1" })), ok(), "message 1");
      assert.deepEqual(
        await c.sendMessage(next({ queueId: "MSG2", from: "x@unknown.example" })),
        rejected("MSG2", "No policy for 5322.from_domain unknown.example"),
        "message 2",
      );
      assert.deepEqual(await c.sendMessage(next({ queueId: "MSG3" })), ok(), "message 3");
    }));

  it("many messages on one connection, alternating verdicts", () =>
    withConnection(async (c) => {
      await send(c, {}, ok(), "first");
      for (let i = 0; i < 50; i++) {
        const bad = i % 2 === 1;
        const r = await c.sendMessage(next({ queueId: `Q${i}`, ...(bad ? { authResults: [] } : {}) }));
        assert.deepEqual(r, bad ? rejected(`Q${i}`, "No valid DKIM authentication results found") : ok(), `message ${i}`);
        if (i % 3 === 0) await c.abort();
      }
    }));

  describe("nothing of an aborted message authorises the next one", () => {
    /** A message that would be accepted, aborted after its headers. */
    const abortGood = async (c: MilterClient, f: Facts = {}) => {
      assert.deepEqual(await c.sendMessage(next({ queueId: "ABORTED1", stopAfterHeaders: true, ...f })), []);
      await c.abort();
    };

    it("its From", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c);
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT1", from: null })), rejected("NEXT1", "5322.from header missing"));
      }));

    it("its DKIM result", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c);
        assert.deepEqual(
          await c.sendMessage(next({ queueId: "NEXT2", authResults: [] })),
          rejected("NEXT2", "No valid DKIM authentication results found"),
        );
      }));

    it("its tenant id", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c);
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT3", tenantIds: [] })), rejected("NEXT3", "Tenant-ID is missing!"));
      }));

    it("its tenant id does not make a second, different value either", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c, { tenantIds: ["5678abcd-18c5-45e8-88de-123456789abc"] });
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT4" })), ok());
      }));

    it("its forged X-ExOTA headers (no deletions carried over)", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c, { extraHeaders: [[EXOTA, "forged"], [EXOTA, "forged"]] });
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT5" })), ok());
      }));

    it("its queue id", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        await abortGood(c);
        assert.deepEqual(
          await c.sendMessage(next({ queueId: null, from: "x@unknown.example" })),
          rejected("NOQUEUE", "No policy for 5322.from_domain unknown.example"),
        );
      }));

    it("nor of a completed message (no ABORT): its From and tenant id", () =>
      withConnection(async (c) => {
        await send(c, {}, ok(), "session start");
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT6", from: null })), rejected("NEXT6", "5322.from header missing"));
        assert.deepEqual(await c.sendMessage(next({ queueId: "NEXT7", tenantIds: [] })), rejected("NEXT7", "Tenant-ID is missing!"));
      }));
  });

  it("the certificate from HELO stays valid for later messages, also after a rejected one", () =>
    withConnection(async (c) => {
      await send(c, { queueId: "C1", from: null }, rejected("C1", "5322.from header missing"), "message 1");
      assert.deepEqual(await c.sendMessage(next({ queueId: "C2" })), ok(true), "message 2");
      await c.abort();
      assert.deepEqual(await c.sendMessage(next({ queueId: "C3" })), ok(true), "message 3");
    }));

  it("a new HELO (EHLO after STARTTLS) replaces the HELO macros", () =>
    withConnection(async (c) => {
      // EHLO before STARTTLS: no certificate yet; the message is sent after the second EHLO.
      await c.sendMessage({ ...message({ queueId: "T0", stopAfterHeaders: true }) });
      await c.abort();
      assert.deepEqual(
        await c.sendMessage({ ...next({ queueId: "T1", cn: TRUSTED_CN }), helo: "EUR05-DB8-obe.outbound.protection.outlook.com" }),
        ok(true),
      );
      // A later EHLO without certificate takes it away again.
      assert.deepEqual(
        await c.sendMessage({ ...next({ queueId: "T2" }), helo: "other" }),
        rejected("T2", "No trusted x509 client CN found"),
      );
    }));

  describe("frames in any packaging", () => {
    /** Session start plus three messages (accept, reject, accept), recorded, not sent. */
    async function recorded(c: MilterClient) {
      await c.negotiate();
      const rec = await c.record(async () => {
        await c.sendMessage(first({ queueId: "P1" }));
        await c.abort();
        await c.sendMessage(next({ queueId: "P2", tenantIds: [] }));
        await c.sendMessage(next({ queueId: "P3", extraHeaders: [[EXOTA, "forged"]] }));
      });
      // Over TCP DATA is answered too, so Postfix reads between its two writes (no Nagle stall).
      assert.deepEqual(rec.answered, ["data", "eom", "data", "eom", "data", "eom"], "under Postfix's negotiation over TCP only DATA and end of message are answered");
      return rec;
    }
    const data = [{ type: "continue" }];
    const expected = () => [data, ok(), data, rejected("P2", "Tenant-ID is missing!"), data, ok(true, 1)];

    it("three messages pipelined in one write", () =>
      withConnection(async (c) => {
        const rec = await recorded(c);
        c.sendRaw(rec.bytes);
        assert.deepEqual(await c.collect(rec.answered), expected());
      }));

    it("one byte per write", () =>
      withConnection(async (c) => {
        const rec = await recorded(c);
        for (let i = 0; i < rec.bytes.length; i++) {
          c.sendRaw(rec.bytes.subarray(i, i + 1));
          if (i % 4 === 0) await new Promise((r) => setImmediate(r));
        }
        assert.deepEqual(await c.collect(rec.answered), expected());
      }));

    it("chunks of odd sizes, cutting frames and length fields anywhere", () =>
      withConnection(async (c) => {
        const rec = await recorded(c);
        for (let i = 0, n = 1; i < rec.bytes.length; i += n, n = (n * 7 + 3) % 29 + 1) {
          c.sendRaw(rec.bytes.subarray(i, i + n));
          await new Promise((r) => setImmediate(r));
        }
        assert.deepEqual(await c.collect(rec.answered), expected());
      }));
  });

  describe("QUIT_NC: a new SMTP session on the same milter connection", () => {
    it("a new CONNECT works and is decided on its own", () =>
      withConnection(async (c) => {
        await send(c, { queueId: "S1" }, ok(), "session 1");
        await c.send({ type: "quit_nc" });
        assert.equal(c.closed, false);
        // Session 2 comes from an allow-listed client without a certificate.
        assert.deepEqual(await c.sendMessage(message({ queueId: "S2", client: ALLOWLISTED_CLIENT })), ok(false), "session 2");
        await c.send({ type: "quit_nc" });
        // Session 3: Exchange Online again, with the certificate.
        assert.deepEqual(await c.sendMessage(first({ queueId: "S3" })), ok(true), "session 3");
      }));

    it("the certificate of the previous session does not carry over", () =>
      withConnection(async (c) => {
        await send(c, { queueId: "S1" }, ok(), "session 1");
        await c.send({ type: "quit_nc" });
        assert.deepEqual(
          await c.sendMessage(message({ queueId: "S2", client: EXO_CLIENT })),
          rejected("S2", "No trusted x509 client CN found"),
          "session 2 without certificate",
        );
      }));

    it("the client address of the previous session does not carry over", () =>
      withConnection(async (c) => {
        assert.deepEqual(await c.sendMessage(message({ queueId: "S1", client: ALLOWLISTED_CLIENT })), ok(false), "session 1");
        await c.send({ type: "quit_nc" });
        // CONNECT without an address (family unknown): not allow-listed.
        assert.deepEqual(
          await c.sendMessage(message({ queueId: "S2", client: { hostname: "unknown", family: "unknown" } })),
          rejected("S2", "No trusted x509 client CN found"),
          "session 2",
        );
      }));

    it("a message cut off by QUIT_NC leaves nothing behind", () =>
      withConnection(async (c) => {
        assert.deepEqual(await c.sendMessage(first({ queueId: "S1", stopAfterHeaders: true })), []);
        await c.send({ type: "quit_nc" });
        assert.deepEqual(
          await c.sendMessage(first({ queueId: "S2", from: null })),
          rejected("S2", "5322.from header missing"),
        );
      }));
  });
});
