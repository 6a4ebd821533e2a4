-- Scenario 12: the defaults: only the policy lookup; DKIM, x509, tenant id
-- and the added header are off. Forged X-ExOTA-Authentication-Results
-- headers are still deleted.
-- Configuration "defaults": MILTER_SOCKET and MILTER_POLICY_FILE only.
local T = dofile(lib)

T.case("policy domain accepted without any other evidence; forged header deleted, none added", function()
  local conn = T.send({ cert = false }, "DEF1", {
    { "From", "<user@tenant.example>" },
    { "X-EXOTA-Authentication-Results", "evil.example; auth=pass" },
  })
  T.expect_accept(conn, nil, 1)
  T.disconnect(conn)
end)

T.case("no policy: rejected", function()
  local conn = T.send({}, "DEF2", { { "From", "<user@unknown.example>" } })
  T.expect_reject(conn, "DEF2", "No policy for 5322.from_domain unknown.example")
  T.disconnect(conn)
end)

T.case("From missing: rejected", function()
  local conn = T.send({}, "DEF3", { { "Subject", "no From" } })
  T.expect_reject(conn, "DEF3", "5322.from header missing")
  T.disconnect(conn)
end)

T.done()
