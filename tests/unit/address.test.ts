/**
 * RFC 5322 mailbox parsing for From/Resent-From: exactly one mailbox, the
 * domain from the addr-spec only.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { normalizeDomain, parseMailbox } from "../../src/mail/address.ts";

const valid = (field: string, localPart: string, domain: string) => {
  const r = parseMailbox(field);
  assert.deepEqual(r, { ok: true, mailbox: { localPart, domain } }, JSON.stringify(field));
};
const invalid = (field: string, error: string) => {
  const r = parseMailbox(field);
  assert.deepEqual(r, { ok: false, error }, JSON.stringify(field));
};

describe("parseMailbox: valid forms", () => {
  it("plain addr-spec", () => valid("john@tenant.example", "john", "tenant.example"));
  it("addr-spec with surrounding whitespace", () => valid("  john@tenant.example\t", "john", "tenant.example"));
  it("angle address without display name", () => valid("<john@tenant.example>", "john", "tenant.example"));
  it("name-addr", () => valid("John Doe <john.doe@tenant.example>", "john.doe", "tenant.example"));
  it("name-addr with obsolete dots in the phrase", () => valid("John Q. Public <jqp@tenant.example>", "jqp", "tenant.example"));
  it("quoted display name with comma", () => valid('"Doe, John" <john@tenant.example>', "john", "tenant.example"));
  it("quoted display name containing @ and <>", () => valid('"a@b.example <x@y.example>" <j@tenant.example>', "j", "tenant.example"));
  it("quoted display name with an escaped quote", () => valid('"John \\"JD\\" Doe" <j@tenant.example>', "j", "tenant.example"));
  it("the quoted victim address is only a display name", () => valid('"ceo@bank.example" <eve@rogue.example>', "eve", "rogue.example"));
  it("comments everywhere", () =>
    valid("(c1) john (c2) . (c3) doe (c4) @ (c5) tenant (c6) . (c7) example (c8)", "john.doe", "tenant.example"));
  it("comment in name-addr, nested comment, escaped paren", () =>
    valid("John (the (real) one \\) ) <john@tenant.example> (trailing)", "john", "tenant.example"));
  it("a comment holding an address counts for nothing", () => valid("eve@rogue.example (ceo@bank.example)", "eve", "rogue.example"));
  it("folded whitespace (CRLF + space)", () => valid("John Doe\r\n <john@TENANT.example>", "john", "tenant.example"));
  it("folded whitespace (CRLF + tab) inside the angle address", () => valid("John\r\n\t<john\r\n @tenant.example>", "john", "tenant.example"));
  it("quoted local part", () => valid('"john doe"@tenant.example', "john doe", "tenant.example"));
  it("quoted local part with @", () => valid('"a@b"@tenant.example', "a@b", "tenant.example"));
  it("RFC 2047 encoded-word display name", () => valid("=?utf-8?B?SsO2cmcgTcO8bGxlcg==?= <j@tenant.example>", "j", "tenant.example"));
  it("RFC 2047 Q-encoded display name hiding an address", () =>
    valid("=?utf-8?q?ceo=40bank.example?= <eve@rogue.example>", "eve", "rogue.example"));
  it("UTF-8 display name (unquoted and quoted)", () => {
    valid("Jörg Müller <j@tenant.example>", "j", "tenant.example");
    valid('"Müller, Jörg" <j@tenant.example>', "j", "tenant.example");
  });
  it("UTF-8 local part (RFC 6532)", () => valid("jörg@tenant.example", "jörg", "tenant.example"));
  it("UTF-8 domain -> A-label", () => {
    valid("j@müller.example", "j", "xn--mller-kva.example");
    valid("Jörg <jörg@BÜCHER.example>", "jörg", "xn--bcher-kva.example");
  });
  it("A-label domain stays", () => valid("a@xn--mller-kva.example", "a", "xn--mller-kva.example"));
  it("upper case domain -> lower case, local part kept", () => valid("John.Doe@Tenant.EXAMPLE", "John.Doe", "tenant.example"));
  it("dots repeating or trailing in the local part are tolerated", () => valid("a..b.@tenant.example", "a..b.", "tenant.example"));
  it("single-label domain", () => valid("root@localhost", "root", "localhost"));
});

describe("parseMailbox: invalid forms", () => {
  it("address list", () => invalid("a@x.example, b@y.example", "',': not a single mailbox"));
  it("group with a member", () => invalid("g: a@x.example;", "':': not a single mailbox"));
  it("empty group", () => invalid("g:;", "':': not a single mailbox"));
  it("bare phrase", () => invalid("CEO of Tenant", "no @ in address"));
  it("quoted address followed by a bare address", () => invalid('"ceo@bank.example" eve@rogue.example', "two words in a row in local part"));
  it("CVE-2023-27043 style ')' before '<'", () => invalid("alice@evil.example)<bob@tenant.example>", "unexpected ')'"));
  it("unquoted @ in the display name", () => invalid("alice@evil.example <bob@tenant.example>", "unexpected '@' in display name"));
  it("text after the angle address", () => invalid("<a@x.example> trailing", "text after '>' or missing '>'"));
  it("missing '>'", () => invalid("<a@x.example", "text after '>' or missing '>'"));
  it("stray '>'", () => invalid("a@x.example>", "unexpected '>'"));
  it("nested angle brackets", () => invalid("<<a@x.example>>", "nested angle brackets"));
  it("source route", () => invalid("<@a.example:b@c.example>", "':': not a single mailbox"));
  it("domain literal", () => invalid("a@[1.2.3.4]", "address literal as domain"));
  it("unterminated domain literal", () => invalid("a@[1.2.3.4", "unterminated domain literal"));
  it("unterminated quote", () => invalid('"unterminated <a@x.example>', "unterminated quoted string"));
  it("unterminated comment", () => invalid("a@x.example (unterminated", "unterminated comment"));
  it("empty", () => {
    invalid("", "empty field");
    invalid("  \r\n ", "empty field");
    invalid("(only a comment)", "empty field");
  });
  it("no local part / no domain", () => {
    invalid("@x.example", "empty local part");
    invalid("a@", "empty domain");
    invalid("<>", "no @ in address");
  });
  it("two @", () => invalid("a@b@c.example", "unexpected '@' in domain"));
  it("empty domain label", () => invalid("a@x..example", "unexpected '.' in domain"));
  it("trailing dot in the domain (no dot-atom ends with a dot)", () => {
    invalid("a@tenant.example.", "trailing dot in domain");
    invalid("<A@Example.COM.>", "trailing dot in domain");
    invalid("a@tenant.example (c) . (c)", "trailing dot in domain");
  });
  it("invalid host names", () => {
    invalid("a@-x.example", "invalid domain '-x.example'");
    invalid("a@x_y.example", "invalid domain 'x_y.example'");
    invalid(`a@${"x".repeat(64)}.example`, `invalid domain '${"x".repeat(64)}.example'`);
  });
  it("control characters", () => {
    invalid("a\u0000b@x.example", "control character 0x00");
    invalid("a@x.example\u0007", "control character 0x07");
  });
  it("stray backslash or ]", () => {
    invalid("a\\b@x.example", "unexpected '\\'");
    invalid("a]@x.example", "unexpected ']'");
  });
});

describe("normalizeDomain", () => {
  const cases: Array<[string, string | undefined]> = [
    ["Example.COM.", "example.com"],
    ["tenant.example", "tenant.example"],
    ["müller.example", "xn--mller-kva.example"],
    ["MÜLLER.example.", "xn--mller-kva.example"],
    ["ÉXAMPLE.com", "xn--xample-9ua.com"],
    ["xn--mller-kva.example", "xn--mller-kva.example"],
    ["a-b.c1.example", "a-b.c1.example"],
    ["", undefined],
    [".", undefined],
    ["..", undefined],
    ["a..b", undefined],
    ["a b.example", undefined],
    ["-a.example", undefined],
    ["a-.example", undefined],
    ["a_b.example", undefined],
    ["a@b.example", undefined],
    ["müller@x.example", undefined],
    ["müller/x.example", undefined],
    [`${"x".repeat(63)}.example`, `${"x".repeat(63)}.example`],
    [`${"x".repeat(64)}.example`, undefined],
    ["a.".repeat(126) + "ab", undefined], // 254 characters
    ["a.".repeat(126) + "a", "a.".repeat(126) + "a"], // 253 characters
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input.length > 40 ? `${input.slice(0, 20)}...(${input.length})` : input)} -> ${expected?.slice(0, 30)}`, () => {
      assert.equal(normalizeDomain(input), expected);
    });
  }
});

describe("properties (fast-check, seed 42)", () => {
  const anyText = fc.oneof(
    fc.string({ unit: "grapheme", maxLength: 60 }),
    fc.string({ unit: "binary", maxLength: 60 }),
    fc.string({ unit: fc.constantFrom("a", "@", "<", ">", "(", ")", "\"", "\\", ",", ";", ":", ".", " ", "\r\n ", "[", "]", "ü", "="), maxLength: 40 }),
  );

  it("parseMailbox never throws; a valid result has a normalized domain (3000 runs)", () => {
    fc.assert(
      fc.property(anyText, (s) => {
        const r = parseMailbox(s);
        if (r.ok) {
          assert.match(r.mailbox.domain, /^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$/);
          assert.equal(normalizeDomain(r.mailbox.domain), r.mailbox.domain, "normalizing is idempotent");
          assert.ok(r.mailbox.localPart.length > 0);
        } else {
          assert.equal(typeof r.error, "string");
        }
      }),
      { seed: 42, numRuns: 3000 },
    );
  });

  it("normalizeDomain never throws (2000 runs)", () => {
    fc.assert(
      fc.property(anyText, (s) => {
        const d = normalizeDomain(s);
        assert.ok(d === undefined || (d === d.toLowerCase() && !d.endsWith(".")));
      }),
      { seed: 42, numRuns: 2000 },
    );
  });

  it("for any domain d and display name n: `\"n\" <x@d>` and `x@d` give d lower-cased (500 runs)", () => {
    // deno-lint-ignore no-control-regex
    const name = fc.string({ unit: "grapheme", maxLength: 30 }).map((s) => s.replace(/[\\"\x00-\x1f\x7f]/g, ""));
    fc.assert(
      fc.property(fc.domain(), name, (d, n) => {
        fc.pre(d.length <= 253);
        const want = d.toLowerCase();
        assert.deepEqual(parseMailbox(`x@${d}`), { ok: true, mailbox: { localPart: "x", domain: want } });
        assert.deepEqual(parseMailbox(`"${n}" <x@${d.toUpperCase()}>`), { ok: true, mailbox: { localPart: "x", domain: want } });
        assert.deepEqual(parseMailbox(`x@${d} (${n.replace(/[()]/g, "")})`), { ok: true, mailbox: { localPart: "x", domain: want } });
      }),
      { seed: 42, numRuns: 500 },
    );
  });
});
