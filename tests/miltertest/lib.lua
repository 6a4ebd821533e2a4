-- Helpers shared by the miltertest scenario scripts of exota-milter.
--
-- Every script starts with `local T = dofile(lib)`. The runner
-- (tests/integration/miltertest.test.ts) defines these globals with -D:
--   socket        where the milter listens (inet:PORT@127.0.0.1 or unix:/path)
--   lib           the path of this file
--   authservid    MILTER_AUTHSERVID of the milter (written into the added header)
--   trusted       MILTER_TRUSTED_AUTHSERVID (whose Authentication-Results count)
--   allowlisted   an IPv4 address on MILTER_X509_IP_WHITELIST
--   allowlisted6  an IPv6 address on it
--
-- This build of miltertest does not print the message of error(), so every
-- failure is written to stderr here before the script fails. Scripts are
-- made of T.case(name, fn) blocks; a failing case does not stop the others,
-- and the script fails at T.done() when any case failed.
--
-- The milter negotiates NORCPT, NODATA, NOEOH, NOBODY and NOUNKNOWN, so the
-- scripts never call mt.rcptto, mt.data, mt.eoh, mt.bodystring or mt.unknown.

local T = {}

-- The policy domains and tenant ids of tests/miltertest/policy.json (which
-- the runner copies for the milter). There the first domain is written
-- "Tenant.Example" and its tenant id in capitals, on purpose: lookups and
-- comparisons must not depend on letter case.
T.TENANT = "1234abcd-18c5-45e8-88de-123456789abc"         -- tenant.example
T.RELAXED_TENANT = "5678abcd-18c5-45e8-88de-123456789abc" -- relaxed.example (alignment waived)
T.NODKIM_TENANT = "9abcabcd-18c5-45e8-88de-123456789abc"  -- nodkim.example (DKIM off in the policy)
T.OTHER_TENANT = "deadbeef-0000-4000-8000-000000000001"   -- in no policy

T.TRUSTED_CN = "mail.protection.outlook.com"
T.CLIENT_IP = "198.51.100.10" -- not on the x509 allow-list
T.EXOTA = "X-ExOTA-Authentication-Results"
T.REJECT_MESSAGE = "Security policy violation!"

local failures = 0
local cases = 0

local function report(line)
  io.stderr:write(line .. "\n")
  io.stderr:flush()
end

--- Fails the current case with a message (formatted like string.format).
function T.fail(fmt, ...)
  local msg = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  error(msg, 2)
end

function T.check(cond, fmt, ...)
  if not cond then
    local msg = select("#", ...) > 0 and string.format(fmt, ...) or fmt
    error(msg, 2)
  end
end

--- mt.* calls return nil on success, else an error string.
function T.ok(result, what)
  if result ~= nil then error(string.format("%s failed: %s", what, tostring(result)), 2) end
end

--- Runs one case; an error is reported with a traceback and counted.
function T.case(name, fn)
  cases = cases + 1
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    print("ok - " .. name)
  else
    failures = failures + 1
    report("FAIL - " .. name .. ": " .. tostring(err))
  end
end

--- Ends the script: fails it when any case failed.
function T.done()
  if failures > 0 then
    report(string.format("%d of %d case(s) failed", failures, cases))
    error(string.format("%d of %d case(s) failed", failures, cases))
  end
  print(string.format("all %d case(s) passed", cases))
end

--- A new milter connection that has seen CONNECT and HELO, as Postfix does it.
-- opts.ip: client address (default T.CLIENT_IP); opts.cert: the {cert_subject}
-- macro, sent with the HELO-stage macros (default T.TRUSTED_CN; false = none).
function T.connect(opts)
  opts = opts or {}
  local conn = mt.connect(socket, 40, 0.05)
  T.check(conn ~= nil, "mt.connect(%s) failed", tostring(socket))
  T.ok(mt.conninfo(conn, "mail-fr2deu01lp2173.outbound.protection.outlook.com", opts.ip or T.CLIENT_IP), "mt.conninfo")
  -- NR_CONN/NR_HELO: no reply is read, the reply stays CONTINUE.
  T.check(mt.getreply(conn) == SMFIR_CONTINUE, "unexpected reply to CONNECT")
  local cert = opts.cert
  if cert == nil then cert = T.TRUSTED_CN end
  if cert then T.ok(mt.macro(conn, SMFIC_HELO, "{cert_subject}", cert), "mt.macro(HELO)") end
  T.ok(mt.helo(conn, "DEU01-FR2-obe.outbound.protection.outlook.com"), "mt.helo")
  return conn
end

--- Sends one message up to its headers. `qid` is the `i` macro (nil: none);
-- `headers` a list of {name, value}. A Message-ID is always sent too, so that
-- miltertest never fills in a From header of its own.
function T.message(conn, qid, headers)
  if qid ~= nil then T.ok(mt.macro(conn, SMFIC_MAIL, "i", qid), "mt.macro(MAIL)") end
  T.ok(mt.mailfrom(conn, "<sender@tenant.example>"), "mt.mailfrom")
  T.ok(mt.header(conn, "Message-ID", "<" .. (qid or "noqueue") .. "@miltertest.invalid>"), "mt.header(Message-ID)")
  for _, h in ipairs(headers) do
    T.ok(mt.header(conn, h[1], h[2]), "mt.header(" .. h[1] .. ")")
  end
end

--- End of message; returns nothing, check the outcome with T.expect_*.
function T.eom(conn)
  T.ok(mt.eom(conn), "mt.eom")
end

--- `<trusted>; dkim=pass header.d=<d>` (authserv-id overridable).
function T.dkim_pass(d, authserv)
  return string.format("%s; dkim=pass (2048-bit key; unprotected) header.d=%s header.i=@%s header.b=AbCdEf12", authserv or trusted, d, d)
end

local function pybool(b) return b and "True" or "False" end

--- The exact value of the header the milter adds.
function T.exota_value(o)
  return string.format("%s;\n  auth=pass 5322_from_domain=%s dkim=%s dkim_aligned=%s x509_client_trust=%s forwarded=%s",
    authservid, o.domain, pybool(o.dkim), pybool(o.aligned), pybool(o.x509), pybool(o.forwarded))
end

--- The reject reply: exactly `550 5.7.1 queue_id: <qid> - Security policy violation! - reason: <reason>`,
-- and no header changes.
function T.expect_reject(conn, qid, reason)
  local reply = mt.getreply(conn)
  T.check(reply == SMFIR_REPLYCODE, "expected SMFIR_REPLYCODE for %q, got reply %s (%q)", reason, tostring(reply), string.char(math.tointeger(reply) or 0))
  local text = string.format("queue_id: %s - %s - reason: %s", qid, T.REJECT_MESSAGE, reason)
  T.check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", text), "expected reply 550 5.7.1 %q", text)
  T.check(not mt.eom_check(conn, MT_HDRADD), "a header was added to a rejected message")
  T.check(not mt.eom_check(conn, MT_HDRCHANGE), "a header was changed or deleted in a rejected message")
end

--- Acceptance: CONTINUE, exactly the deletions `deleted` (number of forged
-- X-ExOTA-Authentication-Results, default 0) and, when `added` is a string,
-- exactly one added X-ExOTA-Authentication-Results with that value (nil: none).
function T.expect_accept(conn, added, deleted)
  deleted = deleted or 0
  local reply = mt.getreply(conn)
  T.check(reply == SMFIR_CONTINUE, "expected SMFIR_CONTINUE, got reply %s (%q)", tostring(reply), string.char(math.tointeger(reply) or 0))
  for i = 1, deleted do
    T.check(mt.eom_check(conn, MT_HDRDELETE, T.EXOTA, i), "%s #%d was not deleted", T.EXOTA, i)
  end
  T.check(not mt.eom_check(conn, MT_HDRDELETE, T.EXOTA, deleted + 1), "%s #%d was deleted, only %d expected", T.EXOTA, deleted + 1, deleted)
  if deleted == 0 then T.check(not mt.eom_check(conn, MT_HDRCHANGE), "a header was changed or deleted") end
  if added == nil then
    T.check(not mt.eom_check(conn, MT_HDRADD), "a header was added, none expected")
  else
    T.check(mt.eom_check(conn, MT_HDRADD, T.EXOTA, added), "%s not added with value %q; got %q", T.EXOTA, added, tostring(mt.getheader(conn, T.EXOTA, 0)))
    T.check(mt.getheader(conn, T.EXOTA, 0) == added, "mt.getheader value differs")
    T.check(mt.getheader(conn, T.EXOTA, 1) == nil, "%s added more than once", T.EXOTA)
    T.check(not mt.eom_check(conn, MT_HDRINSERT), "a header was inserted")
  end
end

function T.disconnect(conn)
  T.ok(mt.disconnect(conn), "mt.disconnect")
end

--- One message on a fresh connection: connect, send, EOM; returns the connection.
function T.send(opts, qid, headers)
  local conn = T.connect(opts)
  T.message(conn, qid, headers)
  T.eom(conn)
  return conn
end

return T
