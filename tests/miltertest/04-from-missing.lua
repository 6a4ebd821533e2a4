-- Scenario 4: no usable RFC 5322 From header.
-- Configuration "strict".
local T = dofile(lib)

local rest = {
  { "X-MS-Exchange-CrossTenant-Id", T.TENANT },
  { "Authentication-Results", T.dkim_pass("tenant.example") },
}
local function plus(first)
  local h = {}
  for _, x in ipairs(first) do h[#h + 1] = x end
  for _, x in ipairs(rest) do h[#h + 1] = x end
  return h
end

T.case("From missing (the envelope sender does not count)", function()
  local conn = T.send({}, "FROMNONE", plus { { "Subject", "hello" }, { "Sender", "<user@tenant.example>" } })
  T.expect_reject(conn, "FROMNONE", "5322.from header missing")
  T.disconnect(conn)
end)

T.case("a Resent-From does not stand in for a missing From", function()
  local conn = T.send({}, "FROMRESENT", plus { { "Resent-From", "<user@tenant.example>" } })
  T.expect_reject(conn, "FROMRESENT", "5322.from header missing")
  T.disconnect(conn)
end)

T.case("two From headers", function()
  local conn = T.send({}, "FROMTWO", plus { { "From", "<user@tenant.example>" }, { "From", "<user@evil.example>" } })
  T.expect_reject(conn, "FROMTWO", "Multiple 5322.from headers")
  T.disconnect(conn)
end)

T.case("a From without an address", function()
  local conn = T.send({}, "FROMBAD", plus { { "From", "undisclosed sender" } })
  T.expect_reject(conn, "FROMBAD", "Invalid 5322.from header")
  T.disconnect(conn)
end)

T.done()
