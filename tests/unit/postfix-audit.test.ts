/**
 * The Postfix audit's pure parts: main.cf/master.cf/postconf parsing as
 * Postfix does it, milter lists with per-milter settings, and the rules.
 * (tests/e2e/postfix-audit.test.ts runs the same against the real postconf.)
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { auditPostfix, type MilterFacts, postfixSpelling } from "../../src/postfix/audit.ts";
import {
  expand,
  formatMilterList,
  parseMaster,
  parseMilterList,
  parseParams,
  parsePostfixSocket,
  parseServiceParams,
  type PostfixConfig,
  resolveMain,
  resolveServices,
} from "../../src/postfix/config.ts";

function ok<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) assert.fail(r.error);
  return r.value;
}

describe("main.cf", () => {
  it("continuation lines, comments, last one wins, spaces around =", () => {
    const p = ok(parseParams("# comment\nsmtpd_milters = inet:a:1,\n  inet:b:2\n  # indented comment\n\nx=1\nx = 2\n"));
    assert.deepEqual([...p], [["smtpd_milters", "inet:a:1, inet:b:2"], ["x", "2"]]);
  });

  it("a line without = is an error naming file and line", () => {
    const r = parseParams("a = 1\nnonsense\n", "/etc/postfix/main.cf");
    assert.deepEqual(r, { ok: false, error: '/etc/postfix/main.cf line 2: expected "name = value", found "nonsense"' });
  });

  it("$name, ${name}, $(name), ${name?x}, ${name:x}, $$, unknown names empty", () => {
    const p = new Map([["a", "A"], ["b", "$a-B"], ["empty", ""]]);
    assert.equal(expand("$b ${a} $(a) ${a?yes} ${empty?no} ${empty:dflt} ${a:no} $$ $nosuch.", p), "A-B A A yes  dflt  $ .");
  });

  it("resolveMain: defaults for what is missing, values expanded", () => {
    const m = resolveMain(ok(parseParams("my = inet:127.0.0.1:4321\nsmtpd_milters = $my\n")));
    assert.equal(m.get("smtpd_milters"), "inet:127.0.0.1:4321");
    assert.equal(m.get("milter_default_action"), "tempfail");
    assert.equal(m.get("milter_protocol"), "6");
  });
});

describe("master.cf", () => {
  it("services with -o name=value, -o { name = value } and continuation lines", () => {
    const s = ok(parseMaster(
      "smtp inet n - y - - smtpd\n  -o smtpd_milters=inet:a:1\n  -o { milter_default_action = accept }\n" +
        "#submission inet n - y - - smtpd\n127.0.0.1:10025 inet n - n - - smtpd -o smtpd_milters= -oreceive_override_options=no_milters\n" +
        "pickup unix n - n 60 1 pickup\n",
    ));
    assert.deepEqual(s.map((x) => [x.name, x.type, x.chroot, x.command, [...x.overrides]]), [
      ["smtp", "inet", "y", "smtpd", [["smtpd_milters", "inet:a:1"], ["milter_default_action", "accept"]]],
      ["127.0.0.1:10025", "inet", "n", "smtpd", [["smtpd_milters", ""], ["receive_override_options", "no_milters"]]],
      ["pickup", "unix", "n", "pickup", []],
    ]);
  });

  it("postconf -M's spelling of a braced option", () => {
    const s = ok(parseMaster("smtp inet n - y - - smtpd -o {smtpd_milters=inet:a:1, { inet:b:2, default_action=tempfail }}"));
    assert.equal(s[0]!.overrides.get("smtpd_milters"), "inet:a:1, { inet:b:2, default_action=tempfail }");
  });

  it("a brace inside a word does not split it (Postfix's mystrtokq): -o name=${other}", () => {
    const s = ok(parseMaster("smtp inet n - y - - smtpd -o milter_helo_macros=${milter_connect_macros} -o{milter_protocol=6}"));
    assert.deepEqual([...s[0]!.overrides], [["milter_helo_macros", "${milter_connect_macros}"], ["milter_protocol", "6"]]);
    assert.deepEqual(ok(parseMilterList("inet:${host}:1, { inet:b:2, x=${y} }")).map((e) => [e.socket, [...e.options]]), [
      ["inet:${host}:1", []],
      ["inet:b:2", [["x", "${y}"]]],
    ]);
  });

  it("short lines, -o without a value and unbalanced braces are errors", () => {
    assert.match((parseMaster("smtp inet n - y smtpd") as { error: string }).error, /line 1: a service needs 8 fields/);
    assert.match((parseMaster("smtp inet n - y - - smtpd -o") as { error: string }).error, /-o needs name=value/);
    assert.match((parseMaster("smtp inet n - y - - smtpd -o { a = b") as { error: string }).error, /missing "}"/);
  });

  it("-o values expanded once, over main.cf and the service's own overrides, as postconf -P -x prints them (Postfix 3.7)", () => {
    const main = ok(parseParams("my_action = accept\nlit = a$$b\nref = $lit\n"));
    const s = resolveServices(main, ok(parseMaster(
      "smtp inet n - n - - smtpd -o milter_default_action=$my_action -o smtpd_tls_CApath=x$$y -o smtpd_tls_CAfile=$smtpd_tls_CApath" +
        " -o milter_protocol=$ref -o receive_override_options=$$my_action -o milter_helo_macros=${milter_protocol}",
    )));
    assert.deepEqual([...s[0]!.overrides], [
      ["milter_default_action", "accept"],
      ["smtpd_tls_CApath", "x$y"],
      ["smtpd_tls_CAfile", "x$y"],
      ["milter_protocol", "a$b"],
      ["receive_override_options", "$my_action"],
      ["milter_helo_macros", "a$b"],
    ]);
  });

  it("postconf -P output, service names with colons", () => {
    const p = ok(parseServiceParams("smtp/inet/smtpd_milters = inet:a:1, { inet:b:2, default_action=tempfail }\n127.0.0.1:10025/inet/smtpd_milters =\n"));
    assert.equal(p.get("smtp/inet")!.get("smtpd_milters"), "inet:a:1, { inet:b:2, default_action=tempfail }");
    assert.equal(p.get("127.0.0.1:10025/inet")!.get("smtpd_milters"), "");
  });
});

describe("milter lists", () => {
  it("commas and whitespace separate; braces carry per-milter settings", () => {
    const l = ok(parseMilterList("inet:a:1,unix:/x  { inet:b:2, default_action=tempfail, protocol=6 }, { local:/y }"));
    assert.deepEqual(l.map((e) => [e.socket, [...e.options]]), [
      ["inet:a:1", []],
      ["unix:/x", []],
      ["inet:b:2", [["default_action", "tempfail"], ["protocol", "6"]]],
      ["local:/y", []],
    ]);
    assert.equal(formatMilterList(l), "inet:a:1, unix:/x, { inet:b:2, default_action=tempfail, protocol=6 }, local:/y");
  });

  it("`name = value` inside the braces is malformed (Postfix splits it into three words); `{ name = value }` is not", () => {
    assert.match((parseMilterList("{ inet:b:2, default_action = tempfail }") as { error: string }).error, /malformed option "default_action"/);
    assert.deepEqual([...ok(parseMilterList("{ inet:b:2, { default_action = tempfail } }"))[0]!.options], [["default_action", "tempfail"]]);
    assert.match((parseMilterList("{ }") as { error: string }).error, /empty milter definition/);
  });

  it("Postfix's socket spelling", () => {
    assert.deepEqual(parsePostfixSocket("inet:127.0.0.1:4321"), { kind: "tcp", host: "127.0.0.1", port: 4321 });
    assert.deepEqual(parsePostfixSocket("inet:[::1]:4321"), { kind: "tcp", host: "::1", port: 4321 });
    assert.deepEqual(parsePostfixSocket("inet:localhost:4321"), { kind: "tcp", host: "localhost", port: 4321 });
    assert.deepEqual(parsePostfixSocket("unix:/run/x.sock"), { kind: "unix", path: "/run/x.sock" });
    assert.deepEqual(parsePostfixSocket("local:/run/x.sock"), { kind: "unix", path: "/run/x.sock" });
    assert.equal(parsePostfixSocket("inet:4321@127.0.0.1"), undefined);
    assert.equal(parsePostfixSocket("127.0.0.1:4321"), undefined);
  });

  it("the milter's socket in Postfix's spelling", () => {
    assert.equal(postfixSpelling({ kind: "tcp", family: 4, port: 4321, host: "127.0.0.1" }), "inet:127.0.0.1:4321");
    assert.equal(postfixSpelling({ kind: "tcp", family: 4, port: 4321, host: "0.0.0.0" }), "inet:127.0.0.1:4321");
    assert.equal(postfixSpelling({ kind: "tcp", family: 6, port: 4321, host: "::1" }), "inet:[::1]:4321");
    assert.equal(postfixSpelling({ kind: "unix", path: "/run/m.sock" }), "unix:/run/m.sock");
  });
});

const FACTS: MilterFacts = { socket: { kind: "tcp", family: 4, port: 4321, host: "127.0.0.1" }, x509Enabled: true, x509TrustedIssuer: "", dkimEnabled: true };
const GOOD_MAIN = {
  smtpd_milters: "inet:127.0.0.1:8891, inet:127.0.0.1:4321",
  smtpd_tls_ask_ccert: "yes",
  smtpd_tls_CAfile: "/etc/ssl/certs/ca-certificates.crt",
};

/** As the fallback reader builds it from main.cf and master.cf. */
function conf(main: Record<string, string> = {}, master = "smtp inet n - y - - smtpd\n"): PostfixConfig {
  const raw = new Map(Object.entries({ ...GOOD_MAIN, ...main }));
  return { main: resolveMain(raw), services: resolveServices(raw, ok(parseMaster(master))) };
}
const settings = (c: PostfixConfig, facts: MilterFacts = FACTS) => auditPostfix(c, facts).problems.map((p) => p.setting);

describe("the audit", () => {
  it("a correct configuration: nothing", () => {
    assert.deepEqual(auditPostfix(conf(), FACTS), { problems: [], notes: [] });
  });

  it("global accept covers exota-milter; its own tempfail wins; accept for OpenDKIM alone is fine", () => {
    const p = auditPostfix(conf({ milter_default_action: "accept" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.value, x.where, x.services, x.fix]), [
      ["milter_default_action", "accept", "main.cf", ["smtp/inet"], "smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action=tempfail }"],
    ]);
    assert.deepEqual(settings(conf({ milter_default_action: "accept", smtpd_milters: "inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action=tempfail }" })), []);
    assert.deepEqual(settings(conf({ smtpd_milters: "{ inet:127.0.0.1:8891, default_action=accept }, inet:127.0.0.1:4321" })), []);
  });

  it("reject as the default action loses mail when the milter is down", () => {
    assert.deepEqual(settings(conf({ milter_default_action: "reject" })), ["milter_default_action"]);
  });

  it("a master.cf override counts, and its fix is a -o line", () => {
    const p = auditPostfix(conf({}, "smtp inet n - y - - smtpd -o milter_default_action=accept\n"), FACTS).problems;
    assert.equal(p[0]!.where, "master.cf smtp/inet -o");
    // The per-milter setting in the list smtpd uses (here main.cf's) beats the service's override.
    assert.equal(p[0]!.fix, "smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action=tempfail }");
    const svc = "smtp inet n - y - - smtpd -o milter_default_action=accept -o smtpd_milters=inet:127.0.0.1:8891,inet:127.0.0.1:4321\n";
    assert.equal(auditPostfix(conf({}, svc), FACTS).problems[0]!.fix, "-o { smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action=tempfail } }");
    assert.deepEqual(settings(conf({}, "smtp inet n - y - - smtpd -o smtpd_milters=inet:127.0.0.1:4321\n")), ["smtpd_milters"]);
  });

  it("-o values are taken as the reader expanded them: a `$` left by `$$` stays, and the fix line writes it `$$`", () => {
    // postconf -P -x prints `-o smtpd_milters=inet:127.0.0.1:4321,unix:/run/open$$dkim/sock` so.
    const c = conf();
    const svc = { ...c.services[0]!, overrides: new Map([["smtpd_milters", "inet:127.0.0.1:4321, unix:/run/open$dkim/sock"]]) };
    const p = auditPostfix({ main: c.main, services: [svc] }, FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.value, x.fix]), [
      ["smtpd_milters", "inet:127.0.0.1:4321, unix:/run/open$dkim/sock", "-o { smtpd_milters = unix:/run/open$$dkim/sock, inet:127.0.0.1:4321 }"],
    ]);
    assert.match(p[0]!.why, /before unix:\/run\/open\$dkim\/sock/);
    // From master.cf as written, through the fallback reader: the same.
    const own = auditPostfix(conf({}, "smtp inet n - y - - smtpd -o { smtpd_milters = inet:127.0.0.1:4321, unix:/run/open$$dkim/sock }\n"), FACTS).problems;
    assert.deepEqual(own, p);
  });

  it("a `$` in a main.cf value is written `$$` in its fix line", () => {
    const p = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:4321, unix:/run/open$$dkim/sock" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.value, x.fix]), [["inet:127.0.0.1:4321, unix:/run/open$dkim/sock", "smtpd_milters = unix:/run/open$$dkim/sock, inet:127.0.0.1:4321"]]);
  });

  it("a problem of main.cf shared by two services is reported once, naming both", () => {
    const p = auditPostfix(conf({ milter_protocol: "2" }, "smtp inet n - y - - smtpd\nsubmission inet n - y - - smtpd\n"), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.services]), [["milter_protocol", ["smtp/inet", "submission/inet"]]]);
  });

  it("a per-milter protocol below 6 is fixed in the entry", () => {
    const p = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:8891, { inet:127.0.0.1:4321, protocol=4 }" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.fix]), [["protocol", "smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:4321, protocol=6 }"]]);
  });

  it("macros matter only below protocol 6: {cert_subject} (x509), {cert_issuer} (issuer check), i", () => {
    const main = { milter_protocol: "4", milter_helo_macros: "", milter_mail_macros: "", milter_rcpt_macros: "", milter_data_macros: "", milter_end_of_header_macros: "", milter_end_of_data_macros: "" };
    const p = auditPostfix(conf(main), { ...FACTS, x509TrustedIssuer: "DigiCert" }).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.fix]), [
      ["milter_protocol", "milter_protocol = 6"],
      ["milter_end_of_data_macros", "milter_end_of_data_macros = i"],
      ["milter_helo_macros", "milter_helo_macros = {cert_subject}"],
      ["milter_helo_macros", "milter_helo_macros = {cert_issuer}"],
    ]);
    // A macro in a later stage's list does for a connection-stage one; cert_subject without braces is the same macro.
    assert.deepEqual(settings(conf({ ...main, milter_mail_macros: "cert_subject i" })), ["milter_protocol"]);
    assert.deepEqual(settings(conf(main), { ...FACTS, x509Enabled: false }), ["milter_protocol", "milter_end_of_data_macros"]);
    assert.deepEqual(settings(conf({ milter_helo_macros: "" })), []);
  });

  it("exota-milter first or before a DKIM verifier, when DKIM is required", () => {
    const first = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:4321, unix:/run/opendkim/opendkim.sock" }), FACTS).problems;
    assert.deepEqual(first.map((x) => [x.setting, x.fix]), [["smtpd_milters", "smtpd_milters = unix:/run/opendkim/opendkim.sock, inet:127.0.0.1:4321"]]);
    assert.match(first[0]!.why, /before unix:\/run\/opendkim\/opendkim\.sock/);
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:8893, inet:127.0.0.1:4321, inet:127.0.0.1:11332" })), ["smtpd_milters"]);
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:4321" })), ["smtpd_milters"]);
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:4321" }), { ...FACTS, dkimEnabled: false }), []);
  });

  it("certificate check on: smtpd_tls_ask_ccert and a CA are needed", () => {
    assert.deepEqual(settings(conf({ smtpd_tls_ask_ccert: "no" })), ["smtpd_tls_ask_ccert"]);
    assert.deepEqual(settings(conf({ smtpd_tls_CAfile: "" })), ["smtpd_tls_CAfile"]);
    assert.deepEqual(settings(conf({ smtpd_tls_CAfile: "", smtpd_tls_CApath: "/etc/ssl/certs" })), []);
    assert.deepEqual(settings(conf({ smtpd_tls_ask_ccert: "no", smtpd_tls_CAfile: "" }), { ...FACTS, x509Enabled: false }), []);
  });

  it("the socket: host spellings that reach the milter, and ones that do not", () => {
    for (const entry of ["inet:localhost:4321", "inet:127.0.0.1:4321"]) assert.deepEqual(settings(conf({ smtpd_milters: `inet:127.0.0.1:8891, ${entry}` })), []);
    const any = { ...FACTS, socket: { kind: "tcp", family: 4, port: 4321, host: "0.0.0.0" } as const };
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:8891, inet:10.0.0.5:4321" }), any), []);
    for (const entry of ["inet:127.0.0.1:4322", "inet:4321@127.0.0.1", "inet:10.0.0.5:4321", "unix:/run/exota.sock"]) {
      const p = auditPostfix(conf({ smtpd_milters: `inet:127.0.0.1:8891, ${entry}` }), FACTS).problems;
      assert.deepEqual(p.map((x) => [x.setting, x.fix]), [["smtpd_milters", `smtpd_milters = inet:127.0.0.1:8891, ${entry}, inet:127.0.0.1:4321`]], entry);
    }
  });

  it("a chrooted smtpd and a unix socket: the path is looked up inside queue_directory", () => {
    const unix = { ...FACTS, socket: { kind: "unix", path: "/run/exota-milter/milter.sock" } as const };
    const r = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:8891, unix:/run/exota-milter/milter.sock" }), unix);
    const p = r.problems;
    assert.deepEqual(p.map((x) => [x.setting, x.value, x.services]), [["chroot", "y", ["smtp/inet"]]]);
    assert.deepEqual(r.notes, [], "the service is the problem, not a listener without the milter");
    assert.match(p[0]!.why, /looked up as \/var\/spool\/postfix\/run\/exota-milter\/milter\.sock/);
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:8891, unix:/run/exota-milter/milter.sock" }, "smtp inet n - n - - smtpd\n"), unix), []);
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:8891, unix:/run/exota-milter/milter.sock" }, "smtp inet n - - - - smtpd\n"), unix), []);
    const inside = { ...FACTS, socket: { kind: "unix", path: "/var/spool/postfix/exota/m.sock" } as const };
    assert.deepEqual(settings(conf({ smtpd_milters: "inet:127.0.0.1:8891, unix:/exota/m.sock" }), inside), []);
  });

  it("exota-milter only in non_smtpd_milters", () => {
    const p = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:8891", non_smtpd_milters: "inet:127.0.0.1:4321" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.services, x.fix]), [["non_smtpd_milters", [], "smtpd_milters = inet:127.0.0.1:8891, inet:127.0.0.1:4321"]]);
  });

  it("no_milters in receive_override_options", () => {
    const p = auditPostfix(conf({ receive_override_options: "no_unknown_recipient_checks, no_milters" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.fix]), [["receive_override_options", "receive_override_options = no_unknown_recipient_checks"]]);
  });

  it("an unreadable milter list, and the repaired line", () => {
    const p = auditPostfix(conf({ smtpd_milters: "inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action = tempfail }" }), FACTS).problems;
    assert.deepEqual(p.map((x) => [x.setting, x.fix]), [["smtpd_milters", "smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:4321, default_action=tempfail }"]]);
  });

  it("notes: a service without the milter while another has it, smtpd_milter_maps, no smtpd at all", () => {
    const r = auditPostfix(conf({ smtpd_milter_maps: "cidr:/etc/postfix/milters" }, "smtp inet n - y - - smtpd\n127.0.0.1:10025 inet n - n - - smtpd -o smtpd_milters=\n"), FACTS);
    assert.deepEqual(r.problems, []);
    assert.equal(r.notes.length, 2);
    assert.match(r.notes[0]!, /^service 127\.0\.0\.1:10025\/inet does not pass mail to exota-milter/);
    assert.match(r.notes[1]!, /smtpd_milter_maps = cidr:\/etc\/postfix\/milters/);
    assert.deepEqual(auditPostfix(conf({}, "pickup unix n - n 60 1 pickup\n"), FACTS).notes, ["master.cf has no smtpd service: nothing receives mail over SMTP"]);
  });
});
