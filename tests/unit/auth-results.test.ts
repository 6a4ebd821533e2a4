/**
 * RFC 8601 Authentication-Results parsing.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type AuthResults, dkimDomain, parseAuthResults } from "../../src/mail/auth-results.ts";

/** A comparable form: results as [method, result, props as entries]. */
function simple(r: AuthResults | undefined) {
  if (r === undefined) return undefined;
  return { id: r.authservId, results: r.results.map((x) => [x.method, x.result, Object.fromEntries(x.props)] as const) };
}
const parse = (s: string) => simple(parseAuthResults(s));

describe("parseAuthResults", () => {
  it("OpenDKIM style header", () => {
    assert.deepEqual(
      parse(
        "relay.example.net;\n\tdkim=pass (2048-bit key; unprotected) header.d=tenant.example header.i=@tenant.example header.a=rsa-sha256 header.s=selector1 header.b=AbCd1234",
      ),
      {
        id: "relay.example.net",
        results: [["dkim", "pass", {
          "header.d": "tenant.example",
          "header.i": "@tenant.example",
          "header.a": "rsa-sha256",
          "header.s": "selector1",
          "header.b": "AbCd1234",
        }]],
      },
    );
  });

  it("several results in one header", () => {
    assert.deepEqual(
      parse(
        "mx.example.com; spf=pass smtp.mailfrom=tenant.example; dkim=pass header.d=tenant.example; dkim=fail header.d=other.example; dmarc=pass header.from=tenant.example",
      ),
      {
        id: "mx.example.com",
        results: [
          ["spf", "pass", { "smtp.mailfrom": "tenant.example" }],
          ["dkim", "pass", { "header.d": "tenant.example" }],
          ["dkim", "fail", { "header.d": "other.example" }],
          ["dmarc", "pass", { "header.from": "tenant.example" }],
        ],
      },
    );
  });

  it("authres-version after the authserv-id", () => {
    assert.deepEqual(parse("mx.example.com 1; dkim=pass header.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
  });

  it("method version (dkim/1)", () => {
    assert.deepEqual(parse("mx.example.com; dkim/1=pass header.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
  });

  it("comments anywhere", () => {
    assert.deepEqual(parse("(c) mx.example.com (c) ; (c) dkim (c) = (c) pass (c) header.d (c) = (c) a.example (c)"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
    assert.deepEqual(parse("mx.example.com; dkim=pass (nested (comment) with ; and = and \\) inside) header.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
  });

  it("a dkim=pass only inside a comment counts for nothing", () => {
    assert.deepEqual(parse("mx.example.com; dkim=fail (dkim=pass header.d=x.example) header.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "fail", { "header.d": "a.example" }]],
    });
    assert.deepEqual(parse("mx.example.com; none (dkim=pass header.d=a.example)"), { id: "mx.example.com", results: [] });
  });

  it("an authserv-id only inside a comment counts for nothing", () => {
    assert.deepEqual(parse("(relay.example.net) evil.example; dkim=pass header.d=a.example"), {
      id: "evil.example",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
    assert.equal(parse("(relay.example.net); dkim=pass header.d=a.example"), undefined);
  });

  it("quoted values (with ; ( = inside) and a quoted authserv-id", () => {
    assert.deepEqual(parse('mx.example.com; dkim=pass header.d="tenant.example" reason="good; signature (really) a=b"'), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "tenant.example", reason: "good; signature (really) a=b" }]],
    });
    assert.deepEqual(parse('"MX.example.com"; dkim=pass'), { id: "mx.example.com", results: [["dkim", "pass", {}]] });
  });

  it("method, result and ptype are case-insensitive; the authserv-id is lower-cased; values kept", () => {
    assert.deepEqual(parse("MX.Example.COM; DKIM=PASS Header.D=Tenant.Example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "Tenant.Example" }]],
    });
  });

  it("unquoted base64 header.b with / + = stays one value", () => {
    assert.deepEqual(parse("mx.example.com; dkim=pass header.b=ab/c+d== header.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.b": "ab/c+d==", "header.d": "a.example" }]],
    });
    assert.deepEqual(parse("mx.example.com; dkim=pass header.b=/+=/;dkim=fail header.b=+9/a=="), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.b": "/+=/" }], ["dkim", "fail", { "header.b": "+9/a==" }]],
    });
  });

  it("none", () => {
    assert.deepEqual(parse("mx.example.com; none"), { id: "mx.example.com", results: [] });
    assert.deepEqual(parse("mx.example.com 1; NONE"), { id: "mx.example.com", results: [] });
    assert.deepEqual(parse("mx.example.com"), { id: "mx.example.com", results: [] });
    assert.equal(parse("mx.example.com; none; dkim=pass header.d=a.example"), undefined);
    assert.equal(parse("mx.example.com; dkim=pass header.d=a.example; none"), undefined);
  });

  it("folded header (CRLF + tab)", () => {
    assert.deepEqual(parse("mx.example.com;\r\n\tdkim=pass\r\n\theader.d=a.example"), {
      id: "mx.example.com",
      results: [["dkim", "pass", { "header.d": "a.example" }]],
    });
  });

  it("reason and other ptypes (smtp., policy.) are properties", () => {
    assert.deepEqual(parse("mx.example.com; dkim=neutral reason=\"bad format\" policy.x=y"), {
      id: "mx.example.com",
      results: [["dkim", "neutral", { reason: "bad format", "policy.x": "y" }]],
    });
  });

  it("malformed input returns undefined", () => {
    const bad = [
      "",
      "   ",
      ";",
      "; dkim=pass",
      "mx dkim=pass",
      "mx; dkim",
      "mx; dkim=",
      "mx; =pass",
      "mx; dkim=pass header.d",
      "mx; dkim=pass header.d=",
      "mx; dkim=pass foo=bar",
      'mx; dkim="pass"',
      'mx; "dkim"=pass',
      "mx (unterminated",
      "mx; dkim=pass (unterminated",
      'mx; dkim=pass reason="unterminated',
      "mx; dkim=pass )",
      "mx) ; dkim=pass",
      "mx; dkim/=pass",
    ];
    for (const s of bad) assert.equal(parseAuthResults(s), undefined, JSON.stringify(s));
  });
});

describe("dkimDomain", () => {
  const first = (s: string) => {
    const r = parseAuthResults(s);
    assert.ok(r !== undefined && r.results[0] !== undefined, s);
    return dkimDomain(r.results[0]);
  };

  it("header.d, normalized", () => {
    assert.equal(first("mx; dkim=pass header.d=Tenant.EXAMPLE"), "tenant.example");
    assert.equal(first("mx; dkim=pass header.d=müller.example"), "xn--mller-kva.example");
  });

  it("header.d is preferred over header.i", () => {
    assert.equal(first("mx; dkim=pass header.i=@tenant.example header.d=rogue.example"), "rogue.example");
    assert.equal(first("mx; dkim=pass header.d=rogue.example header.i=@tenant.example"), "rogue.example");
  });

  it("header.i is used only when header.d is absent", () => {
    assert.equal(first("mx; dkim=pass header.i=@Sub.Tenant.example"), "sub.tenant.example");
    assert.equal(first("mx; dkim=pass header.i=user@tenant.example"), "tenant.example");
    assert.equal(first("mx; dkim=pass header.i=tenant.example"), "tenant.example");
  });

  it("an invalid header.d gives undefined, not header.i", () => {
    assert.equal(first("mx; dkim=pass header.d=bad_domain header.i=@tenant.example"), undefined);
  });

  it("a trailing dot names no domain (a d= tag has none), and header.i does not stand in", () => {
    assert.equal(first("mx; dkim=pass header.d=tenant.example."), undefined);
    assert.equal(first("mx; dkim=pass header.d=tenant.example. header.i=@tenant.example"), undefined);
    assert.equal(first("mx; dkim=pass header.i=@tenant.example."), undefined);
  });

  it("neither -> undefined", () => {
    assert.equal(first("mx; dkim=pass header.s=sel"), undefined);
  });
});

describe("properties (fast-check, seed 42)", () => {
  const anyText = fc.oneof(
    fc.string({ unit: "grapheme", maxLength: 80 }),
    fc.string({ unit: "binary", maxLength: 80 }),
    fc.string({
      unit: fc.constantFrom("mx", " ", ";", "=", "/", "(", ")", "\"", "\\", "dkim", "pass", "header.d", "a.example", "none", "1", "\r\n\t", "."),
      maxLength: 40,
    }),
  );

  it("parseAuthResults and dkimDomain never throw (3000 runs)", () => {
    fc.assert(
      fc.property(anyText, (s) => {
        const r = parseAuthResults(s);
        if (r !== undefined) {
          assert.equal(r.authservId, r.authservId.toLowerCase());
          for (const x of r.results) {
            assert.equal(x.method, x.method.toLowerCase());
            assert.equal(x.result, x.result.toLowerCase());
            const d = dkimDomain(x);
            assert.ok(d === undefined || typeof d === "string");
          }
        }
      }),
      { seed: 42, numRuns: 3000 },
    );
  });

  it("a comment never adds a result (1000 runs)", () => {
    const commentText = fc.string({ unit: fc.constantFrom("dkim", "=", "pass", " ", ";", "header.d", "a.example", "x"), maxLength: 20 });
    fc.assert(
      fc.property(commentText, (c) => {
        const r = parseAuthResults(`mx.example.com; dkim=fail (${c}) header.d=a.example`);
        assert.deepEqual(simple(r), { id: "mx.example.com", results: [["dkim", "fail", { "header.d": "a.example" }]] });
      }),
      { seed: 42, numRuns: 1000 },
    );
  });
});
