/**
 * The JSON policy file: schema, defaults, normalized domains, and errors
 * that name the file, the line (and column for syntax errors), the domain
 * and the key.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readEntries } from "../../src/policy/json-entries.ts";
import { dkimOffDomains, mapLookup, parsePolicyBytes, parsePolicyFile } from "../../src/policy/policy-file.ts";
import { PolicyTable } from "../../src/policy/policy-table.ts";
import { validateEntry } from "../../src/policy/schema.ts";
import type { Policy } from "../../src/policy/types.ts";

const T = "1234abcd-18c5-45e8-88de-123456789abc";
const FILE = "/etc/exota/policy.json";

function policies(text: string): Array<[string, Policy]> {
  const r = parsePolicyFile(text, FILE);
  if (!r.ok) assert.fail(`unexpected error: ${r.error}`);
  return [...r.policies];
}
function error(text: string): string {
  const r = parsePolicyFile(text, FILE);
  if (r.ok) assert.fail(`expected an error, got ${JSON.stringify([...r.policies])}`);
  return r.error;
}

const lines = (...l: string[]) => l.join("\n");

describe("parsePolicyFile: valid files", () => {
  it("defaults: dkim_enabled and dkim_alignment_required true, tenant_id empty", () => {
    assert.deepEqual(policies('{"a.example": {}}'), [["a.example", { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: true }]]);
  });

  it("all keys, tenant ids lower-cased, domain keys lower-cased, IDN keys as A-labels, trailing dot dropped", () => {
    const text = lines(
      "{",
      `  "Tenant.Example": {"tenant_id": "${T.toUpperCase()}", "dkim_enabled": true, "dkim_alignment_required": true},`,
      '  "relaxed.example": {"dkim_enabled": false, "dkim_alignment_required": false},',
      '  "müller.example": {"tenant_id": ""},',
      '  "trailing.example.": {"dkim_alignment_required": false}',
      "}",
    );
    assert.deepEqual(policies(text), [
      ["tenant.example", { tenantId: T, dkimEnabled: true, dkimAlignmentRequired: true }],
      ["relaxed.example", { tenantId: "", dkimEnabled: false, dkimAlignmentRequired: false }],
      ["xn--mller-kva.example", { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: true }],
      ["trailing.example", { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: false }],
    ]);
  });

  it("an empty object is an empty policy map", () => {
    assert.deepEqual(policies("{}"), []);
    assert.deepEqual(policies("  \n{ }\n\n"), []);
  });

  it("a UTF-8 BOM is skipped", () => {
    assert.deepEqual(policies('\uFEFF{"a.example": {}}').map(([d]) => d), ["a.example"]);
  });

  it("escapes in keys are decoded", () => {
    assert.deepEqual(policies('{"a\\u002eexample": {}}').map(([d]) => d), ["a.example"]);
  });

  it("the example policy of the repository is valid", async () => {
    const { readFileSync } = await import("node:fs");
    const text = readFileSync(new URL("../../policy.example.json", import.meta.url), "utf8");
    const r = parsePolicyFile(text, "policy.example.json");
    assert.ok(r.ok, r.ok ? "" : r.error);
    assert.ok(r.policies.size > 0);
  });

  it("mapLookup answers found / not_found", () => {
    const r = parsePolicyFile('{"a.example": {"dkim_enabled": false}}', FILE);
    assert.ok(r.ok);
    const lookup = mapLookup(r.policies);
    assert.deepEqual(lookup("a.example"), { kind: "found", policy: { tenantId: "", dkimEnabled: false, dkimAlignmentRequired: true } });
    assert.deepEqual(lookup("b.example"), { kind: "not_found" });
    assert.deepEqual(lookup("__proto__"), { kind: "not_found" });
    assert.deepEqual(lookup("constructor"), { kind: "not_found" });
  });
});

describe("parsePolicyFile: errors name file, line, domain and key", () => {
  it("unknown key (line of the key)", () => {
    const text = lines("{", '  "a.example": {', '    "tenant_id": "",', '    "dkim": true', "  }", "}");
    assert.equal(error(text), `${FILE}:4: domain "a.example", key "dkim": unknown key (accepted: tenant_id, dkim_enabled, dkim_alignment_required)`);
  });

  it("non-boolean flag (the string \"yes\")", () => {
    const text = lines("{", '  "a.example": {', '    "dkim_enabled": "yes"', "  }", "}");
    assert.equal(error(text), `${FILE}:3: domain "a.example", key "dkim_enabled": must be true or false (a JSON boolean, not a string), got "yes"`);
  });

  it("non-boolean dkim_alignment_required (a number)", () => {
    const text = lines("{", '  "b.example": {"dkim_alignment_required": 1}', "}");
    assert.equal(error(text), `${FILE}:2: domain "b.example", key "dkim_alignment_required": must be true or false (a JSON boolean, not a string), got 1`);
  });

  it("invalid UUID", () => {
    const text = lines("{", '  "a.example": {', '    "tenant_id": "not-a-uuid"', "  }", "}");
    assert.equal(error(text), `${FILE}:3: domain "a.example", key "tenant_id": must be a UUID like 1234abcd-18c5-45e8-88de-123456789abc, or empty, got "not-a-uuid"`);
  });

  it("UUID with braces is invalid", () => {
    assert.match(error(`{"a.example": {"tenant_id": "{${T}}"}}`), /^\/etc\/exota\/policy\.json:1: domain "a\.example", key "tenant_id": must be a UUID/);
  });

  it("tenant_id not a string", () => {
    assert.equal(error('{"a.example": {"tenant_id": null}}'), `${FILE}:1: domain "a.example", key "tenant_id": must be a string, got null`);
  });

  it("array instead of object", () => {
    const text = lines("{", '  "a.example": {},', '  "b.example": []', "}");
    assert.equal(error(text), `${FILE}:3: domain "b.example": must be an object, not an array`);
  });

  it("string or null instead of object", () => {
    assert.equal(error('{"a.example": "x"}'), `${FILE}:1: domain "a.example": must be an object, got "x"`);
    assert.equal(error('{"a.example": null}'), `${FILE}:1: domain "a.example": must be an object, got null`);
  });

  it("top level array", () => {
    assert.equal(error('[{"a.example": {}}]'), `${FILE}:1:1: the policy must be one JSON object: { "domain": { ... }, ... }`);
  });

  it("empty file", () => {
    assert.equal(error(""), `${FILE}:1:1: the policy must be one JSON object: { "domain": { ... }, ... }`);
    assert.equal(error("\n\n  "), `${FILE}:3:3: the policy must be one JSON object: { "domain": { ... }, ... }`);
  });

  it("duplicate domain", () => {
    const text = lines("{", '  "a.example": {},', '  "a.example": {"dkim_enabled": false}', "}");
    assert.equal(error(text), `${FILE}:3:3: duplicate key "a.example"`);
  });

  it("duplicate domain differing only in case", () => {
    const text = lines("{", '  "a.example": {},', '  "b.example": {},', '  "A.EXAMPLE": {}', "}");
    assert.equal(error(text), `${FILE}:4:3: duplicate key "A.EXAMPLE" (same as "a.example")`);
  });

  it("duplicate domain as U-label and A-label, or with a trailing dot", () => {
    assert.equal(error(lines("{", '"müller.example": {},', '"xn--mller-kva.example": {}', "}")), `${FILE}:3:1: duplicate key "xn--mller-kva.example" (same as "müller.example")`);
    assert.equal(error(lines("{", '"a.example": {},', '"a.example.": {}', "}")), `${FILE}:3:1: duplicate key "a.example." (same as "a.example")`);
  });

  it("duplicate key inside a policy", () => {
    assert.equal(error(`{\n  "a.example": {"tenant_id": "", "tenant_id": "${T}"}\n}`), `${FILE}:2:34: duplicate key "tenant_id"`);
  });

  it("__proto__ as a domain key is an error, not silently dropped", () => {
    const text = lines("{", '  "a.example": {},', '  "__proto__": {"tenant_id": ""}', "}");
    assert.equal(error(text), `${FILE}:3: "__proto__" is not a domain name`);
  });

  it("constructor as a domain key is an error", () => {
    const text = lines("{", '  "constructor": {}', "}");
    assert.equal(error(text), `${FILE}:2: "constructor" is not a domain name`);
  });

  it("__proto__ / constructor as keys inside a policy are unknown keys", () => {
    assert.equal(error('{"a.example": {"__proto__": {}}}'), `${FILE}:1: domain "a.example", key "__proto__": unknown key (accepted: tenant_id, dkim_enabled, dkim_alignment_required)`);
    assert.equal(error('{"a.example": {"constructor": true}}'), `${FILE}:1: domain "a.example", key "constructor": unknown key (accepted: tenant_id, dkim_enabled, dkim_alignment_required)`);
  });

  it("keys that are not domain names", () => {
    assert.equal(error('{\n"a..example": {}}'), `${FILE}:2: "a..example" is not a domain name`);
    assert.equal(error('{\n"-x.example": {}}'), `${FILE}:2: "-x.example" is not a domain name`);
    assert.equal(error('{\n"localhost": {}}'), `${FILE}:2: "localhost" is not a domain name`);
    assert.equal(error('{\n"": {}}'), `${FILE}:2: "" is not a domain name`);
    assert.equal(error('{\n"*.example": {}}'), `${FILE}:2: "*.example" is not a domain name`);
  });

  it("syntax error: line and column", () => {
    const text = lines("{", '  "a.example": {', '    "tenant_id": ""', '    "dkim_enabled": true', "  }", "}");
    assert.equal(error(text), `${FILE}:4:5: expected ',' or '}', got '"'`);
  });

  it("syntax errors: other forms", () => {
    assert.equal(error("{"), `${FILE}:1:2: expected a string in double quotes`);
    assert.equal(error('{"a.example": {}'), `${FILE}:1:17: expected ',' or '}', got end of file`);
    assert.equal(error('{"a.example" {}}'), `${FILE}:1:14: expected ':', got '{'`);
    assert.equal(error("{'a.example': {}}"), `${FILE}:1:2: expected a string in double quotes`);
    assert.equal(error('{"a.example": tru}'), `${FILE}:1:15: unexpected 't'`);
    assert.equal(error('{"a.example": {"dkim_enabled": false,}}'), `${FILE}:1:38: expected a string in double quotes`);
    assert.equal(error('{"a\\qexample": {}}'), `${FILE}:1:2: invalid escape in string`);
    assert.equal(error('{"a\texample": {}}'), `${FILE}:1:4: control character in string`);
    assert.equal(error('{"a.example": {}, "b.example'), `${FILE}:1:19: unterminated string`);
  });

  it("trailing text", () => {
    assert.equal(error(lines("{", '  "a.example": {}', "}", "}")), `${FILE}:4:1: text after the closing '}'`);
    assert.equal(error(lines("{", '  "a.example": {}', "} x")), `${FILE}:3:3: text after the closing '}'`);
    assert.equal(error('{"a.example": {}},'), `${FILE}:1:18: text after the closing '}'`);
    assert.equal(error('{} {"a.example": {}}'), `${FILE}:1:4: text after the closing '}'`);
  });

  it("CRLF line ends count lines the same way", () => {
    const text = ["{", '  "a.example": {', '    "bogus": 1', "  }", "}"].join("\r\n");
    assert.equal(error(text), `${FILE}:3: domain "a.example", key "bogus": unknown key (accepted: tenant_id, dkim_enabled, dkim_alignment_required)`);
  });
});

describe("readEntries", () => {
  it("entries in order, with the line of every key", () => {
    const r = readEntries(lines("{", ' "a": {', '  "x": 1,', "", '  "y": [1,', "2]", " },", ' "b": 2', "}"));
    assert.ok(r.ok);
    assert.deepEqual(
      r.entries.map((e) => ({ key: e.key, line: e.line, value: e.value, keyLines: [...e.keyLines] })),
      [
        { key: "a", line: 2, value: Object.assign(Object.create(null), { x: 1, y: [1, 2] }), keyLines: [["x", 3], ["y", 5]] },
        { key: "b", line: 8, value: 2, keyLines: [] },
      ],
    );
  });

  it("values: nested objects, arrays, numbers, booleans, null, strings with escapes", () => {
    const r = readEntries('{"k": {"a": [true, false, null, -1.5e3, 0, "s\\n\\u00fc"], "o": {}}}');
    assert.ok(r.ok);
    assert.deepEqual(JSON.parse(JSON.stringify(r.entries[0]!.value)), { a: [true, false, null, -1500, 0, "s\nü"], o: {} });
  });

  it("a __proto__ key inside a value stays plain data (no prototype pollution)", () => {
    const r = readEntries('{"k": {"__proto__": {"polluted": true}}}');
    assert.ok(r.ok);
    const v = r.entries[0]!.value as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(v), null);
    assert.deepEqual(Object.keys(v), ["__proto__"]);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it("without sameKey, keys differing in case are distinct", () => {
    const r = readEntries('{"a": 1, "A": 2}');
    assert.ok(r.ok);
    assert.deepEqual(r.entries.map((e) => e.key), ["a", "A"]);
  });

  it("errors carry line and column", () => {
    assert.deepEqual(readEntries('{\n  "a": 01\n}'), { ok: false, line: 2, column: 9, message: "expected ',' or '}', got '1'" });
    assert.deepEqual(readEntries('{"a": 1, "a": 2}'), { ok: false, line: 1, column: 10, message: 'duplicate key "a"' });
  });
});

describe("validateEntry", () => {
  it("accepts an object with a null prototype", () => {
    const o = Object.assign(Object.create(null), { tenant_id: T.toUpperCase(), dkim_enabled: false });
    assert.deepEqual(validateEntry(o), { ok: true, policy: { tenantId: T, dkimEnabled: false, dkimAlignmentRequired: true } });
  });

  it("rejects a __proto__ own key (valibot would drop it silently)", () => {
    const o = Object.create(null) as Record<string, unknown>;
    o["__proto__"] = { dkim_enabled: false };
    const r = validateEntry(o);
    assert.equal(r.ok, false);
    assert.ok(!r.ok && r.key === "__proto__");
  });
});

describe("dkimOffDomains", () => {
  const text = JSON.stringify({ "Open.example": { dkim_enabled: false }, "signed.example": {}, "on.example": { dkim_enabled: true }, "open2.example": { dkim_enabled: false } });
  it("names the policies with dkim_enabled false, in file order (general reader and fast path alike)", () => {
    const general = parsePolicyFile(text, "p.json");
    const fast = parsePolicyBytes(new TextEncoder().encode(text), "p.json");
    assert.ok(general.ok && fast.ok);
    assert.ok(fast.policies instanceof PolicyTable && !(general.policies instanceof PolicyTable));
    assert.deepEqual(dkimOffDomains(general.policies), ["open.example", "open2.example"]);
    assert.deepEqual(dkimOffDomains(fast.policies), ["open.example", "open2.example"]);
  });
  it("none", () => {
    const r = parsePolicyFile(`{"a.example": {}}`, "p.json");
    assert.ok(r.ok);
    assert.deepEqual(dkimOffDomains(r.policies), []);
  });
});
