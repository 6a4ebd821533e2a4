import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AnswerCache } from "../../src/policy/answer-cache.ts";
import type { PolicyResult } from "../../src/policy/types.ts";

const found: PolicyResult = { kind: "found", policy: { tenantId: "", dkimEnabled: true, dkimAlignmentRequired: true } };

describe("AnswerCache", () => {
  it("serves an answer within its lifetime and never after it", () => {
    let now = 1000;
    const c = new AnswerCache(60_000, 10, () => now);
    c.set("tenant.example", found);
    c.set("none.example", { kind: "not_found" });
    now += 59_999;
    assert.equal(c.get("tenant.example"), found);
    assert.deepEqual(c.get("none.example"), { kind: "not_found" });
    now += 1;
    assert.equal(c.get("tenant.example"), undefined);
    assert.equal(c.get("none.example"), undefined);
  });

  it("never keeps backend errors", () => {
    const c = new AnswerCache(60_000, 10, () => 0);
    c.set("tenant.example", { kind: "backend_error", reason: "down" });
    assert.equal(c.get("tenant.example"), undefined);
  });

  it("a lifetime of 0 turns it off", () => {
    const c = new AnswerCache(0, 10, () => 0);
    c.set("tenant.example", found);
    assert.equal(c.get("tenant.example"), undefined);
  });

  it("drops the oldest entry when full; clear() empties it", () => {
    const c = new AnswerCache(60_000, 2, () => 0);
    c.set("a.example", found);
    c.set("b.example", found);
    c.set("c.example", found);
    assert.equal(c.get("a.example"), undefined);
    assert.equal(c.get("b.example"), found);
    assert.equal(c.get("c.example"), found);
    c.clear();
    assert.equal(c.get("b.example"), undefined);
  });
});
