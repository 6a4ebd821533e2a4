-- Scenario 6: forwarded mail. The From domain has no policy; the Resent-From
-- domain's policy is used and the added header says forwarded=True.
-- DKIM alignment is still measured against the From domain (DESIGN.md 2.6).
-- Configuration "strict".
local T = dofile(lib)

T.case("Resent-From domain with a policy (alignment waived): accepted, forwarded=True", function()
  local conn = T.send({}, "FWD1", {
    { "From", "Original Sender <someone@outside.example>" },
    { "Resent-From", "Relaxed Tenant <fwd@relaxed.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.RELAXED_TENANT },
    { "Authentication-Results", T.dkim_pass("relaxed.example") },
  })
  T.expect_accept(conn, T.exota_value { domain = "outside.example", dkim = true, aligned = false, x509 = true, forwarded = true })
  T.disconnect(conn)
end)

T.case("forwarded with the original sender's aligned signature: dkim_aligned=True", function()
  local conn = T.send({}, "FWD2", {
    { "From", "<someone@outside.example>" },
    { "Resent-From", "<fwd@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("outside.example") },
  })
  T.expect_accept(conn, T.exota_value { domain = "outside.example", dkim = true, aligned = true, x509 = true, forwarded = true })
  T.disconnect(conn)
end)

T.case("Resent-From domain requires alignment, signature only by the forwarder: rejected", function()
  local conn = T.send({}, "FWD3", {
    { "From", "<someone@outside.example>" },
    { "Resent-From", "<fwd@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.expect_reject(conn, "FWD3", "DKIM alignment required!")
  T.disconnect(conn)
end)

T.case("the tenant id must match the Resent-From domain's policy", function()
  local conn = T.send({}, "FWD4", {
    { "From", "<someone@outside.example>" },
    { "Resent-From", "<fwd@relaxed.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("relaxed.example") },
  })
  T.expect_reject(conn, "FWD4", "No policy match for tenant-id")
  T.disconnect(conn)
end)

T.case("Resent-From domain without a policy either", function()
  local conn = T.send({}, "FWD5", {
    { "From", "<someone@outside.example>" },
    { "Resent-From", "<fwd@Elsewhere.Example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("outside.example") },
  })
  T.expect_reject(conn, "FWD5", "No policy for 5322.resent_from_domain elsewhere.example")
  T.disconnect(conn)
end)

T.case("From domain with a policy and a Resent-From: not forwarded", function()
  local conn = T.send({}, "FWD6", {
    { "From", "<user@tenant.example>" },
    { "Resent-From", "<fwd@relaxed.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.done()
