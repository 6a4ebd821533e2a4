-- Scenario 8: DKIM results (Authentication-Results of the trusted authserv-id).
-- Configuration "strict": MILTER_DKIM_ENABLED, MILTER_DKIM_ALIGNMENT_REQUIRED.
local T = dofile(lib)

local function msg(domain, tenant, results)
  local h = { { "From", "<user@" .. domain .. ">" }, { "X-MS-Exchange-CrossTenant-Id", tenant } }
  for _, r in ipairs(results) do h[#h + 1] = { "Authentication-Results", r } end
  return h
end

local NO_DKIM = "No valid DKIM authentication results found"

T.case("no Authentication-Results at all", function()
  local conn = T.send({}, "DKIMNONE", msg("tenant.example", T.TENANT, {}))
  T.expect_reject(conn, "DKIMNONE", NO_DKIM)
  T.disconnect(conn)
end)

T.case("an aligned pass from an untrusted authserv-id", function()
  local conn = T.send({}, "DKIMUNTRUSTED", msg("tenant.example", T.TENANT, { T.dkim_pass("tenant.example", "evil.example") }))
  T.expect_reject(conn, "DKIMUNTRUSTED", NO_DKIM)
  T.disconnect(conn)
end)

T.case("the trusted authserv-id only inside a comment", function()
  local conn = T.send({}, "DKIMCOMMENT", msg("tenant.example", T.TENANT,
    { "(" .. trusted .. ") evil.example; dkim=pass header.d=tenant.example" }))
  T.expect_reject(conn, "DKIMCOMMENT", NO_DKIM)
  T.disconnect(conn)
end)

T.case("trusted authserv-id, but dkim=fail", function()
  local conn = T.send({}, "DKIMFAIL", msg("tenant.example", T.TENANT,
    { trusted .. "; dkim=fail (signature did not verify) header.d=tenant.example" }))
  T.expect_reject(conn, "DKIMFAIL", NO_DKIM)
  T.disconnect(conn)
end)

T.case("trusted pass not aligned, alignment required", function()
  local conn = T.send({}, "DKIMUNALIGNED", msg("tenant.example", T.TENANT, { T.dkim_pass("tenant.onmicrosoft.com") }))
  T.expect_reject(conn, "DKIMUNALIGNED", "DKIM alignment required!")
  T.disconnect(conn)
end)

T.case("aligned pass only from the untrusted verifier, unaligned from the trusted one", function()
  local conn = T.send({}, "DKIMMIXED", msg("tenant.example", T.TENANT, {
    T.dkim_pass("tenant.example", "evil.example"),
    T.dkim_pass("tenant.onmicrosoft.com"),
  }))
  T.expect_reject(conn, "DKIMMIXED", "DKIM alignment required!")
  T.disconnect(conn)
end)

T.case("two signatures, one aligned, in one trusted header: accepted", function()
  local conn = T.send({}, "DKIMTWO", msg("tenant.example", T.TENANT, {
    trusted .. "; dkim=pass header.d=tenant.onmicrosoft.com; dkim=pass header.d=tenant.example; spf=pass smtp.mailfrom=tenant.example",
  }))
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.case("alignment waived by the policy (dkim_alignment_required: false)", function()
  local conn = T.send({}, "DKIMWAIVED", msg("relaxed.example", T.RELAXED_TENANT, { T.dkim_pass("relaxed.onmicrosoft.com") }))
  T.expect_accept(conn, T.exota_value { domain = "relaxed.example", dkim = true, aligned = false, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.case("a waived alignment still needs a trusted pass", function()
  local conn = T.send({}, "DKIMWAIVEDNONE", msg("relaxed.example", T.RELAXED_TENANT, { T.dkim_pass("relaxed.example", "evil.example") }))
  T.expect_reject(conn, "DKIMWAIVEDNONE", NO_DKIM)
  T.disconnect(conn)
end)

T.case("policy with dkim_enabled: false needs no DKIM result", function()
  local conn = T.send({}, "DKIMOFF", msg("nodkim.example", T.NODKIM_TENANT, {}))
  T.expect_accept(conn, T.exota_value { domain = "nodkim.example", dkim = false, aligned = false, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.case("policy with dkim_enabled: false reports dkim=False even with an aligned pass", function()
  local conn = T.send({}, "DKIMOFF2", msg("nodkim.example", T.NODKIM_TENANT, { T.dkim_pass("nodkim.example") }))
  T.expect_accept(conn, T.exota_value { domain = "nodkim.example", dkim = false, aligned = false, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.done()
