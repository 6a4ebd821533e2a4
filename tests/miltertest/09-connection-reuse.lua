-- Scenario 9: one milter connection carries many messages (Postfix reuses it
-- for every message of an SMTP session, with ABORT between them). Every
-- message starts from a clean state: nothing of an earlier or aborted
-- message (From, tenant id, DKIM results, forged headers, the queue id)
-- counts for the next one, while the HELO-stage {cert_subject} stays.
-- Configuration "strict". All cases share one connection, in order.
local T = dofile(lib)

local valid = {
  { "From", "<user@tenant.example>" },
  { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
  { "Authentication-Results", T.dkim_pass("tenant.example") },
}
local accepted = T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false }

local conn
T.case("connect once", function() conn = T.connect {} end)

T.case("1: reject", function()
  T.message(conn, "REUSE1", { { "From", "<ceo@unknown.example>" } })
  T.eom(conn)
  T.expect_reject(conn, "REUSE1", "No policy for 5322.from_domain unknown.example")
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("2: then accept (after ABORT)", function()
  T.message(conn, "REUSE2", valid)
  T.eom(conn)
  T.expect_accept(conn, accepted)
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("3: accept, then reject (after ABORT)", function()
  T.message(conn, "REUSE3", {
    { "From", "<user@tenant.example>" },
    { "X-MS-Exchange-CrossTenant-Id", T.OTHER_TENANT },
    { "Authentication-Results", T.dkim_pass("tenant.example") },
  })
  T.eom(conn)
  T.expect_reject(conn, "REUSE3", "No policy match for tenant-id")
end)

T.case("4: next message without ABORT after EOM is accepted", function()
  T.message(conn, "REUSE4", valid)
  T.eom(conn)
  T.expect_accept(conn, accepted)
end)

T.case("5: an aborted message's DKIM pass does not authorise the next message", function()
  T.message(conn, "REUSE5A", valid) -- From, tenant id and DKIM pass: would be accepted
  T.ok(mt.abort(conn), "mt.abort")
  T.message(conn, "REUSE5B", { { "From", "<user@tenant.example>" }, { "X-MS-Exchange-CrossTenant-Id", T.TENANT } })
  T.eom(conn)
  T.expect_reject(conn, "REUSE5B", "No valid DKIM authentication results found")
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("6: an aborted message's From and queue id do not carry over", function()
  T.message(conn, "REUSE6A", valid)
  T.ok(mt.abort(conn), "mt.abort")
  T.message(conn, nil, { { "Subject", "no From, no queue id macro" } })
  T.eom(conn)
  T.expect_reject(conn, "NOQUEUE", "5322.from header missing")
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("7: an aborted message's tenant id does not carry over", function()
  T.message(conn, "REUSE7A", valid)
  T.ok(mt.abort(conn), "mt.abort")
  T.message(conn, "REUSE7B", { { "From", "<user@tenant.example>" }, { "Authentication-Results", T.dkim_pass("tenant.example") } })
  T.eom(conn)
  T.expect_reject(conn, "REUSE7B", "Tenant-ID is missing!")
end)

T.case("ABORT", function() T.ok(mt.abort(conn), "mt.abort") end)

T.case("8: an aborted message's headers do not add up with the next one's", function()
  T.message(conn, "REUSE8A", {
    { "X-ExOTA-Authentication-Results", "evil.example; auth=pass" },
    { "X-MS-Exchange-CrossTenant-Id", T.OTHER_TENANT },
    { "From", "<evil@evil.example>" },
  })
  T.ok(mt.abort(conn), "mt.abort")
  -- Had anything stayed: two From headers, two tenant ids, a forged header to delete.
  T.message(conn, "REUSE8B", valid)
  T.eom(conn)
  T.expect_accept(conn, accepted, 0)
end)

T.case("9: a rejected message's headers do not add up with the next one's", function()
  T.message(conn, "REUSE9A", {
    { "X-ExOTA-Authentication-Results", "evil.example; auth=pass" },
    { "From", "<evil@evil.example>" },
  })
  T.eom(conn)
  T.expect_reject(conn, "REUSE9A", "No policy for 5322.from_domain evil.example")
  T.message(conn, "REUSE9B", valid)
  T.eom(conn)
  T.expect_accept(conn, accepted, 0)
end)

T.case("disconnect", function() T.disconnect(conn) end)
T.done()
