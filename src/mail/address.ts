/**
 * RFC 5322 mailbox parsing for the From and Resent-From fields: exactly one
 * mailbox, whose domain is taken from the addr-spec only, never from a
 * display name, a comment or a quoted string. UTF-8 is allowed (RFC 6532).
 *
 * Pure: no I/O.
 * @module
 */

/** A parsed mailbox; `domain` is lower-case, A-label form. */
export interface Mailbox {
  readonly localPart: string;
  readonly domain: string;
}

export type MailboxResult =
  | { readonly ok: true; readonly mailbox: Mailbox }
  | { readonly ok: false; readonly error: string };

type Token =
  | { readonly kind: "atom"; readonly text: string }
  | { readonly kind: "quoted"; readonly text: string }
  | { readonly kind: "literal"; readonly text: string }
  | { readonly kind: "special"; readonly text: string };

const SPECIALS = "()<>[]:;@\\,.\"";

function isWsp(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a;
}

/** atext of RFC 5322, widened by RFC 6532 to every non-ASCII character. */
function isAtext(c: number): boolean {
  if (c >= 0x80) return true;
  if (c <= 0x20 || c === 0x7f) return false;
  return !SPECIALS.includes(String.fromCharCode(c));
}

/** Splits a field body into tokens; comments and folding whitespace vanish. */
function tokenize(s: string): Token[] | string {
  const out: Token[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (isWsp(c)) {
      i++;
    } else if (c === 0x28) { // ( comment, nested, with quoted-pairs
      let depth = 0;
      for (; i < s.length; i++) {
        const d = s.charCodeAt(i);
        if (d === 0x5c) i++;
        else if (d === 0x28) depth++;
        else if (d === 0x29 && --depth === 0) break;
      }
      if (depth !== 0) return "unterminated comment";
      i++;
    } else if (c === 0x22) { // " quoted-string
      let text = "";
      for (i++; i < s.length && s.charCodeAt(i) !== 0x22; i++) {
        if (s.charCodeAt(i) === 0x5c) i++;
        if (i < s.length) text += s[i];
      }
      if (i >= s.length) return "unterminated quoted string";
      i++;
      out.push({ kind: "quoted", text });
    } else if (c === 0x5b) { // [ domain literal
      const end = s.indexOf("]", i);
      if (end < 0) return "unterminated domain literal";
      out.push({ kind: "literal", text: s.slice(i, end + 1) });
      i = end + 1;
    } else if (isAtext(c)) {
      const start = i;
      while (i < s.length && isAtext(s.charCodeAt(i))) i++;
      out.push({ kind: "atom", text: s.slice(start, i) });
    } else if (c < 0x20 || c === 0x7f) {
      return `control character 0x${c.toString(16).padStart(2, "0")}`;
    } else if (c === 0x29 || c === 0x5c || c === 0x5d) {
      return `unexpected '${s[i]}'`;
    } else {
      out.push({ kind: "special", text: s[i]! });
      i++;
    }
  }
  return out;
}

const isSpecial = (t: Token | undefined, ch: string) => t !== undefined && t.kind === "special" && t.text === ch;

/**
 * Parses `word *("." word) "@" domain` from `tokens[from..to)`. Dots may
 * repeat or trail in the local part (seen in the wild); two words in a row
 * may not (`"ceo@bank.example" eve@rogue.example` is no address).
 */
function parseAddrSpec(tokens: readonly Token[], from: number, to: number): MailboxResult {
  const at = tokens.findIndex((t, i) => i >= from && i < to && isSpecial(t, "@"));
  if (at < 0) return { ok: false, error: "no @ in address" };
  if (at === from) return { ok: false, error: "empty local part" };
  let localPart = "";
  let lastWasWord = false;
  for (let i = from; i < at; i++) {
    const t = tokens[i]!;
    const isWord = t.kind === "atom" || t.kind === "quoted";
    if (!isWord && !isSpecial(t, ".")) return { ok: false, error: `unexpected '${t.text}' in local part` };
    if (isWord && lastWasWord) return { ok: false, error: "two words in a row in local part" };
    localPart += t.text;
    lastWasWord = isWord;
  }
  const domain = parseDomain(tokens, at + 1, to);
  return "error" in domain ? { ok: false, error: domain.error } : { ok: true, mailbox: { localPart, domain: domain.name } };
}

function parseDomain(tokens: readonly Token[], from: number, to: number): { name: string } | { error: string } {
  if (from >= to) return { error: "empty domain" };
  if (tokens[from]!.kind === "literal") return { error: "address literal as domain" };
  let name = "";
  for (let i = from; i < to; i++) {
    const t = tokens[i]!;
    const wantAtom = (i - from) % 2 === 0;
    if (wantAtom && t.kind === "atom") name += t.text;
    else if (!wantAtom && isSpecial(t, ".")) name += ".";
    else return { error: `unexpected '${t.text}' in domain` };
  }
  // A dot-atom has no trailing dot (RFC 5322 3.2.3): "tenant.example." is not tenant.example.
  if (name.endsWith(".")) return { error: "trailing dot in domain" };
  const normal = normalizeDomain(name);
  return normal === undefined ? { error: `invalid domain '${name}'` } : { name: normal };
}

const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Lower-case, A-label (punycode) form of a domain name, or undefined when it
 * is not a syntactically valid host name. One trailing dot is dropped: a
 * postmaster may write a policy key in absolute form. Names read from a
 * message must not have one; their parsers reject it before calling this.
 */
export function normalizeDomain(name: string): string | undefined {
  let d = name.toLowerCase();
  if (d.endsWith(".")) d = d.slice(0, -1);
  if (d === "" || d.length > 253) return undefined;
  // deno-lint-ignore no-control-regex
  if (/[^\x00-\x7f]/.test(d)) {
    const ascii = toALabels(d);
    if (ascii === undefined) return undefined;
    d = ascii;
  }
  const labels = d.split(".");
  return labels.every((l) => LDH_LABEL.test(l)) ? d : undefined;
}

/** IDNA via the WHATWG URL parser, which every runtime here ships. */
function toALabels(d: string): string | undefined {
  if (/[\s/?#@:%\\[\]]/.test(d)) return undefined;
  try {
    return new URL(`http://${d}/`).hostname;
  } catch {
    return undefined;
  }
}

/**
 * Parses one From-style field body that must hold exactly one mailbox:
 * `addr-spec` or `[display-name] "<" addr-spec ">"`. Lists, groups, bare
 * phrases and source routes are errors.
 */
export function parseMailbox(fieldBody: string): MailboxResult {
  const tokens = tokenize(fieldBody);
  if (typeof tokens === "string") return { ok: false, error: tokens };
  if (tokens.length === 0) return { ok: false, error: "empty field" };
  for (const t of tokens) {
    if (t.kind === "special" && (t.text === "," || t.text === ";" || t.text === ":")) {
      return { ok: false, error: `'${t.text}': not a single mailbox` };
    }
  }
  const open = tokens.findIndex((t) => isSpecial(t, "<"));
  if (open < 0) {
    if (tokens.some((t) => isSpecial(t, ">"))) return { ok: false, error: "unexpected '>'" };
    return parseAddrSpec(tokens, 0, tokens.length);
  }
  // display-name: words and (obsolete) dots only; an @ there is an attack.
  for (let i = 0; i < open; i++) {
    const t = tokens[i]!;
    if (!(t.kind === "atom" || t.kind === "quoted" || isSpecial(t, "."))) {
      return { ok: false, error: `unexpected '${t.text}' in display name` };
    }
  }
  const close = tokens.length - 1;
  if (!isSpecial(tokens[close], ">")) return { ok: false, error: "text after '>' or missing '>'" };
  for (let i = open + 1; i < close; i++) {
    const t = tokens[i]!;
    if (isSpecial(t, "<") || isSpecial(t, ">")) return { ok: false, error: "nested angle brackets" };
  }
  return parseAddrSpec(tokens, open + 1, close);
}
