-- Scenario 1: a valid message of the tenant is accepted and gets the
-- milter's own X-ExOTA-Authentication-Results header.
-- Configuration "strict": x509, tenant id, DKIM with alignment, add-header.
local T = dofile(lib)

T.case("valid tenant: trusted CN, tenant id, aligned DKIM pass from the trusted authserv-id", function()
  local conn = T.send({}, "4CjqCQ2WRCzGjg6", {
    { "From", "Blah Blubb <blah.blubb@tenant.example>" },
    { "To", "<someone@elsewhere.example>" },
    { "Subject", "quarterly report" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.case("letter case does not matter: From domain, tenant id, CN, header names", function()
  local conn = T.send({ cert = "MAIL.Protection.Outlook.COM" }, "4CjqCQ2WRCzGjg7", {
    { "FROM", "<Blah.Blubb@TENANT.Example>" },
    { "x-ms-exchange-crosstenant-id", string.upper(T.TENANT) },
    { "authentication-results", T.dkim_pass("Tenant.EXAMPLE", string.upper(trusted)) },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.case("folded and quoted headers, as Postfix passes them (LF + tab inside the value)", function()
  local conn = T.send({}, "4CjqCQ2WRCzGjg8", {
    { "From", "\"Blubb, Blah (Sales)\"\n\t<blah.blubb@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", trusted .. ";\n\tdkim=pass (2048-bit key; unprotected) header.d=tenant.example\n\theader.i=@tenant.example header.b=\"AbCdEf12\";\n\tspf=pass smtp.mailfrom=tenant.example" },
  })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.done()
