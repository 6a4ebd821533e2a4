/**
 * Reading Microsoft's OpenID configuration answers and domain names for the
 * tenant lookup (tests/integration/tenant-id.test.ts runs the commands
 * against a stand-in server).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { domainLabel, readAnswer } from "../../src/cli/tenant-id.ts";

const TENANT = "1234abcd-18c5-45e8-88de-123456789abc";

describe("readAnswer", () => {
  it("the tenant id from the v2.0 issuer, lower-cased", () => {
    assert.deepEqual(readAnswer(200, JSON.stringify({ issuer: `https://login.microsoftonline.com/${TENANT.toUpperCase()}/v2.0` })), { kind: "tenant", tenantId: TENANT });
  });
  it("an issuer holding no tenant id (the common endpoint's {tenantid}, the v1 form) is malformed", () => {
    for (const issuer of ["https://login.microsoftonline.com/{tenantid}/v2.0", `https://sts.windows.net/${TENANT}/`, null]) {
      const a = readAnswer(200, JSON.stringify({ issuer }));
      assert.equal(a !== "retry" && a.kind, "error", String(issuer));
    }
  });
  it("AADSTS90002 by description or by error code: unknown; another 400 names its description", () => {
    assert.deepEqual(readAnswer(400, JSON.stringify({ error_description: "AADSTS90002: Tenant 'x' not found.\r\nTrace ID: 1" })), { kind: "unknown" });
    assert.deepEqual(readAnswer(400, JSON.stringify({ error_codes: [90002] })), { kind: "unknown" });
    assert.deepEqual(readAnswer(400, JSON.stringify({ error_description: "AADSTS90013: Invalid input.\r\nTrace ID: 1" })), { kind: "error", reason: "HTTP 400: AADSTS90013: Invalid input." });
  });
  it("5xx and 429 are retried; a body that is no JSON is an error", () => {
    assert.equal(readAnswer(503, ""), "retry");
    assert.equal(readAnswer(429, "{}"), "retry");
    assert.deepEqual(readAnswer(200, "<html>"), { kind: "error", reason: 'malformed answer (HTTP 200, not JSON): "<html>"' });
  });
});

describe("domainLabel", () => {
  it("lower case, trailing dot dropped, IDN as A-label", () => {
    assert.equal(domainLabel("Example.COM."), "example.com");
    assert.equal(domainLabel("bücher.example"), "xn--bcher-kva.example");
  });
  it("no domain: paths, ports, user parts, single labels, empty", () => {
    for (const d of ["a/b", "example.com:443", "user@example.com", "localhost", "", "exa mple.com", "example.com?x"]) assert.equal(domainLabel(d), undefined, d);
  });
});
