/**
 * The fast path of the policy file (policy-fast.ts, policy-table.ts) must
 * accept exactly what the general reader accepts, with the same policies,
 * and leave every error to the general reader (same message).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { FastPolicyReader } from "../../src/policy/policy-fast.ts";
import { parsePolicyBytes, parsePolicyBytesSliced, parsePolicyFile } from "../../src/policy/policy-file.ts";
import { PolicyTable } from "../../src/policy/policy-table.ts";

const enc = new TextEncoder();
const sorted = (m: ReadonlyMap<string, unknown>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));

/** Runs both readers; returns whether the fast path took the file. */
function same(text: string): boolean {
  const bytes = enc.encode(text);
  const fast = new FastPolicyReader(bytes);
  fast.step();
  const general = parsePolicyFile(text, "p.json");
  const viaBytes = parsePolicyBytes(bytes, "p.json");
  if (!fast.gaveUp) {
    assert.ok(general.ok, `fast path took a file the general reader refuses: ${JSON.stringify(text)}`);
    assert.deepEqual(sorted(fast.policies), sorted(general.policies), text);
  }
  assert.equal(viaBytes.ok, general.ok, text);
  if (viaBytes.ok && general.ok) assert.deepEqual(sorted(viaBytes.policies), sorted(general.policies), text);
  if (!viaBytes.ok && !general.ok) assert.equal(viaBytes.error, general.error, text);
  return !fast.gaveUp;
}

const UUID = "1234abcd-18c5-45e8-88de-123456789abc";

describe("policy file fast path", () => {
  it("takes the common shapes, with the same policies as the general reader", () => {
    const ok = [
      "{}",
      " \n{ }\n",
      `{"a.example": {}}`,
      `{"a.example": {"tenant_id": "${UUID}", "dkim_enabled": true, "dkim_alignment_required": true}}`,
      `{"a.example": {"dkim_alignment_required": false, "tenant_id": "${UUID.toUpperCase()}"},\n "B.Example.": {"dkim_enabled": false},\r\n\t"c.example":{"tenant_id":""}}`,
      `\ufeff{"a.example": {"tenant_id": ""}}`,
      `{"xn--mller-kva.example": {}, "sub-1.a0.example": {"dkim_enabled": false, "dkim_alignment_required": false}}`,
      `{"müller.example": {"tenant_id": "${UUID}"}}`,
    ];
    for (const t of ok) assert.ok(same(t), `fast path gave up: ${t}`);
  });

  it("gives every error (and what it is unsure about) to the general reader, which names it", () => {
    const bad = [
      "",
      "[]",
      `{"a.example": {}`,
      `{"a.example": {},}`,
      `{"a.example": {}} x`,
      `{"a.example": {}, "A.EXAMPLE": {}}`,
      `{"a.example": {}, "a.example.": {}}`,
      `{"a.example": {"tenant_id": "${UUID}", "tenant_id": ""}}`,
      `{"a.example": {"tenant": ""}}`,
      `{"a.example": {"tenant_id": "not-a-uuid"}}`,
      `{"a.example": {"tenant_id": null}}`,
      `{"a.example": {"dkim_enabled": "true"}}`,
      `{"a.example": {"dkim_enabled": 1}}`,
      `{"a.example": {"dkim_enabled": truex}}`,
      `{"a.example": []}`,
      `{"a.example": "x"}`,
      `{"localhost": {}}`,
      `{"-a.example": {}}`,
      `{"a-.example": {}}`,
      `{"a..example": {}}`,
      `{"a_b.example": {}}`,
      `{"${"a".repeat(64)}.example": {}}`,
      `{"a\\u002eexample": {}}`,
      `{"a.example": {"tenant_id": "\\u0031234abcd-18c5-45e8-88de-123456789abc"}}`,
      `{"__proto__": {}}`,
    ];
    for (const t of bad) same(t);
    // Escapes and such are valid JSON the fast path leaves to the general reader.
    assert.equal(same(`{"a\\u002eexample": {}}`), false);
  });

  it("random files of valid and broken entries: both readers agree", () => {
    const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?$/);
    const domain = fc.oneof(
      fc.array(label, { minLength: 2, maxLength: 4 }).map((ls) => ls.join(".")),
      fc.constantFrom("a..b", "-x.example", "x", "x.example.", "ümlaut.example", "a b.example", "a.example"),
    );
    const value = fc.oneof(
      fc.constantFrom(`""`, `"${UUID}"`, `"${UUID.toUpperCase()}"`, `"nope"`, "true", "false", "null", "1"),
    );
    const key = fc.constantFrom("tenant_id", "dkim_enabled", "dkim_alignment_required", "other");
    const entry = fc.tuple(domain, fc.array(fc.tuple(key, value), { maxLength: 4 }), fc.constantFrom(" ", "", "\n  "));
    fc.assert(
      fc.property(fc.array(entry, { maxLength: 8 }), (entries) => {
        const text = "{" + entries.map(([d, kv, ws]) => `${ws}"${d}":${ws}{${kv.map(([k, v]) => `"${k}":${ws}${v}`).join(",")}}`).join(",") + "}";
        same(text);
      }),
      { numRuns: 500 },
    );
  });

  it("in slices: the same result, and it does pause", async () => {
    const n = 5000;
    const text = "{" + Array.from({ length: n }, (_, i) => `"d${i}.example": {"tenant_id": "${UUID}", "dkim_enabled": ${i % 2 === 0}}`).join(",\n") + "}";
    let pauses = 0;
    const r = await parsePolicyBytesSliced(enc.encode(text), "p.json", () => true, () => {
      pauses++;
      return Promise.resolve();
    });
    assert.ok(r.ok);
    assert.equal(r.policies.size, n);
    assert.ok(pauses >= 4, `paused ${pauses} times`);
    const general = parsePolicyFile(text, "p.json");
    assert.ok(general.ok);
    assert.deepEqual(sorted(r.policies), sorted(general.policies));
  });
});

describe("PolicyTable", () => {
  it("grows past its first size, finds every domain, and nothing else", () => {
    const t = new PolicyTable(4, 16);
    for (let i = 0; i < 3000; i++) {
      assert.ok(t.add(`d${i}.example`, { tenantId: i % 3 === 0 ? "" : UUID, dkimEnabled: i % 2 === 0, dkimAlignmentRequired: i % 5 !== 0 }));
    }
    assert.equal(t.size, 3000);
    assert.equal(t.add("d7.example", { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: true }), false, "duplicate");
    for (let i = 0; i < 3000; i++) {
      assert.deepEqual(t.get(`d${i}.example`), { tenantId: i % 3 === 0 ? "" : UUID, dkimEnabled: i % 2 === 0, dkimAlignmentRequired: i % 5 !== 0 });
    }
    for (const d of ["d3000.example", "", "d1.example.", "D1.example", "d1.exampl", "dü.example"]) {
      assert.equal(t.get(d), undefined, d);
      assert.equal(t.has(d), false, d);
    }
    assert.equal([...t.keys()].length, 3000);
    assert.throws(() => t.add(`${"a".repeat(252)}.example`, { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: true }), RangeError);
    assert.deepEqual(new Map(t).get("d4.example"), t.get("d4.example"));
  });
});
