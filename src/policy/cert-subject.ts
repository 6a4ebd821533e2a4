/**
 * The CN of a client certificate name as an MTA hands it to milters in
 * `{cert_subject}` and `{cert_issuer}`. Postfix passes only the CN, and only
 * for a certificate it verified. Sendmail passes the whole DN in OpenSSL's
 * one-line form (`/C=US/O=Microsoft+20Corporation/CN=name`), xtext-encoded
 * (RFC 3461 section 4: `+XX`, two upper-case hex digits), for any certificate
 * presented, verified or not. RFC 4514 (`CN=name,O=Org,C=DE`) is read too.
 *
 * Nothing is trimmed or loosened: a name is trusted only when it is exactly
 * the configured one, letter case aside.
 *
 * Pure: no I/O.
 * @module
 */

export type CertName =
  /** `dn`: the MTA gave a whole DN (Sendmail), not a bare CN (Postfix). */
  | { readonly ok: true; readonly cn: string; readonly dn: boolean }
  | { readonly ok: false; readonly reason: string };

/** RFC 3461 xtext: `+XX` with two upper-case hex digits stands for that byte; undefined when an escape is malformed. */
export function decodeXtext(s: string): string | undefined {
  if (!s.includes("+")) return s;
  let out = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== "+") {
      out += s[i];
      continue;
    }
    const hex = s.slice(i + 1, i + 3);
    if (!/^[0-9A-F]{2}$/.test(hex)) return undefined;
    out += String.fromCharCode(parseInt(hex, 16));
    i += 2;
  }
  return out;
}

/**
 * The CN of a certificate name. A DN with no CN, or with more than one (the
 * one-line form does not escape `/`, so a second CN may hide in another
 * attribute's value), is not trusted.
 */
export function certName(value: string): CertName {
  let parts: string[] | undefined;
  let oneLine = false;
  if (value.startsWith("/")) {
    const decoded = decodeXtext(value);
    if (decoded === undefined) return { ok: false, reason: `malformed xtext escape in ${value}` };
    parts = decoded.slice(1).split("/");
    oneLine = true;
  } else if (/^[A-Za-z][\w.-]*=/.test(value)) {
    parts = splitUnescaped(value, ",");
  }
  if (parts === undefined) return { ok: true, cn: value, dn: false };
  const cns = parts
    .map((p) => /^CN=(.*)$/i.exec(p)?.[1])
    .filter((v): v is string => v !== undefined)
    .map((v) => (oneLine ? v : v.replace(/\\(.)/g, "$1")));
  if (cns.length === 0) return { ok: false, reason: `no CN in ${value}` };
  if (cns.length > 1) return { ok: false, reason: `more than one CN in ${value}` };
  return { ok: true, cn: cns[0]!, dn: true };
}

function splitUnescaped(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && i + 1 < s.length) {
      cur += s[i]! + s[i + 1]!;
      i++;
    } else if (s[i] === sep) {
      out.push(cur);
      cur = "";
    } else cur += s[i];
  }
  out.push(cur);
  return out;
}
