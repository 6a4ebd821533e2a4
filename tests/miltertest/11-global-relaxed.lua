-- Scenario 11: global switches off where the policy would require them.
-- Configuration "relaxed": MILTER_DKIM_ENABLED with
-- MILTER_DKIM_ALIGNMENT_REQUIRED=false, no x509, no tenant id, add-header on.
local T = dofile(lib)

T.case("unaligned trusted pass accepted when alignment is not required globally", function()
  local conn = T.send({ cert = false }, "RELAX1", {
    { "From", "<user@tenant.example>" },
    { "Authentication-Results", T.dkim_pass("tenant.onmicrosoft.com") },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = false, x509 = false, forwarded = false })
  T.disconnect(conn)
end)

T.case("aligned pass: dkim_aligned=True; tenant ids are not looked at", function()
  local conn = T.send({ cert = "mail.evil.example" }, "RELAX2", {
    { "From", "<user@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "X-MS-Exchange-CrossTenant-Id", T.OTHER_TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = false, forwarded = false })
  T.disconnect(conn)
end)

T.case("DKIM is still required", function()
  local conn = T.send({}, "RELAX3", { { "From", "<user@tenant.example>" } })
  T.expect_reject(conn, "RELAX3", "No valid DKIM authentication results found")
  T.disconnect(conn)
end)

T.case("the policy lookup still decides", function()
  local conn = T.send({}, "RELAX4", { { "From", "<user@unknown.example>" }, { "Authentication-Results", T.dkim_pass("unknown.example") } })
  T.expect_reject(conn, "RELAX4", "No policy for 5322.from_domain unknown.example")
  T.disconnect(conn)
end)

T.done()
