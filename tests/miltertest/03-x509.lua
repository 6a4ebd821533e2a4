-- Scenario 3: the client certificate CN ({cert_subject}, a HELO-stage macro).
-- Configuration "strict": MILTER_X509_ENABLED, the allow-list holds `allowlisted`.
local T = dofile(lib)

local valid = {
  { "From", "<user@tenant.example>" },
  { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
  { "Authentication-Results", T.dkim_pass("tenant.example") },
}

T.case("no {cert_subject}: rejected", function()
  local conn = T.send({ cert = false }, "X509NONE", valid)
  T.expect_reject(conn, "X509NONE", "No trusted x509 client CN found")
  T.disconnect(conn)
end)

T.case("empty {cert_subject}: rejected", function()
  local conn = T.send({ cert = "" }, "X509EMPTY", valid)
  T.expect_reject(conn, "X509EMPTY", "No trusted x509 client CN found")
  T.disconnect(conn)
end)

T.case("wrong CN: rejected, the CN is named", function()
  local conn = T.send({ cert = "mail.evil.example" }, "X509WRONG", valid)
  T.expect_reject(conn, "X509WRONG", "Untrusted x509 client CN: mail.evil.example")
  T.disconnect(conn)
end)

T.case("a CN that only ends with the trusted one: rejected", function()
  local conn = T.send({ cert = "evil.mail.protection.outlook.com" }, "X509SUFFIX", valid)
  T.expect_reject(conn, "X509SUFFIX", "Untrusted x509 client CN: evil.mail.protection.outlook.com")
  T.disconnect(conn)
end)

T.case("allow-listed client address: certificate not checked, x509_client_trust=False", function()
  local conn = T.send({ ip = allowlisted, cert = false }, "X509ALLOW", valid)
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = false, forwarded = false })
  T.disconnect(conn)
end)

T.case("allow-listed client address with a wrong CN: still not checked", function()
  local conn = T.send({ ip = allowlisted, cert = "mail.evil.example" }, "X509ALLOW2", valid)
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = false, forwarded = false })
  T.disconnect(conn)
end)

T.case("allow-listed IPv6 client address: certificate not checked", function()
  local conn = T.send({ ip = allowlisted6, cert = false }, "X509ALLOW6", valid)
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = false, forwarded = false })
  T.disconnect(conn)
end)

T.case("x509 is the first step: no CN and no From gives the x509 reason", function()
  local conn = T.send({ cert = false }, "X509FIRST", { { "Subject", "no From here" } })
  T.expect_reject(conn, "X509FIRST", "No trusted x509 client CN found")
  T.disconnect(conn)
end)

T.done()
