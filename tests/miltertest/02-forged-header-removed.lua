-- Scenario 2: X-ExOTA-Authentication-Results headers that came with the
-- message are forgeable: every one of them, in any letter case, is deleted
-- (1-based indexes among the headers of that name) and the milter adds its own.
-- Configuration "strict".
local T = dofile(lib)

local valid = {
  { "From", "<user@tenant.example>" },
  { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
  { "Authentication-Results", T.dkim_pass("tenant.example") },
}

local function with(extra)
  local h = {}
  for _, x in ipairs(extra) do h[#h + 1] = x end
  for _, x in ipairs(valid) do h[#h + 1] = x end
  return h
end

local expected = T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false }

T.case("three forged headers in mixed letter case are all deleted", function()
  local conn = T.send({}, "FORGED3", with {
    { "X-ExOTA-Authentication-Results", "evil.example;\n  auth=pass 5322_from_domain=tenant.example" },
    { "x-exota-authentication-results", "evil.example; auth=pass" },
    { "X-EXOTA-AUTHENTICATION-RESULTS", "evil.example; auth=pass" },
  })
  T.expect_accept(conn, expected, 3)
  T.disconnect(conn)
end)

T.case("one forged header is deleted", function()
  local conn = T.send({}, "FORGED1", with { { "x-ExOTA-authentication-RESULTS", "smarthost.example; auth=pass" } })
  T.expect_accept(conn, expected, 1)
  T.disconnect(conn)
end)

T.case("no forged header: nothing is deleted", function()
  local conn = T.send({}, "FORGED0", with {})
  T.expect_accept(conn, expected, 0)
  T.disconnect(conn)
end)

T.case("a rejected message keeps its headers (only the reply is sent)", function()
  local conn = T.send({}, "FORGEDR", {
    { "X-ExOTA-Authentication-Results", "evil.example; auth=pass" },
    { "From", "<user@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.OTHER_TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.expect_reject(conn, "FORGEDR", "No policy match for tenant-id")
  T.disconnect(conn)
end)

T.done()
