/**
 * `exota-milter check --postfix=DIR` against Postfix configurations written
 * by the e2e chain's own code (writePostfixConfig) and read by the real
 * postconf: a correct one reports nothing, each mistake exactly its problem,
 * and the line the audit says to write instead makes it go away. The
 * fallback parser (no postconf) must find the same problems.
 *
 * That the mistakes matter was measured with the real chain (Postfix 3.7):
 * `{ socket, default_action = tempfail }` makes smtpd exit with "malformed
 * option" on every connection; milter_protocol 4 with milter_helo_macros
 * lacking {cert_subject} rejects every message; at protocol 6 the milter
 * asks for its macros itself and an empty milter_helo_macros does no harm.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { checkPostfix, milterFacts, readPostfixConfig } from "../../src/cli/postfix.ts";
import { loadConfig } from "../../src/config.ts";
import { auditPostfix } from "../../src/postfix/audit.ts";
import { exotaEnv, type PostfixConfigSpec, TOOLS, writePostfixConfig } from "./chain.ts";
import { runMilter } from "../lib/milter-process.ts";

const T = { timeout: 20_000 };
const root = mkdtempSync(join(tmpdir(), "exota-audit-"));
after(() => rmSync(root, { recursive: true, force: true }));

const OPENDKIM = "inet:127.0.0.1:8891";
const EXOTA = "inet:127.0.0.1:4321";
/** As the chain runs it: DKIM and certificate checks on (exotaEnv), TCP socket. */
const ENV = exotaEnv({ MILTER_SOCKET: "inet:4321@127.0.0.1", MILTER_POLICY_FILE: "/nonexistent.json" });

type Listener = PostfixConfigSpec["listeners"][number];
interface Case {
  readonly main?: Record<string, string>;
  readonly listener?: Partial<Listener>;
  readonly env?: Record<string, string>;
  /** More smtpd listeners. */
  readonly more?: readonly Listener[];
}

let n = 0;
function write(c: Case): string {
  const dir = join(root, `c${++n}`);
  writePostfixConfig(join(dir, "postfix"), {
    dir,
    relayPort: 2525,
    // postconf reads names, not files: the paths need not exist.
    pki: { ca: join(dir, "ca.pem"), server: { cert: join(dir, "server.pem"), key: join(dir, "server.key") } },
    main: c.main,
    listeners: [{ route: "smtp", port: 2500, milters: `${OPENDKIM}, ${EXOTA}`, ...c.listener }, ...c.more ?? []],
  });
  return join(dir, "postfix");
}

interface JsonProblem {
  setting: string;
  where: string;
  value: string;
  services: string[];
  why: string;
  fix: string;
}

async function audit(c: Case): Promise<{ code: number | null; problems: JsonProblem[]; notes: string[]; dir: string }> {
  const dir = write(c);
  const config = loadConfig(["check"], { ...ENV, ...c.env });
  assert.ok(config.ok && config.command === "check");
  // In this process, which is what the binary runs (its exit codes are tested below): a spawn less per case.
  const lines: string[] = [];
  const code = await checkPostfix(config.config, dir, true, (l) => lines.push(l));
  const out = JSON.parse(lines.join("\n")) as { source: string; problems: JsonProblem[]; notes: string[] };
  assert.match(out.source, /^\/usr\/sbin\/postconf -c /);
  // The fallback parser reads the same files and must find the same.
  const files = await readPostfixConfig(dir, undefined);
  assert.ok(files.ok, files.ok ? "" : files.error);
  const own = auditPostfix(files.value, milterFacts(config.config));
  assert.deepEqual(own.problems.map((p) => [p.setting, p.value, p.fix]), out.problems.map((p) => [p.setting, p.value, p.fix]), "postconf and the fallback parser disagree");
  return { code, problems: out.problems, notes: out.notes, dir };
}

/** Exactly one problem, with this setting; writing its fix line makes the configuration clean. */
async function onlyProblem(c: Case, setting: string, fixed: Case): Promise<JsonProblem> {
  const r = await audit(c);
  assert.equal(r.code, 1, JSON.stringify(r.problems));
  assert.deepEqual(r.problems.map((p) => p.setting), [setting], JSON.stringify(r.problems, null, 1));
  const after = await audit(fixed);
  assert.deepEqual(after.problems, [], `the fix still has problems: ${JSON.stringify(after.problems, null, 1)}`);
  assert.equal(after.code, 0);
  return r.problems[0]!;
}

/** The value a "write instead" line sets: `name = value`, `-o name=value` or `-o { name = value }`. */
function fixValue(p: JsonProblem): string {
  const m = /^-o \{ [\w.]+ = (.*) \}$/.exec(p.fix) ?? /^-o [\w.]+=(.*)$/.exec(p.fix) ?? /^[\w.]+ = (.*)$/.exec(p.fix);
  assert.ok(m !== null, `fix line "${p.fix}"`);
  return m[1]!;
}

describe("check --postfix with the real postconf", () => {
  it("postconf is there", () => assert.ok(existsSync(TOOLS.postconf), TOOLS.postconf));

  it("the chain's correct configuration: no problem, exit 0", T, async () => {
    const r = await audit({});
    assert.deepEqual(r.problems, []);
    assert.equal(r.code, 0);
  });

  it("milter_default_action = accept in main.cf covers exota-milter; the per-milter tempfail it proposes fixes it", T, async () => {
    const p = await onlyProblem({ main: { milter_default_action: "accept" } }, "milter_default_action", {
      main: { milter_default_action: "accept" },
      listener: { milters: `${OPENDKIM}, { ${EXOTA}, default_action=tempfail }` },
    });
    assert.equal(p.value, "accept");
    assert.equal(p.where, "main.cf");
    assert.equal(p.fix, `-o { smtpd_milters = ${OPENDKIM}, { ${EXOTA}, default_action=tempfail } }`);
    assert.match(p.why, /accepts every message unchecked/);
  });

  it("default_action=accept in exota-milter's own smtpd_milters entry", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${OPENDKIM}, { ${EXOTA}, default_action=accept }` } }, "default_action", {});
    assert.match(p.where, /smtpd_milters entry inet:127\.0\.0\.1:4321/);
  });

  it("milter_default_action=accept as a master.cf -o override of the service", T, async () => {
    const p = await onlyProblem({ listener: { options: { milter_default_action: "accept" } } }, "milter_default_action", {
      listener: { options: { milter_default_action: "accept" }, milters: `${OPENDKIM}, { ${EXOTA}, default_action=tempfail }` },
    });
    assert.equal(p.where, "master.cf 127.0.0.1:2500/inet -o");
    assert.deepEqual(p.services, ["127.0.0.1:2500/inet"]);
  });

  it("a -o value naming another -o override ($name) is expanded with it, as smtpd does", T, async () => {
    const options = { exota_action: "accept", milter_default_action: "$exota_action" };
    const p = await onlyProblem({ listener: { options } }, "milter_default_action", {
      listener: { options, milters: `${OPENDKIM}, { ${EXOTA}, default_action=tempfail }` },
    });
    assert.deepEqual([p.value, p.where], ["accept", "master.cf 127.0.0.1:2500/inet -o"]);
  });

  it("a -o value with $$ (a literal $) is expanded once, and written $$ in the fix line", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${EXOTA}, unix:/run/open$$dkim/sock` } }, "smtpd_milters", {
      listener: { milters: `unix:/run/open$$dkim/sock, ${EXOTA}` },
    });
    assert.equal(p.value, `${EXOTA}, unix:/run/open$dkim/sock`);
    assert.equal(fixValue(p), `unix:/run/open$$dkim/sock, ${EXOTA}`, "the fix line writes the literal $ as $$");
    assert.match(p.why, /before unix:\/run\/open\$dkim\/sock/);
  });

  it("`default_action = tempfail` with spaces: Postfix cannot parse the list", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${OPENDKIM}, { ${EXOTA}, default_action = tempfail }` } }, "smtpd_milters", {
      listener: { milters: `${OPENDKIM}, { ${EXOTA}, default_action=tempfail }` },
    });
    assert.match(p.why, /malformed option/);
    assert.equal(fixValue(p), `${OPENDKIM}, { ${EXOTA}, default_action=tempfail }`);
  });

  it("exota-milter before the DKIM verifier", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${EXOTA}, ${OPENDKIM}` } }, "smtpd_milters", {});
    assert.match(p.why, /before inet:127\.0\.0\.1:8891/);
    assert.equal(fixValue(p), `${OPENDKIM}, ${EXOTA}`);
  });

  it("exota-milter alone in smtpd_milters while DKIM is required", T, async () => {
    const p = await onlyProblem({ listener: { milters: EXOTA } }, "smtpd_milters", {});
    assert.match(p.why, /stands first/);
  });

  it("milter_protocol below 6", T, async () => {
    const p = await onlyProblem({ main: { milter_protocol: "4" } }, "milter_protocol", {});
    assert.equal(p.fix, "milter_protocol = 6");
  });

  it("milter_protocol 4 and {cert_subject} missing from milter_helo_macros: both reported", T, async () => {
    const r = await audit({ main: { milter_protocol: "4", milter_helo_macros: "{tls_version} {cipher}" } });
    assert.deepEqual(r.problems.map((p) => p.setting).sort(), ["milter_helo_macros", "milter_protocol"]);
    const macros = r.problems.find((p) => p.setting === "milter_helo_macros")!;
    assert.equal(macros.fix, "milter_helo_macros = {tls_version} {cipher} {cert_subject}");
    // Not a problem at protocol 6: the milter asks for its macros itself (SETSYMLIST).
    assert.deepEqual((await audit({ main: { milter_helo_macros: "{tls_version} {cipher}" } })).problems, []);
  });

  it("smtpd_tls_ask_ccert = no while the certificate check is on", T, async () => {
    await onlyProblem({ main: { smtpd_tls_ask_ccert: "no" } }, "smtpd_tls_ask_ccert", {});
    // Not a problem when the milter does not check certificates.
    assert.deepEqual((await audit({ main: { smtpd_tls_ask_ccert: "no" }, env: { MILTER_X509_ENABLED: "false" } })).problems, []);
  });

  it("no CA to verify client certificates with while the certificate check is on", T, async () => {
    await onlyProblem({ main: { smtpd_tls_CAfile: "" } }, "smtpd_tls_CAfile", {});
  });

  it("the socket in smtpd_milters is not the one the milter listens on", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${OPENDKIM}, inet:127.0.0.1:4322` } }, "smtpd_milters", {});
    assert.match(p.why, /inet:127\.0\.0\.1:4321/);
  });

  it("the milter's spelling inet:PORT@HOST written into smtpd_milters", T, async () => {
    const p = await onlyProblem({ listener: { milters: `${OPENDKIM}, inet:4321@127.0.0.1` } }, "smtpd_milters", {});
    assert.match(p.why, /Postfix writes inet:HOST:PORT/);
  });

  it("localhost in smtpd_milters reaches a milter on 127.0.0.1", T, async () => {
    assert.deepEqual((await audit({ listener: { milters: `${OPENDKIM}, inet:localhost:4321` } })).problems, []);
  });

  it("a chrooted smtpd with the milter's unix socket under /run", T, async () => {
    const env = { MILTER_SOCKET: "unix:/run/exota-milter/milter.sock" };
    const p = await onlyProblem({ env, listener: { chroot: true, milters: `${OPENDKIM}, unix:/run/exota-milter/milter.sock` } }, "chroot", {
      env,
      listener: { chroot: false, milters: `${OPENDKIM}, unix:/run/exota-milter/milter.sock` },
    });
    assert.match(p.why, /chrooted/);
    assert.deepEqual(p.services, ["127.0.0.1:2500/inet"]);
  });

  it("a chrooted smtpd with the socket inside queue_directory, written relative to it: no problem", T, async () => {
    const dir = join(root, `c${n + 1}`);
    const r = await audit({
      env: { MILTER_SOCKET: `unix:${dir}/queue/exota-milter/milter.sock` },
      listener: { chroot: true, milters: `${OPENDKIM}, unix:/exota-milter/milter.sock` },
    });
    assert.deepEqual(r.problems, []);
  });

  it("exota-milter only in non_smtpd_milters", T, async () => {
    const p = await onlyProblem({ main: { non_smtpd_milters: EXOTA }, listener: { milters: OPENDKIM } }, "non_smtpd_milters", {});
    assert.equal(fixValue(p), `${OPENDKIM}, ${EXOTA}`);
  });

  it("receive_override_options = no_milters on the service", T, async () => {
    await onlyProblem({ listener: { options: { receive_override_options: "no_unknown_recipient_checks,no_milters" } } }, "receive_override_options", {
      listener: { options: { receive_override_options: "no_unknown_recipient_checks" } },
    });
  });

  it("a second smtpd without exota-milter (a re-injection listener) is a note, not a problem", T, async () => {
    const more = [{ route: "reinject", port: 10025, milters: "" }];
    const r = await audit({ more });
    assert.deepEqual(r.problems, []);
    assert.equal(r.code, 0);
    assert.match(r.notes.join("\n"), /service 127\.0\.0\.1:10025\/inet does not pass mail to exota-milter/);
  });

  it("the binary: text report, exit 0 clean", T, async () => {
    const r = await runMilter(["check", `--postfix=${write({ more: [{ route: "reinject", port: 10025, milters: "" }] })}`], ENV);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /^postfix: \/usr\/sbin\/postconf -c \S+: 0 problem\(s\)\nnote: service 127\.0\.0\.1:10025\/inet/);
  });

  it("the binary: text report, exit 1 with problems", T, async () => {
    const r = await runMilter(["check", `--postfix=${write({ main: { milter_default_action: "accept" } })}`], ENV);
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /\nproblem: milter_default_action = accept {2}\(main\.cf; smtpd service 127\.0\.0\.1:2500\/inet\)\n {2}why: .*\n {2}write instead: -o \{ smtpd_milters = /);
  });

  it("an unreadable configuration: exit 2", T, async () => {
    const r = await runMilter(["check", `--postfix=${join(root, "missing")}`], ENV);
    assert.equal(r.code, 2, r.output);
    assert.match(r.output, /could not read the configuration: .*main\.cf/);
  });
});
