-- Scenario 7: the tenant id header X-MS-Exchange-CrossTenant-Id.
-- Configuration "strict": MILTER_TENANT_ID_REQUIRED.
local T = dofile(lib)

local function msg(tenant_headers, from)
  local h = { { "From", from or "<user@tenant.example>" } }
  for _, t in ipairs(tenant_headers) do h[#h + 1] = { "X-MS-Exchange-CrossTenant-Id", t } end
  h[#h + 1] = { "Authentication-Results", T.dkim_pass("tenant.example") }
  return h
end

T.case("tenant id missing", function()
  local conn = T.send({}, "TIDNONE", msg {})
  T.expect_reject(conn, "TIDNONE", "Tenant-ID is missing!")
  T.disconnect(conn)
end)

T.case("tenant id of another tenant", function()
  local conn = T.send({}, "TIDOTHER", msg { T.OTHER_TENANT })
  T.expect_reject(conn, "TIDOTHER", "No policy match for tenant-id")
  T.disconnect(conn)
end)

T.case("tenant id of another policy's tenant", function()
  local conn = T.send({}, "TIDRELAXED", msg { T.RELAXED_TENANT })
  T.expect_reject(conn, "TIDRELAXED", "No policy match for tenant-id")
  T.disconnect(conn)
end)

T.case("two different tenant id headers", function()
  local conn = T.send({}, "TIDTWO", msg { T.TENANT, T.OTHER_TENANT })
  T.expect_reject(conn, "TIDTWO", "Multiple/different tenant-ID headers found!")
  T.disconnect(conn)
end)

T.case("two different tenant ids are checked before the policy lookup", function()
  local conn = T.send({}, "TIDTWONOPOL", msg({ T.OTHER_TENANT, T.TENANT }, "<x@unknown.example>"))
  T.expect_reject(conn, "TIDTWONOPOL", "Multiple/different tenant-ID headers found!")
  T.disconnect(conn)
end)

T.case("the same tenant id twice, in different letter case: accepted", function()
  local conn = T.send({}, "TIDSAME", msg { T.TENANT, " " .. string.upper(T.TENANT) })
  T.expect_accept(conn, T.exota_value { domain = "tenant.example", dkim = true, aligned = true, x509 = true, forwarded = false })
  T.disconnect(conn)
end)

T.done()
