/**
 * The per-connection milter state machine, with a fake filter that records
 * what the session asks of it.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MacroStore } from "../../src/milter/macros.ts";
import type { FilterNeeds } from "../../src/milter/negotiate.ts";
import { Action, MacroStage, Proto } from "../../src/milter/protocol.ts";
import { type ConnectInfo, type Filter, type Macros, MilterSession, type SessionOutput } from "../../src/milter/session.ts";
import type { Command, Reply } from "../../src/milter/types.ts";

const ALL_ACTIONS = 0x1ff;
const ALL_PROTOCOL = 0x1fffff;
const NR_BITS = Proto.NR_CONN | Proto.NR_HELO | Proto.NR_MAIL | Proto.NR_RCPT | Proto.NR_DATA | Proto.NR_HDR |
  Proto.NR_EOH | Proto.NR_BODY | Proto.NR_UNKN;
const MACROS = new Map<number, string[]>([
  [MacroStage.HELO, ["{cert_subject}"]],
  [MacroStage.ENVFROM, ["i"]],
  [MacroStage.EOM, ["i"]],
]);

class FakeFilter implements Filter {
  calls: string[] = [];
  /** Macro values seen at each end of message. */
  seen: Array<{ i: string | undefined; cert: string | undefined }> = [];
  eomReplies: Reply[] = [{ type: "continue" }];
  asyncEom = false;
  failEom: "sync" | "async" | undefined;

  constructor(readonly needs: FilterNeeds) {}

  connect(info: ConnectInfo, _macros: Macros): void {
    this.calls.push(`connect ${info.hostname} ${info.family} ${info.address} ${info.port}`);
  }
  header(name: string, value: string, _macros: Macros): void {
    this.calls.push(`header ${name}: ${value}`);
  }
  endOfMessage(macros: Macros): Reply[] | Promise<Reply[]> {
    this.calls.push("eom");
    this.seen.push({ i: macros.get("i"), cert: macros.get("cert_subject") });
    if (this.failEom === "sync") throw new Error("boom");
    if (this.failEom === "async") return Promise.reject(new Error("async boom"));
    return this.asyncEom ? new Promise((resolve) => setTimeout(() => resolve(this.eomReplies), 1)) : this.eomReplies;
  }
  resetMessage(): void {
    this.calls.push("reset");
  }
}

const needs = (over: Partial<FilterNeeds> = {}): FilterNeeds => ({
  actions: Action.CHGHDRS | Action.ADDHDRS,
  protocol: NR_BITS | Proto.NORCPT | Proto.NOBODY,
  macros: MACROS,
  ...over,
});

const optneg = (over: Partial<{ version: number; actions: number; protocol: number }> = {}): Command => ({
  type: "optneg",
  version: 6,
  actions: ALL_ACTIONS,
  protocol: ALL_PROTOCOL,
  ...over,
});

function sync(out: SessionOutput | Promise<SessionOutput>): SessionOutput {
  assert.ok(!(out instanceof Promise), "expected a synchronous answer");
  return out;
}

function session(n: FilterNeeds = needs(), offer: Command = optneg()): { s: MilterSession; f: FakeFilter } {
  const f = new FakeFilter(n);
  const s = new MilterSession(f);
  const out = sync(s.handle(offer));
  assert.equal(out.close, undefined, "negotiation should succeed");
  f.calls = [];
  return { s, f };
}

const CONNECT: Command = { type: "connect", hostname: "mail.example", family: "inet", port: 25, address: "192.0.2.1" };
const HELO_MACROS: Command = { type: "macro", stage: "H", macros: [["{cert_subject}", "mail.protection.outlook.com"]] };
const mailMacros = (id: string): Command => ({ type: "macro", stage: "M", macros: [["i", id]] });
const MAIL: Command = { type: "mail", args: ["<a@tenant.example>"] };
const HEADER: Command = { type: "header", name: "From", value: "a@tenant.example" };
const EOM: Command = { type: "eom", chunk: new Uint8Array(0) };

async function feed(s: MilterSession, cmds: readonly Command[]): Promise<SessionOutput[]> {
  const out: SessionOutput[] = [];
  for (const c of cmds) out.push(await s.handle(c));
  return out;
}

describe("negotiation", () => {
  it("takes only the protocol bits the MTA offers", () => {
    const f = new FakeFilter(needs());
    const s = new MilterSession(f);
    const offered = Proto.NR_HDR | Proto.NR_CONN | Proto.NOBODY | Proto.SKIP | Proto.HDR_LEADSPC;
    const out = sync(s.handle(optneg({ protocol: offered })));
    assert.equal(out.close, undefined);
    assert.deepEqual(out.replies, [{
      type: "optneg",
      version: 6,
      actions: Action.CHGHDRS | Action.ADDHDRS | Action.SETSYMLIST,
      protocol: Proto.NR_HDR | Proto.NR_CONN | Proto.NOBODY,
      macros: MACROS,
    }]);
    assert.equal(s.agreement?.protocol, Proto.NR_HDR | Proto.NR_CONN | Proto.NOBODY);
  });

  it("asks for the macro list (SETSYMLIST) only when offered", () => {
    const f = new FakeFilter(needs());
    const s = new MilterSession(f);
    const out = sync(s.handle(optneg({ actions: ALL_ACTIONS & ~Action.SETSYMLIST })));
    assert.deepEqual(out.replies, [{
      type: "optneg",
      version: 6,
      actions: Action.CHGHDRS | Action.ADDHDRS,
      protocol: needs().protocol,
    }]);
    const reply = out.replies[0]!;
    assert.ok(reply.type === "optneg" && !("macros" in reply));
  });

  it("no macro list below protocol version 6, and the version is the MTA's", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    const out = sync(s.handle(optneg({ version: 4 })));
    assert.deepEqual(out.replies, [{ type: "optneg", version: 4, actions: Action.CHGHDRS | Action.ADDHDRS, protocol: needs().protocol }]);
  });

  it("answers with version 6 when the MTA speaks a newer one", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    const out = sync(s.handle(optneg({ version: 8 })));
    const r = out.replies[0]!;
    assert.ok(r.type === "optneg");
    assert.equal(r.version, 6);
  });

  it("no macro list when the filter needs none", () => {
    const s = new MilterSession(new FakeFilter(needs({ macros: new Map() })));
    const out = sync(s.handle(optneg()));
    assert.deepEqual(out.replies, [{ type: "optneg", version: 6, actions: Action.CHGHDRS | Action.ADDHDRS, protocol: needs().protocol }]);
  });

  it("fails (close with error) when the MTA does not offer CHGHDRS", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    const out = sync(s.handle(optneg({ actions: ALL_ACTIONS & ~Action.CHGHDRS })));
    assert.deepEqual(out.replies, []);
    assert.deepEqual(out.close, { error: true, reason: "negotiation failed: MTA does not offer the actions CHGHDRS" });
    assert.equal(s.agreement, undefined);
  });

  it("names every missing action", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    const out = sync(s.handle(optneg({ actions: 0 })));
    assert.deepEqual(out.close, { error: true, reason: "negotiation failed: MTA does not offer the actions ADDHDRS|CHGHDRS" });
  });

  it("rejects protocol version < 2", () => {
    for (const version of [0, 1]) {
      const s = new MilterSession(new FakeFilter(needs()));
      const out = sync(s.handle(optneg({ version })));
      assert.deepEqual(out.replies, []);
      assert.deepEqual(out.close, {
        error: true,
        reason: `negotiation failed: MTA speaks milter protocol version ${version}, at least 2 is needed`,
      });
    }
  });

  it("accepts version 2", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    const out = sync(s.handle(optneg({ version: 2 })));
    assert.equal(out.close, undefined);
    assert.equal(s.agreement?.version, 2);
  });

  it("commands before optneg close the connection with an error", () => {
    const cmds: Command[] = [CONNECT, HELO_MACROS, { type: "helo", name: "x" }, MAIL, HEADER, EOM, { type: "abort" }, { type: "quit" }];
    for (const c of cmds) {
      const f = new FakeFilter(needs());
      const s = new MilterSession(f);
      const out = sync(s.handle(c));
      assert.deepEqual(out, { replies: [], close: { error: true, reason: `'${c.type}' command before option negotiation` } });
      assert.deepEqual(f.calls, [], "the filter is not called");
    }
  });

  it("commands after a failed negotiation still close with an error", () => {
    const s = new MilterSession(new FakeFilter(needs()));
    sync(s.handle(optneg({ version: 1 })));
    assert.equal(sync(s.handle(CONNECT)).close?.error, true);
  });

  it("optneg resets macros and the message", () => {
    const { s, f } = session();
    sync(s.handle(HELO_MACROS));
    assert.equal(s.macros.get("cert_subject"), "mail.protection.outlook.com");
    sync(s.handle(optneg()));
    assert.equal(s.macros.get("cert_subject"), undefined);
    assert.deepEqual(f.calls, ["reset"]);
  });
});

describe("replies to each command", () => {
  const steps: Command[] = [
    CONNECT,
    { type: "helo", name: "x" },
    MAIL,
    { type: "rcpt", args: ["<b@x>"] },
    { type: "data" },
    HEADER,
    { type: "eoh" },
    { type: "body", chunk: new Uint8Array([1]) },
    { type: "unknown", line: "FOO" },
  ];

  it("NR_* agreed: no reply to connect/helo/mail/rcpt/data/header/eoh/body/unknown", () => {
    const { s } = session(needs({ protocol: NR_BITS }));
    for (const c of steps) assert.deepEqual(sync(s.handle(c)), { replies: [] }, c.type);
  });

  it("NR_* wished but not offered: every such command gets continue", () => {
    const { s } = session(needs({ protocol: NR_BITS }), optneg({ protocol: 0 }));
    for (const c of steps) assert.deepEqual(sync(s.handle(c)), { replies: [{ type: "continue" }] }, c.type);
  });

  it("no NR_* wished: every such command gets continue", () => {
    const { s } = session(needs({ protocol: 0 }));
    for (const c of steps) assert.deepEqual(sync(s.handle(c)), { replies: [{ type: "continue" }] }, c.type);
  });

  it("only the agreed NR bit suppresses its reply", () => {
    const { s } = session(needs({ protocol: NR_BITS }), optneg({ protocol: Proto.NR_HDR }));
    assert.deepEqual(sync(s.handle(HEADER)).replies, []);
    assert.deepEqual(sync(s.handle(CONNECT)).replies, [{ type: "continue" }]);
    assert.deepEqual(sync(s.handle(MAIL)).replies, [{ type: "continue" }]);
  });

  it("macro and abort get no reply", () => {
    const { s } = session(needs({ protocol: 0 }));
    assert.deepEqual(sync(s.handle(HELO_MACROS)), { replies: [] });
    assert.deepEqual(sync(s.handle({ type: "abort" })), { replies: [] });
  });

  it("eom returns the filter's replies", () => {
    const { s, f } = session();
    f.eomReplies = [{ type: "addheader", name: "X", value: "y" }, { type: "continue" }];
    assert.deepEqual(sync(s.handle(EOM)), { replies: f.eomReplies });
  });

  it("quit closes without error", () => {
    const { s } = session();
    assert.deepEqual(sync(s.handle({ type: "quit" })), { replies: [], close: { error: false, reason: "quit" } });
  });

  it("the filter sees connect info and headers", () => {
    const { s, f } = session();
    sync(s.handle(CONNECT));
    sync(s.handle({ type: "connect", hostname: "unknown", family: "unknown" }));
    sync(s.handle(HEADER));
    assert.deepEqual(f.calls, [
      "reset",
      "connect mail.example inet 192.0.2.1 25",
      "reset",
      "connect unknown unknown undefined undefined",
      "header From: a@tenant.example",
    ]);
  });
});

describe("macros", () => {
  it("{cert_subject} from the HELO stage stays valid across messages (after EOM and after ABORT)", async () => {
    const { s, f } = session();
    await feed(s, [
      { type: "macro", stage: "C", macros: [["j", "mx"]] },
      CONNECT,
      HELO_MACROS,
      { type: "helo", name: "x" },
      // message 1 ends with EOM
      mailMacros("Q1"),
      MAIL,
      HEADER,
      { type: "macro", stage: "E", macros: [["i", "Q1"]] },
      EOM,
      // message 2 is aborted
      mailMacros("Q2"),
      MAIL,
      { type: "abort" },
      // message 3 has no queue id macros
      MAIL,
      EOM,
    ]);
    assert.deepEqual(f.seen, [
      { i: "Q1", cert: "mail.protection.outlook.com" },
      { i: undefined, cert: "mail.protection.outlook.com" },
    ]);
    assert.equal(s.macros.get("cert_subject"), "mail.protection.outlook.com");
    assert.equal(s.macros.get("j"), "mx");
  });

  it("`i` from the MAIL stage is gone after ABORT", () => {
    const { s } = session();
    sync(s.handle(HELO_MACROS));
    sync(s.handle(mailMacros("Q1")));
    sync(s.handle(MAIL));
    assert.equal(s.macros.get("i"), "Q1");
    sync(s.handle({ type: "abort" }));
    assert.equal(s.macros.get("i"), undefined);
    assert.equal(s.macros.get("{cert_subject}"), "mail.protection.outlook.com");
  });

  it("`i` from the MAIL stage is gone after EOM", () => {
    const { s } = session();
    sync(s.handle(mailMacros("Q1")));
    sync(s.handle(MAIL));
    sync(s.handle(EOM));
    assert.equal(s.macros.get("i"), undefined);
  });

  it("the MAIL macros sent just before MAIL survive the MAIL command; older message stages do not", () => {
    const { s } = session();
    sync(s.handle({ type: "macro", stage: "R", macros: [["{rcpt_addr}", "old@x"]] }));
    sync(s.handle({ type: "macro", stage: "E", macros: [["i", "OLD"]] }));
    sync(s.handle(mailMacros("NEW")));
    sync(s.handle(MAIL));
    assert.equal(s.macros.get("i"), "NEW");
    assert.equal(s.macros.get("rcpt_addr"), undefined);
  });

  it("braces are ignored in names: {i} = i", () => {
    const { s, f } = session();
    sync(s.handle({ type: "macro", stage: "M", macros: [["{i}", "Q9"], ["cert_subject", "bare"]] }));
    assert.equal(s.macros.get("i"), "Q9");
    assert.equal(s.macros.get("{i}"), "Q9");
    assert.equal(s.macros.get("{cert_subject}"), "bare");
    sync(s.handle(EOM));
    assert.deepEqual(f.seen, [{ i: "Q9", cert: "bare" }]);
  });

  it("later stages win over earlier ones", () => {
    const { s } = session();
    sync(s.handle({ type: "macro", stage: "M", macros: [["i", "FROM-MAIL"]] }));
    sync(s.handle({ type: "macro", stage: "E", macros: [["i", "FROM-EOM"]] }));
    assert.equal(s.macros.get("i"), "FROM-EOM");
  });

  it("a new macro set replaces the stage's old one", () => {
    const { s } = session();
    sync(s.handle({ type: "macro", stage: "H", macros: [["{cert_subject}", "a"], ["{cert_issuer}", "b"]] }));
    sync(s.handle({ type: "macro", stage: "H", macros: [["{cert_subject}", "c"]] }));
    assert.equal(s.macros.get("cert_subject"), "c");
    assert.equal(s.macros.get("cert_issuer"), undefined);
  });

  it("connect forgets the macros of later stages (HELO), keeps its own", () => {
    const { s } = session();
    sync(s.handle({ type: "macro", stage: "C", macros: [["j", "mx"]] }));
    sync(s.handle(HELO_MACROS));
    sync(s.handle(CONNECT));
    assert.equal(s.macros.get("j"), "mx");
    assert.equal(s.macros.get("cert_subject"), undefined);
  });

  it("quit_nc clears all macros and the message", () => {
    const { s, f } = session();
    sync(s.handle({ type: "macro", stage: "C", macros: [["j", "mx"]] }));
    sync(s.handle(HELO_MACROS));
    sync(s.handle(mailMacros("Q1")));
    const out = sync(s.handle({ type: "quit_nc" }));
    assert.deepEqual(out, { replies: [] });
    assert.equal(s.macros.get("j"), undefined);
    assert.equal(s.macros.get("cert_subject"), undefined);
    assert.equal(s.macros.get("i"), undefined);
    assert.deepEqual(f.calls, ["reset"]);
  });

  it("MacroStore: the latest stage wins, within a stage the last one sent; a stage is replaced whole", () => {
    const m = new MacroStore();
    m.set("C", [["j", "mx"], ["{i}", "from-connect"]]);
    m.set("M", [["i", "Q1"], ["{mail_addr}", "a@x"], ["{i}", "Q1-last"]]);
    assert.equal(m.get("i"), "Q1-last");
    assert.equal(m.get("{i}"), "Q1-last");
    m.set("E", [["i", "Q1-eom"]]);
    assert.equal(m.get("i"), "Q1-eom");
    assert.equal(m.get("mail_addr"), "a@x");
    m.set("M", [["i", "Q2"]]);
    assert.equal(m.get("mail_addr"), undefined, "the M stage was replaced");
    m.clearAfter("M");
    assert.equal(m.get("i"), "Q2");
    m.clearMessage();
    assert.equal(m.get("i"), "from-connect");
    assert.equal(m.get("j"), "mx");
    m.clearAll();
    assert.equal(m.get("j"), undefined);
  });

  it("MacroStore: `{}` and `{x` are names of their own", () => {
    const m = new MacroStore();
    m.set("C", [["{}", "empty"], ["{x", "open"]]);
    assert.equal(m.get("{}"), "empty");
    assert.equal(m.get("{x"), "open");
    assert.equal(m.get("x"), undefined);
  });
});

describe("message boundaries", () => {
  it("resetMessage is called on ABORT, on MAIL and after EOM", async () => {
    const { s, f } = session();
    await feed(s, [CONNECT, MAIL, HEADER, EOM, MAIL, { type: "abort" }, MAIL]);
    assert.deepEqual(f.calls, [
      "reset",
      "connect mail.example inet 192.0.2.1 25",
      "reset", // MAIL
      "header From: a@tenant.example",
      "eom",
      "reset", // after EOM
      "reset", // MAIL
      "reset", // ABORT
      "reset", // MAIL
    ]);
  });

  it("an async endOfMessage (Promise) works, and the message ends after it", async () => {
    const { s, f } = session();
    f.asyncEom = true;
    f.eomReplies = [{ type: "chgheader", index: 1, name: "X", value: "" }, { type: "continue" }];
    sync(s.handle(mailMacros("Q1")));
    const out = s.handle(EOM);
    assert.ok(out instanceof Promise);
    assert.deepEqual(f.calls, ["eom"], "reset only after the promise settles");
    assert.deepEqual(await out, { replies: f.eomReplies });
    assert.deepEqual(f.calls, ["eom", "reset"]);
    assert.equal(s.macros.get("i"), undefined);
  });

  it("an endOfMessage that throws: the error propagates, the message still ends", () => {
    const { s, f } = session();
    f.failEom = "sync";
    sync(s.handle(mailMacros("Q1")));
    assert.throws(() => s.handle(EOM), /boom/);
    assert.deepEqual(f.calls, ["eom", "reset"]);
    assert.equal(s.macros.get("i"), undefined);
  });

  it("an endOfMessage that rejects: the promise rejects, the message still ends", async () => {
    const { s, f } = session();
    f.failEom = "async";
    sync(s.handle(mailMacros("Q1")));
    await assert.rejects(Promise.resolve(s.handle(EOM)), /async boom/);
    assert.deepEqual(f.calls, ["eom", "reset"]);
    assert.equal(s.macros.get("i"), undefined);
  });

  it("one connection serves many messages", async () => {
    const { s, f } = session();
    sync(s.handle(HELO_MACROS));
    for (let n = 1; n <= 5; n++) {
      await feed(s, [mailMacros(`Q${n}`), MAIL, HEADER, EOM]);
    }
    assert.deepEqual(f.seen.map((x) => x.i), ["Q1", "Q2", "Q3", "Q4", "Q5"]);
    assert.ok(f.seen.every((x) => x.cert === "mail.protection.outlook.com"));
  });
});
