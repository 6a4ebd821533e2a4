-- Scenario 5: no policy for the From domain (and no Resent-From).
-- Configuration "strict".
local T = dofile(lib)

T.case("unknown From domain", function()
  local conn = T.send({}, "NOPOLICY", {
    { "From", "<ceo@Unknown.Example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("unknown.example") },
  })
  T.expect_reject(conn, "NOPOLICY", "No policy for 5322.from_domain unknown.example")
  T.disconnect(conn)
end)

T.case("a subdomain of a policy domain has no policy", function()
  local conn = T.send({}, "NOPOLICYSUB", {
    { "From", "<user@sub.tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("sub.tenant.example") },
  })
  T.expect_reject(conn, "NOPOLICYSUB", "No policy for 5322.from_domain sub.tenant.example")
  T.disconnect(conn)
end)

T.case("the policy lookup comes before the tenant id: no tenant id and no policy", function()
  local conn = T.send({}, "NOPOLICY2", { { "From", "<ceo@unknown.example>" } })
  T.expect_reject(conn, "NOPOLICY2", "No policy for 5322.from_domain unknown.example")
  T.disconnect(conn)
end)

T.done()
