/**
 * The CN of a client certificate subject. Postfix puts only the CN into
 * `{cert_subject}`; Sendmail and others may give the whole DN, either
 * OpenSSL's one-line form (`/C=DE/O=Org/CN=name`) or RFC 4514
 * (`CN=name,O=Org,C=DE`).
 *
 * Pure: no I/O.
 * @module
 */

/** The CN (the most specific one, if several), or the subject itself when it is no DN. */
export function commonName(subject: string): string {
  const s = subject.trim();
  const parts = s.startsWith("/") ? splitUnescaped(s.slice(1), "/") : /^[A-Za-z][\w.-]*\s*=/.test(s) ? splitUnescaped(s, ",") : undefined;
  if (parts === undefined) return s;
  const cns = parts
    .map((p) => /^\s*CN\s*=\s*(.*?)\s*$/i.exec(p)?.[1])
    .filter((v): v is string => v !== undefined)
    .map((v) => v.replace(/\\(.)/g, "$1"));
  if (cns.length === 0) return s;
  // OpenSSL's form lists the CN last, RFC 4514 first: both put the most specific where we look.
  return s.startsWith("/") ? cns[cns.length - 1]! : cns[0]!;
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
