/**
 * RFC 8601 Authentication-Results parsing: the authserv-id and each result
 * with its properties. Comments are removed before anything is read, so an
 * authserv-id or a result that appears only inside a comment counts for
 * nothing.
 *
 * Pure: no I/O.
 * @module
 */
import { normalizeDomain } from "./address.ts";

export interface AuthResult {
  /** Method, lower-case, without version (`dkim`). */
  readonly method: string;
  /** Result, lower-case (`pass`). */
  readonly result: string;
  /** Properties by lower-case `ptype.property` (`header.d`), values as written. */
  readonly props: ReadonlyMap<string, string>;
}

export interface AuthResults {
  /** Lower-case authserv-id. */
  readonly authservId: string;
  readonly results: readonly AuthResult[];
}

/**
 * Replaces comments by a space, keeping quoted strings intact; undefined when
 * a comment or quoted string is not closed.
 */
function stripComments(s: string): string | undefined {
  // Most field bodies have no comment and no quoted string: nothing to do.
  if (s.indexOf("(") < 0 && s.indexOf(")") < 0 && s.indexOf("\"") < 0) return s;
  let out = "";
  let depth = 0;
  let quoted = false;
  /** Start of the characters still to copy (outside comments). */
  let run = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x5c && (quoted || depth > 0)) {
      i++; // a quoted-pair: copied with the run when quoted, dropped in a comment
    } else if (depth > 0) {
      if (c === 0x28) depth++;
      else if (c === 0x29 && --depth === 0) {
        out += " ";
        run = i + 1;
      }
    } else if (quoted) {
      if (c === 0x22) quoted = false;
    } else if (c === 0x28) {
      out += s.slice(run, i);
      depth = 1;
    } else if (c === 0x29) {
      return undefined;
    } else if (c === 0x22) {
      quoted = true;
    }
  }
  return depth === 0 && !quoted ? out + s.slice(run) : undefined;
}

/**
 * Tokens of a comment-free string: quoted strings, `;`, `=`, `/` and words.
 * A word right after `=` is a value and runs to the next space or `;`, so
 * unquoted base64 such as `header.b=ab/c+d=` stays whole.
 */
function tokenize(s: string): string[] {
  const out: string[] = [];
  const n = s.length;
  /** The last token is `=`: the next word is a value. */
  let afterEq = false;
  let i = 0;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) {
      i++;
    } else if (c === 0x3b || (!afterEq && (c === 0x3d || c === 0x2f))) { // ; or, not after =, = /
      out.push(s[i]!);
      afterEq = c === 0x3d;
      i++;
    } else if (c === 0x22) { // a quoted string: kept with its opening quote, quoted-pairs resolved
      let text = "\"";
      for (i++; i < n && s.charCodeAt(i) !== 0x22; i++) {
        if (s.charCodeAt(i) === 0x5c) i++;
        if (i < n) text += s[i];
      }
      i++;
      out.push(text);
      afterEq = false;
    } else {
      const start = i;
      for (i++; i < n; i++) {
        const d = s.charCodeAt(i);
        if (d === 0x20 || d === 0x09 || d === 0x0d || d === 0x0a || d === 0x3b) break;
        if (!afterEq && (d === 0x3d || d === 0x2f || d === 0x22)) break;
      }
      const word = s.slice(start, i);
      out.push(word);
      afterEq = word === "=";
    }
  }
  return out;
}

const isValue = (t: string | undefined): t is string => t !== undefined && t !== ";" && t !== "=" && t !== "/";
const unquote = (t: string) => (t.startsWith("\"") ? t.slice(1) : t);

/** Parses one resinfo (`method[/v]=result [reason=..] [ptype.prop=value ...]`). */
function parseResinfo(tokens: readonly string[]): AuthResult | undefined {
  let i = 0;
  const method = tokens[i++];
  if (!isValue(method) || method.startsWith("\"")) return undefined;
  if (tokens[i] === "/") {
    if (!isValue(tokens[i + 1])) return undefined;
    i += 2;
  }
  if (tokens[i++] !== "=") return undefined;
  const result = tokens[i++];
  if (!isValue(result) || result.startsWith("\"")) return undefined;
  const props = new Map<string, string>();
  while (i < tokens.length) {
    const key = tokens[i];
    if (!isValue(key) || tokens[i + 1] !== "=" || !isValue(tokens[i + 2])) return undefined;
    const value = unquote(tokens[i + 2]!);
    const k = key.toLowerCase();
    if (k !== "reason" && !/^[a-z0-9-]+\.[^.]+/.test(k)) return undefined;
    if (!props.has(k)) props.set(k, value);
    i += 3;
  }
  return { method: method.toLowerCase(), result: result.toLowerCase(), props };
}

/** Parses an Authentication-Results field body; undefined when malformed. */
export function parseAuthResults(fieldBody: string): AuthResults | undefined {
  const clean = stripComments(fieldBody);
  if (clean === undefined) return undefined;
  const tokens = tokenize(clean);
  const id = tokens[0];
  if (!isValue(id)) return undefined;
  let i = 1;
  if (isValue(tokens[i]) && /^\d+$/.test(tokens[i]!)) i++; // authres-version
  const results: AuthResult[] = [];
  // Each resinfo starts at a ';'.
  while (i < tokens.length) {
    if (tokens[i] !== ";") return undefined;
    let end = i + 1;
    while (end < tokens.length && tokens[end] !== ";") end++;
    const part = tokens.slice(i + 1, end);
    if (part.length === 1 && part[0]!.toLowerCase() === "none") {
      if (results.length > 0 || end !== tokens.length) return undefined;
    } else if (part.length > 0) {
      const r = parseResinfo(part);
      if (r === undefined) return undefined;
      results.push(r);
    }
    i = end;
  }
  return { authservId: unquote(id).toLowerCase(), results };
}

/**
 * The signing domain of a DKIM result: `header.d`, or the domain of
 * `header.i` only when `header.d` is absent; normalized like From domains.
 * Undefined when it is no domain name, also for a trailing dot: a DKIM `d=`
 * tag has none (RFC 6376 3.5), so `tenant.example.` names no domain.
 */
export function dkimDomain(r: AuthResult): string | undefined {
  const d = r.props.get("header.d");
  if (d !== undefined) return signingDomain(d);
  const i = r.props.get("header.i");
  if (i === undefined) return undefined;
  const at = i.lastIndexOf("@");
  return signingDomain(at >= 0 ? i.slice(at + 1) : i);
}

const signingDomain = (name: string) => (name.endsWith(".") ? undefined : normalizeDomain(name));
