-- Scenario 10: the valid message of scenario 1, and a rejected one, over a
-- unix domain socket (MILTER_SOCKET=unix:/path), on one connection.
-- Configuration "unix": as "strict".
local T = dofile(lib)

T.case("the runner gave a unix socket", function()
  T.check(string.sub(socket, 1, 5) == "unix:", "socket is %s", socket)
end)

local conn
T.case("connect", function() conn = T.connect {} end)

T.case("valid tenant accepted", function()
  T.message(conn, "UNIX1", {
    { "From", "Blah Blubb <blah.blubb@tenant.example>" },
    { "Subject", "quarterly report" },
    { "X-ExOTA-Authentication-Results", "evil.example; auth=pass" },
    { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.eom(conn)
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false }, 1)
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("then a rejected one", function()
  T.message(conn, "UNIX2", { { "From", "<user@tenant.example>" }, { "X-MS-Exchange-CrossTenant-Id", T.TENANT } })
  T.eom(conn)
  T.expect_reject(conn, "UNIX2", "No valid DKIM authentication results found")
end)

T.case("disconnect", function() T.disconnect(conn) end)
T.done()
