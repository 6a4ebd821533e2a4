/**
 * Configuration: environment names of DESIGN.md section 3, flags that win,
 * boolean words, socket specs, allow-lists, and the errors for bad values.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { COMMANDS, type Config, helpText, loadConfig, MAX_REPLY_MESSAGE_OCTETS, OTHER_OPTIONS, SETTINGS } from "../../src/config.ts";
import { formatSocketSpec, parseSocketSpec } from "../../src/server/socket-spec.ts";

type Env = Record<string, string | undefined>;

function config(argv: string[] = [], env: Env = {}): Config {
  const r = loadConfig(argv, env);
  if (!r.ok) assert.fail(`unexpected error: ${r.error}`);
  assert.equal(r.command, "run");
  assert.ok(r.command === "run");
  return r.config;
}
function error(argv: string[] = [], env: Env = {}): string {
  const r = loadConfig(argv, env);
  if (r.ok) assert.fail(`expected an error, got ${JSON.stringify(r)}`);
  return r.error;
}
const BOOL_ACCEPTED = "a boolean word (true/yes/on/1 or false/no/off/0, any case)";
const ranges = (c: Config) => c.filter.x509AllowList.map((r) => [r.text, r.bits]);

describe("defaults", () => {
  it("match DESIGN.md section 3", () => {
    const c = config();
    assert.equal(c.name, "exota-milter");
    assert.deepEqual(c.socket, { kind: "tcp", family: 4, port: 4321, host: "127.0.0.1" });
    assert.equal(c.socketMode, 0o660);
    assert.equal(c.logLevel, "info");
    assert.equal(c.policySource, "file");
    assert.equal(c.policyFile, "/data/policy.json");
    assert.equal(c.ldap, undefined);
    assert.deepEqual(
      { ...c.filter, x509AllowList: undefined },
      {
        rejectMessage: "Security policy violation!",
        tempfailMessage: "Service temporarily not available! Please try again later.",
        tenantIdRequired: false,
        dkimEnabled: false,
        dkimAlignmentRequired: false,
        trustedAuthservId: "",
        x509Enabled: false,
        x509TrustedCn: "mail.protection.outlook.com",
        x509AllowList: undefined,
        x509TrustedIssuer: "",
        authResultsAnywhere: false,
        maxHeaders: 1000,
        maxHeaderBytes: 262144,
        addHeader: false,
        authservId: "",
        reportOnly: false,
      },
    );
    assert.equal(c.logFormat, "text");
    assert.equal(c.policyWatch, true);
    assert.equal(c.shutdownTimeoutMs, 10000);
    assert.equal(c.metricsListen, undefined);
    assert.deepEqual(ranges(c), [["127.0.0.1", 128], ["::1", 128]]);
  });

  it("`run` as the only positional argument is allowed", () => {
    assert.deepEqual(config(["run"]), config());
  });
});

describe("environment names", () => {
  it("every variable of DESIGN.md section 3 is read", () => {
    const c = config([], {
      MILTER_NAME: "edge1",
      MILTER_SOCKET: "unix:/run/exota/milter.sock",
      MILTER_REJECT_MESSAGE: "No!",
      MILTER_TMPFAIL_MESSAGE: "Later!",
      MILTER_TENANT_ID_REQUIRED: "true",
      MILTER_DKIM_ENABLED: "true",
      MILTER_DKIM_ALIGNMENT_REQUIRED: "true",
      MILTER_TRUSTED_AUTHSERVID: "Relay.Example.NET",
      MILTER_POLICY_SOURCE: "file",
      MILTER_POLICY_FILE: "/etc/exota/policy.json",
      MILTER_X509_ENABLED: "true",
      MILTER_X509_TRUSTED_CN: "mx.example",
      MILTER_X509_IP_WHITELIST: "192.0.2.1",
      MILTER_ADD_HEADER: "true",
      MILTER_AUTHSERVID: "smarthost.example",
      LOG_LEVEL: "DEBUG",
    });
    assert.equal(c.name, "edge1");
    assert.deepEqual(c.socket, { kind: "unix", path: "/run/exota/milter.sock" });
    assert.equal(c.policyFile, "/etc/exota/policy.json");
    assert.equal(c.logLevel, "debug");
    const f = c.filter;
    assert.equal(f.rejectMessage, "No!");
    assert.equal(f.tempfailMessage, "Later!");
    assert.equal(f.tenantIdRequired, true);
    assert.equal(f.dkimEnabled, true);
    assert.equal(f.dkimAlignmentRequired, true);
    assert.equal(f.trustedAuthservId, "relay.example.net", "lower-cased");
    assert.equal(f.x509Enabled, true);
    assert.equal(f.x509TrustedCn, "mx.example");
    assert.deepEqual(ranges(c), [["192.0.2.1", 128]]);
    assert.equal(f.addHeader, true);
    assert.equal(f.authservId, "smarthost.example");
  });

  it("LDAP variables", () => {
    const c = config([], {
      MILTER_POLICY_SOURCE: "ldap",
      MILTER_LDAP_SERVER_URI: "ldaps://ldap1.example:636, ldap://ldap2.example",
      MILTER_LDAP_BINDDN: "cn=milter,dc=example",
      MILTER_LDAP_BINDPW: "secret",
      MILTER_LDAP_SEARCH_BASE: "ou=policies,dc=example",
      MILTER_LDAP_QUERY: "(&(objectClass=exotaMilterPolicy)(associatedDomain=%d))",
      MILTER_LDAP_RECEIVE_TIMEOUT: "2.5",
      MILTER_LDAP_TENANT_ID_ATTR: "tid",
      MILTER_LDAP_DKIM_ENABLED_ATTR: "dk",
      MILTER_LDAP_DKIM_ALIGNMENT_REQUIRED_ATTR: "da",
    });
    assert.equal(c.policySource, "ldap");
    assert.ok(c.ldap !== undefined);
    assert.deepEqual(c.ldap.uris, ["ldaps://ldap1.example:636", "ldap://ldap2.example"]);
    assert.equal(c.ldap.bindDn, "cn=milter,dc=example");
    assert.equal(c.ldap.bindPassword, "secret");
    assert.equal(c.ldap.searchBase, "ou=policies,dc=example");
    assert.equal(c.ldap.query, "(&(objectClass=exotaMilterPolicy)(associatedDomain=%d))");
    assert.equal(c.ldap.receiveTimeoutMs, 2500);
    assert.deepEqual(c.ldap.attributes, { tenantId: "tid", dkimEnabled: "dk", dkimAlignmentRequired: "da" });
  });

  it("LDAP defaults: 5 s timeout and the schema's attribute names", () => {
    const c = config([], {
      MILTER_POLICY_SOURCE: "ldap",
      MILTER_LDAP_SERVER_URI: "ldap://ldap.example",
      MILTER_LDAP_SEARCH_BASE: "dc=example",
      MILTER_LDAP_QUERY: "(associatedDomain=%d)",
    });
    assert.equal(c.ldap?.receiveTimeoutMs, 5000);
    assert.deepEqual(c.ldap?.attributes, {
      tenantId: "exotaMilterTenantId",
      dkimEnabled: "exotaMilterDkimEnabled",
      dkimAlignmentRequired: "exotaMilterDkimAlignmentRequired",
    });
  });

  it("LDAP source without its required settings -> error", () => {
    assert.equal(error([], { MILTER_POLICY_SOURCE: "ldap" }), "MILTER_LDAP_SERVER_URI (--ldap-server-uri) is required when MILTER_POLICY_SOURCE is ldap");
    assert.equal(
      error([], { MILTER_POLICY_SOURCE: "ldap", MILTER_LDAP_SERVER_URI: "ldap://x", MILTER_LDAP_SEARCH_BASE: "dc=x" }),
      "MILTER_LDAP_QUERY (--ldap-query) is required when MILTER_POLICY_SOURCE is ldap",
    );
    assert.match(error([], { MILTER_LDAP_QUERY: "(cn=foo)" }), /^MILTER_LDAP_QUERY="\(cn=foo\)" is not valid: expected an LDAP filter/);
    for (const unbalanced of ["(&(objectClass=x)(associatedDomain=%d)", "(associatedDomain=%d))", "(a=%d)(b=c)", "(a=%d))("]) {
      assert.match(error([], { MILTER_LDAP_QUERY: unbalanced }), /is not valid: expected an LDAP filter in balanced parentheses/, unbalanced);
    }
  });

  it("unknown policy source -> error", () => {
    assert.equal(error([], { MILTER_POLICY_SOURCE: "sql" }), 'MILTER_POLICY_SOURCE="sql" is not valid: expected file or ldap');
  });

  it("log level words", () => {
    assert.equal(config([], { LOG_LEVEL: "Warning" }).logLevel, "warning");
    assert.equal(config([], { LOG_LEVEL: "warn" }).logLevel, "warning");
    assert.equal(config([], { LOG_LEVEL: "error" }).logLevel, "error");
    assert.equal(error([], { LOG_LEVEL: "verbose" }), 'LOG_LEVEL="verbose" is not valid: expected debug, info, warning or error');
  });

  it("unrelated environment variables are ignored (an unknown MILTER_ one with a warning)", () => {
    const { warnings, ...rest } = config([], { PATH: "/bin", MILTER_UNKNOWN: "x" });
    const { warnings: none, ...plain } = config();
    assert.deepEqual(rest, plain);
    assert.deepEqual(none, []);
    assert.equal(warnings.length, 1);
  });
});

describe("flags", () => {
  it("a flag beats the environment", () => {
    const c = config(["--name=from-flag", "--reject-message", "flag text", "--dkim-enabled=no"], {
      MILTER_NAME: "from-env",
      MILTER_REJECT_MESSAGE: "env text",
      MILTER_DKIM_ENABLED: "yes",
    });
    assert.equal(c.name, "from-flag");
    assert.equal(c.filter.rejectMessage, "flag text");
    assert.equal(c.filter.dkimEnabled, false);
  });

  it("a bad flag is named as the flag, a bad variable as the variable", () => {
    assert.equal(error(["--dkim-enabled=yepp"]), `--dkim-enabled="yepp" is not valid: expected ${BOOL_ACCEPTED}`);
    assert.equal(error([], { MILTER_DKIM_ENABLED: "yepp" }), `MILTER_DKIM_ENABLED="yepp" is not valid: expected ${BOOL_ACCEPTED}`);
  });

  it("a valid flag overrides a bad environment value", () => {
    assert.equal(config(["--x509-enabled=on"], { MILTER_X509_ENABLED: "yepp" }).filter.x509Enabled, true);
  });

  it("every setting has a flag and an environment name", () => {
    const flags = new Set<string>();
    const envs = new Set<string>();
    for (const s of Object.values(SETTINGS)) {
      assert.match(s.flag, /^[a-z0-9-]+$/);
      assert.match(s.env, /^(MILTER_|LOG_)[A-Z0-9_]+$/);
      assert.ok(!flags.has(s.flag), s.flag);
      assert.ok(!envs.has(s.env), s.env);
      flags.add(s.flag);
      envs.add(s.env);
    }
    for (const env of [
      "MILTER_NAME",
      "MILTER_SOCKET",
      "MILTER_REJECT_MESSAGE",
      "MILTER_TMPFAIL_MESSAGE",
      "MILTER_TENANT_ID_REQUIRED",
      "MILTER_DKIM_ENABLED",
      "MILTER_DKIM_ALIGNMENT_REQUIRED",
      "MILTER_TRUSTED_AUTHSERVID",
      "MILTER_POLICY_SOURCE",
      "MILTER_POLICY_FILE",
      "MILTER_X509_ENABLED",
      "MILTER_X509_TRUSTED_CN",
      "MILTER_X509_IP_WHITELIST",
      "MILTER_ADD_HEADER",
      "MILTER_AUTHSERVID",
      "MILTER_LDAP_SERVER_URI",
      "MILTER_LDAP_BINDDN",
      "MILTER_LDAP_BINDPW",
      "MILTER_LDAP_SEARCH_BASE",
      "MILTER_LDAP_QUERY",
      "MILTER_LDAP_RECEIVE_TIMEOUT",
      "MILTER_LDAP_TENANT_ID_ATTR",
      "MILTER_LDAP_DKIM_ENABLED_ATTR",
      "MILTER_LDAP_DKIM_ALIGNMENT_REQUIRED_ATTR",
      "LOG_LEVEL",
    ]) {
      assert.ok(envs.has(env), `${env} is a setting`);
    }
  });

  it("--help / -h and --version / -V are commands", () => {
    assert.deepEqual(loadConfig(["--help"], {}), { ok: true, command: "help" });
    assert.deepEqual(loadConfig(["-h"], {}), { ok: true, command: "help" });
    assert.deepEqual(loadConfig(["--version"], {}), { ok: true, command: "version" });
    assert.deepEqual(loadConfig(["-V"], {}), { ok: true, command: "version" });
    // --help wins even when the environment is broken
    assert.deepEqual(loadConfig(["--help"], { MILTER_DKIM_ENABLED: "yepp" }), { ok: true, command: "help" });
  });

  it("--man is a command, also with a broken environment", () => {
    assert.deepEqual(loadConfig(["--man"], {}), { ok: true, command: "man" });
    assert.deepEqual(loadConfig(["check", "--man"], { MILTER_DKIM_ENABLED: "yepp" }), { ok: true, command: "man" });
  });

  it("the help text lists every flag with its variable, every command and the other options", () => {
    const h = helpText("exota-milter");
    assert.match(h, /^Usage: exota-milter \[run\]/);
    for (const s of Object.values(SETTINGS)) {
      assert.ok(h.includes(`--${s.flag}=VALUE   (${s.env}`), s.flag);
    }
    for (const c of COMMANDS) assert.ok(h.includes(`exota-milter ${c.usage}`), c.name);
    for (const o of OTHER_OPTIONS) assert.ok(h.includes(`  ${o.flags.join(", ")} `), o.flags.join());
  });

  it("unknown flag -> error naming it", () => {
    const e = error(["--bogus"]);
    assert.ok(e.includes("--bogus"), e);
    assert.ok(e.endsWith(" (see --help)"), e);
  });

  it("a value flag without value -> error", () => {
    const e = error(["--dkim-enabled"]);
    assert.ok(e.includes("--dkim-enabled"), e);
    assert.ok(e.endsWith(" (see --help)"), e);
  });

  it("flag forms: --flag=value, --flag value, the last one wins, -- ends the flags, short -h/-V", () => {
    const r = loadConfig(["--name", "a", "--name=b", "run"], {});
    assert.ok(r.ok && r.command === "run");
    assert.equal(r.config.name, "b");
    const eq = loadConfig(["--name=x=y"], {});
    assert.ok(eq.ok && eq.command === "run");
    assert.equal(eq.config.name, "x=y");
    assert.equal(error(["--", "--name=a"]), 'unknown command "--name=a": expected run, check, explain or tenant-id (see --help)');
    assert.deepEqual(loadConfig(["-V"], {}), { ok: true, command: "version" });
    assert.deepEqual(loadConfig(["run", "-h"], {}), { ok: true, command: "help" });
    assert.equal(error(["-x"]), 'unknown option "-x" (see --help)');
    assert.equal(error(["--name", "--socket=unix:/x"]), 'option "--name" needs a value (see --help)');
  });

  it("unknown command or extra positional argument -> error", () => {
    assert.equal(error(["start"]), 'unknown command "start": expected run, check, explain or tenant-id (see --help)');
    assert.equal(error(["run", "now"]), 'unexpected argument "now" (see --help)');
  });

  it("check and explain commands", () => {
    const check = loadConfig(["check", "--name=x"], {});
    assert.ok(check.ok && check.command === "check");
    assert.equal(check.config.name, "x");
    const ex = loadConfig(["explain", "--message", "/tmp/m.eml", "--client-ip=192.0.2.1", "--queue-id=Q1"], {});
    assert.ok(ex.ok && ex.command === "explain");
    assert.deepEqual(ex.explain, { messageFile: "/tmp/m.eml", clientIp: "192.0.2.1", certSubject: undefined, certIssuer: undefined, certVerify: undefined, queueId: "Q1" });
    assert.equal(error(["explain"]), "explain needs --message FILE.eml (see --help)");
    assert.equal(error(["explain", "--message=m.eml", "--client-ip=300.1.1.1"]), '--client-ip="300.1.1.1" is not valid: expected an IPv4 or IPv6 address');
    const v6 = loadConfig(["explain", "--message=m.eml", "--client-ip=2001:db8::1"], {});
    assert.ok(v6.ok && v6.command === "explain" && v6.explain.clientIp === "2001:db8::1");
    assert.equal(error(["--message=/tmp/m.eml"]), "--message belongs to the explain command (see --help)");
    assert.equal(error(["check", "--cert-subject=x"]), "--cert-subject belongs to the explain command (see --help)");
  });

  it("effective settings say where each value came from, secrets masked", () => {
    const c = config(["--name=flag"], { MILTER_POLICY_FILE: "/p.json", MILTER_LDAP_BINDPW: "hunter2" });
    const by = new Map(c.settings.map((s) => [s.env, s]));
    assert.deepEqual(by.get("MILTER_NAME"), { env: "MILTER_NAME", value: "flag", source: "flag" });
    assert.deepEqual(by.get("MILTER_POLICY_FILE"), { env: "MILTER_POLICY_FILE", value: "/p.json", source: "environment" });
    assert.deepEqual(by.get("MILTER_REJECT_MESSAGE"), { env: "MILTER_REJECT_MESSAGE", value: "Security policy violation!", source: "default" });
    assert.deepEqual(by.get("MILTER_LDAP_BINDPW"), { env: "MILTER_LDAP_BINDPW", value: "(secret)", source: "environment" });
    assert.ok(!JSON.stringify(c.settings).includes("hunter2"));
  });
});

describe("booleans are words", () => {
  const TRUE = ["true", "TRUE", "True", "yes", "YES", "Yes", "on", "ON", "oN", "1", " yes "];
  const FALSE = ["false", "FALSE", "False", "no", "NO", "No", "off", "OFF", "oFf", "0"];
  for (const w of TRUE) {
    it(`${JSON.stringify(w)} is true`, () => {
      assert.equal(config([], { MILTER_X509_ENABLED: w }).filter.x509Enabled, true);
      assert.equal(config([`--tenant-id-required=${w}`]).filter.tenantIdRequired, true);
    });
  }
  for (const w of FALSE) {
    it(`${JSON.stringify(w)} is false`, () => {
      assert.equal(config([], { MILTER_X509_ENABLED: w }).filter.x509Enabled, false);
      assert.equal(config([`--tenant-id-required=${w}`]).filter.tenantIdRequired, false);
    });
  }
  for (const w of ["yepp", "", "2", "y", "n", "enabled", "true!", "nein"]) {
    it(`${JSON.stringify(w)} is an error naming the variable and the value`, () => {
      assert.equal(error([], { MILTER_DKIM_ENABLED: w }), `MILTER_DKIM_ENABLED=${JSON.stringify(w)} is not valid: expected ${BOOL_ACCEPTED}`);
    });
  }
  it("every boolean setting is checked", () => {
    for (const env of ["MILTER_TENANT_ID_REQUIRED", "MILTER_DKIM_ALIGNMENT_REQUIRED", "MILTER_X509_ENABLED", "MILTER_ADD_HEADER"]) {
      assert.equal(error([], { [env]: "yepp" }), `${env}="yepp" is not valid: expected ${BOOL_ACCEPTED}`);
    }
  });
});

describe("dependent settings", () => {
  it("DKIM on without MILTER_TRUSTED_AUTHSERVID -> error", () => {
    assert.equal(
      error([], { MILTER_DKIM_ENABLED: "yes" }),
      "MILTER_TRUSTED_AUTHSERVID (--trusted-authservid) is required when MILTER_DKIM_ENABLED is true",
    );
    assert.equal(config([], { MILTER_DKIM_ENABLED: "yes", MILTER_TRUSTED_AUTHSERVID: "relay" }).filter.trustedAuthservId, "relay");
  });

  it("add-header without MILTER_AUTHSERVID -> error", () => {
    assert.equal(error(["--add-header=on"]), "MILTER_AUTHSERVID (--authservid) is required when MILTER_ADD_HEADER is true");
    assert.equal(config(["--add-header=on", "--authservid=relay.example"]).filter.authservId, "relay.example");
  });

  it("authserv-ids must be one word", () => {
    assert.equal(
      error([], { MILTER_TRUSTED_AUTHSERVID: "relay example" }),
      'MILTER_TRUSTED_AUTHSERVID="relay example" is not valid: expected one word without spaces',
    );
    assert.match(error([], { MILTER_AUTHSERVID: "" }), /^MILTER_AUTHSERVID="" is not valid/);
  });
});

describe("socket specs", () => {
  const SOCKET_ACCEPTED = "inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path";
  const good: Array<[string, unknown]> = [
    ["inet:8894@127.0.0.1", { kind: "tcp", family: 4, port: 8894, host: "127.0.0.1" }],
    ["inet:25@mx.example", { kind: "tcp", family: 4, port: 25, host: "mx.example" }],
    ["inet:65535@0.0.0.0", { kind: "tcp", family: 4, port: 65535, host: "0.0.0.0" }],
    ["inet:1", { kind: "tcp", family: 4, port: 1, host: "0.0.0.0" }],
    ["inet6:8894@::1", { kind: "tcp", family: 6, port: 8894, host: "::1" }],
    ["inet6:8894@[2001:db8::1]", { kind: "tcp", family: 6, port: 8894, host: "2001:db8::1" }],
    ["inet6:8894", { kind: "tcp", family: 6, port: 8894, host: "::" }],
    ["INET:8894@localhost", { kind: "tcp", family: 4, port: 8894, host: "localhost" }],
    ["unix:/run/exota/milter.sock", { kind: "unix", path: "/run/exota/milter.sock" }],
    ["local:/var/spool/postfix/exota.sock", { kind: "unix", path: "/var/spool/postfix/exota.sock" }],
  ];
  for (const [spec, want] of good) {
    it(`${spec}`, () => {
      assert.deepEqual(config([], { MILTER_SOCKET: spec }).socket, want);
      assert.deepEqual(config([`--socket=${spec}`]).socket, want);
    });
  }

  const bad: Array<[string, string]> = [
    ["tcp:8894@127.0.0.1", "expected inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path"],
    ["8894", "expected inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path"],
    ["", "expected inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path"],
    ["inet:0@127.0.0.1", 'port "0" is not a number from 1 to 65535'],
    ["inet:65536@127.0.0.1", 'port "65536" is not a number from 1 to 65535'],
    ["inet:abc@127.0.0.1", 'port "abc" is not a number from 1 to 65535'],
    ["inet:@127.0.0.1", 'port "" is not a number from 1 to 65535'],
    ["inet:-1@127.0.0.1", 'port "-1" is not a number from 1 to 65535'],
    ["inet:8894@", "empty host after @"],
    ["unix:relative.sock", "a unix socket needs an absolute path"],
    ["local:", "a unix socket needs an absolute path"],
  ];
  for (const [spec, why] of bad) {
    it(`bad: ${JSON.stringify(spec)}`, () => {
      assert.deepEqual(parseSocketSpec(spec), { ok: false, error: why });
      assert.equal(error([], { MILTER_SOCKET: spec }), `MILTER_SOCKET=${JSON.stringify(spec)} is not valid (${why}): expected ${SOCKET_ACCEPTED}`);
    });
  }

  it("formatSocketSpec writes the libmilter spelling", () => {
    for (const s of ["inet:8894@127.0.0.1", "inet6:8894@::1", "unix:/run/x.sock"]) {
      const r = parseSocketSpec(s);
      assert.ok(r.ok);
      assert.equal(formatSocketSpec(r.value), s);
    }
  });
});

describe("x509 allow-list", () => {
  it("commas and spaces separate, empty items are skipped", () => {
    const c = config([], { MILTER_X509_IP_WHITELIST: " 10.0.0.0/8, 192.0.2.1  2001:db8::/32,,\t::1 " });
    assert.deepEqual(ranges(c), [["10.0.0.0/8", 104], ["192.0.2.1", 128], ["2001:db8::/32", 32], ["::1", 128]]);
  });

  it("empty list", () => {
    assert.deepEqual(ranges(config([], { MILTER_X509_IP_WHITELIST: "" })), []);
    assert.deepEqual(ranges(config(["--x509-ip-whitelist= , "])), []);
  });

  for (const bad of ["300.1.1.1", "10.0.0.0/33", "2001:db8::/129", "localhost", "1.2.3", "10.0.0.1/", "::1::2", "1.2.3.4/8x"]) {
    it(`invalid: ${bad}`, () => {
      assert.equal(
        error([], { MILTER_X509_IP_WHITELIST: `127.0.0.1, ${bad}` }),
        `MILTER_X509_IP_WHITELIST=${JSON.stringify(`127.0.0.1, ${bad}`)} is not valid ("${bad}" is no address or range): ` +
          "expected IPv4/IPv6 addresses or CIDR ranges, separated by commas or spaces",
      );
    });
  }
});

describe("refused or warned, never silently accepted", () => {
  it("a CIDR range with host bits set is refused with the range it stands for", () => {
    for (const [bad, meant] of [["10.1.2.3/8", "10.0.0.0/8"], ["192.0.2.77/24", "192.0.2.0/24"], ["2001:db8::1/32", "2001:db8::/32"], ["fe80::1:0:0:1/64", "fe80::/64"]]) {
      assert.equal(
        error([], { MILTER_X509_IP_WHITELIST: bad }),
        `MILTER_X509_IP_WHITELIST=${JSON.stringify(bad)} is not valid ("${bad}" has host bits set: did you mean ${meant}?): ` +
          "expected IPv4/IPv6 addresses or CIDR ranges, separated by commas or spaces",
      );
    }
    assert.deepEqual(config([], { MILTER_X509_IP_WHITELIST: "10.0.0.0/8 192.0.2.77/32 2001:db8::/32" }).warnings, []);
  });

  it("0.0.0.0/0 or ::/0 in the allow-list warns", () => {
    assert.deepEqual(config([], { MILTER_X509_IP_WHITELIST: "127.0.0.1, 0.0.0.0/0, ::/0" }).warnings, [
      "MILTER_X509_IP_WHITELIST contains 0.0.0.0/0: every client skips the certificate check",
      "MILTER_X509_IP_WHITELIST contains ::/0: every client skips the certificate check",
    ]);
  });

  it("a socket on every interface warns; loopback, a named host and unix do not", () => {
    const wild = "listens on every interface: whoever reaches the port can ask for verdicts and learn the policy; " +
      "listen on 127.0.0.1 or a unix socket, or firewall the port";
    assert.deepEqual(config([], { MILTER_SOCKET: "inet:4604" }).warnings, [`MILTER_SOCKET inet:4604@0.0.0.0 ${wild}`]);
    assert.deepEqual(config([], { MILTER_SOCKET: "inet6:4604@[::]" }).warnings, [`MILTER_SOCKET inet6:4604@:: ${wild}`]);
    for (const ok of ["inet:4604@127.0.0.1", "inet6:4604@::1", "inet:4604@relay.example", "unix:/run/m.sock"]) {
      assert.deepEqual(config([], { MILTER_SOCKET: ok }).warnings, [], ok);
    }
  });

  it("root warns; --ldap-bindpw on the command line warns and points to the file and the environment", () => {
    const r = loadConfig(["--ldap-bindpw=s3cret"], {}, 0);
    assert.ok(r.ok && r.command === "run");
    assert.deepEqual(r.config.warnings, [
      "running as root: run exota-milter as a user of its own (the systemd unit does)",
      "--ldap-bindpw puts the LDAP password in the process list, where every local user can read it; " +
      "use MILTER_LDAP_BINDPW_FILE (--ldap-bindpw-file) or the MILTER_LDAP_BINDPW environment variable",
    ]);
    const quiet = loadConfig(["--ldap-bindpw-file=/etc/pw"], { MILTER_LDAP_BINDPW: "" }, 1000);
    assert.ok(quiet.ok && quiet.command === "run");
    assert.deepEqual(quiet.config.warnings, []);
  });

  it("an unknown MILTER_ variable warns with the closest known name", () => {
    assert.deepEqual(config([], { MILTER_DKIM_ENABLE: "true", MILTER_SOCKETT: "x", MILTERISH: "x", OTHER: "x" }).warnings, [
      "MILTER_DKIM_ENABLE is not a setting and is ignored; did you mean MILTER_DKIM_ENABLED?",
      "MILTER_SOCKETT is not a setting and is ignored; did you mean MILTER_SOCKET?",
    ]);
  });

  it("a reject or tempfail message that would make the SMTP reply line longer than 512 octets is refused", () => {
    const ok = "x".repeat(MAX_REPLY_MESSAGE_OCTETS);
    assert.equal(config([], { MILTER_REJECT_MESSAGE: ok, MILTER_TMPFAIL_MESSAGE: ok }).filter.rejectMessage, ok);
    // The longest reply: 20-character queue id, the longest reason; CRLF ends it.
    const line = `550 5.7.1 queue_id: ${"Q".repeat(20)} - ${ok} - reason: No policy for 5322.from_domain ${"d".repeat(253)}\r\n`;
    assert.equal(line.length, 512);
    assert.equal(
      error([], { MILTER_REJECT_MESSAGE: `${ok}é` }),
      `MILTER_REJECT_MESSAGE is ${MAX_REPLY_MESSAGE_OCTETS + 2} octets: with a queue id and the longest reason (a 253-character domain) ` +
        `the SMTP reply line would pass the 512 octets an MTA accepts (RFC 5321 4.5.3.1.5); at most ${MAX_REPLY_MESSAGE_OCTETS}`,
    );
    assert.match(error(["--tmpfail-message", "y".repeat(400)]), /^MILTER_TMPFAIL_MESSAGE is 400 octets/);
  });
});

describe("operations settings", () => {
  it("report-only, policy watch, shutdown timeout, metrics endpoint, log format", () => {
    const c = config([], {
      MILTER_REPORT_ONLY: "yes",
      MILTER_POLICY_WATCH: "off",
      MILTER_SHUTDOWN_TIMEOUT: "2.5",
      MILTER_METRICS_LISTEN: "[::1]:9799",
      LOG_FORMAT: "JSON",
    });
    assert.equal(c.filter.reportOnly, true);
    assert.equal(c.policyWatch, false);
    assert.equal(c.shutdownTimeoutMs, 2500);
    assert.deepEqual(c.metricsListen, { host: "::1", port: 9799 });
    assert.equal(c.logFormat, "json");
    assert.deepEqual(config([], { MILTER_METRICS_LISTEN: "127.0.0.1:9799" }).metricsListen, { host: "127.0.0.1", port: 9799 });
    assert.match(error([], { MILTER_METRICS_LISTEN: "9799" }), /^MILTER_METRICS_LISTEN="9799" is not valid/);
    assert.match(error([], { MILTER_METRICS_LISTEN: "host:0" }), /^MILTER_METRICS_LISTEN="host:0" is not valid/);
    assert.match(error([], { MILTER_POLICY_WATCH: "yepp" }), /^MILTER_POLICY_WATCH="yepp" is not valid/);
    assert.match(error([], { MILTER_REPORT_ONLY: "yepp" }), /^MILTER_REPORT_ONLY="yepp" is not valid: expected a boolean word/);
  });

  it("log format auto: journal under systemd (JOURNAL_STREAM), else text", () => {
    assert.equal(config([], { JOURNAL_STREAM: "8:1234" }).logFormat, "journal");
    assert.equal(config([], { JOURNAL_STREAM: "8:1234", LOG_FORMAT: "text" }).logFormat, "text");
    assert.equal(config([]).logFormat, "text");
    assert.equal(error([], { LOG_FORMAT: "xml" }), 'LOG_FORMAT="xml" is not valid: expected auto, text, journal or json');
  });
});

describe("numbers", () => {
  it("socket mode is octal", () => {
    assert.equal(config([], { MILTER_SOCKET_MODE: "0666" }).socketMode, 0o666);
    assert.equal(config([], { MILTER_SOCKET_MODE: "600" }).socketMode, 0o600);
    assert.match(error([], { MILTER_SOCKET_MODE: "0888" }), /^MILTER_SOCKET_MODE="0888" is not valid/);
  });

  it("counts and seconds", () => {
    assert.equal(config([], { MILTER_MAX_HEADERS: "50" }).filter.maxHeaders, 50);
    assert.equal(config([], { MILTER_IDLE_TIMEOUT: "1.5" }).idleTimeoutMs, 1500);
    assert.match(error([], { MILTER_MAX_HEADERS: "0" }), /^MILTER_MAX_HEADERS="0" is not valid: expected a whole number from 1$/);
    assert.match(error([], { MILTER_MAX_FRAME_SIZE: "1000" }), /^MILTER_MAX_FRAME_SIZE="1000" is not valid: expected a whole number from 65536$/);
    assert.match(error([], { MILTER_IDLE_TIMEOUT: "-1" }), /^MILTER_IDLE_TIMEOUT="-1" is not valid/);
  });
});

describe("check --postfix, --verify-tenants, --json and tenant-id", () => {
  const check = (argv: string[]) => {
    const r = loadConfig(argv, {});
    if (!r.ok || r.command !== "check") assert.fail(JSON.stringify(r));
    return r.check;
  };
  it("--postfix with and without a directory; flags off by default", () => {
    assert.deepEqual(check(["check"]), { postfix: undefined, verifyTenants: false, json: false });
    assert.deepEqual(check(["check", "--postfix"]), { postfix: { dir: undefined }, verifyTenants: false, json: false });
    assert.deepEqual(check(["check", "--postfix=/etc/postfix", "--json"]), { postfix: { dir: "/etc/postfix" }, verifyTenants: false, json: true });
    assert.deepEqual(check(["check", "--verify-tenants", "--json"]), { postfix: undefined, verifyTenants: true, json: true });
  });
  it("misplaced or malformed: errors", () => {
    assert.match(error(["--postfix"]), /--postfix belongs to the check command/);
    assert.match(error(["check", "--postfix", "/etc/postfix"]), /unexpected argument "\/etc\/postfix"/);
    assert.match(error(["check", "--json"]), /--json goes with --postfix or --verify-tenants/);
    assert.match(error(["check", "--verify-tenants=yes"]), /--verify-tenants takes no value/);
    assert.match(error(["tenant-id"]), /tenant-id needs at least one domain/);
    assert.match(error(["tenant-id", "--verify-tenants", "a.example"]), /--verify-tenants belongs to the check command/);
  });
  it("tenant-id: domains, --json, the lookup URL and timeout settings", () => {
    const r = loadConfig(["tenant-id", "--json", "a.example", "b.example"], { MILTER_TENANT_LOOKUP_URL: "http://127.0.0.1:8080/" });
    if (!r.ok || r.command !== "tenant-id") assert.fail(JSON.stringify(r));
    assert.deepEqual(r.domains, ["a.example", "b.example"]);
    assert.equal(r.json, true);
    assert.deepEqual(r.config.tenantLookup, { baseUrl: "http://127.0.0.1:8080", timeoutMs: 10_000 });
    assert.equal(config().tenantLookup.baseUrl, "https://login.microsoftonline.com");
    assert.match(error([], { MILTER_TENANT_LOOKUP_URL: "login.microsoftonline.com" }), /MILTER_TENANT_LOOKUP_URL=.*expected an http:\/\/ or https:\/\/ URL/);
    assert.match(helpText("x"), /x tenant-id \[--json\] DOMAIN\.\.\./);
    assert.match(helpText("x"), /--tenant-lookup-url=VALUE {3}\(MILTER_TENANT_LOOKUP_URL, default "https:\/\/login\.microsoftonline\.com"\)/);
  });
});
