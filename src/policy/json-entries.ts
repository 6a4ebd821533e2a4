/**
 * A strict JSON reader for policy files that, unlike JSON.parse, reports
 * where things are: the line of every key, the line and column of a syntax
 * error, and duplicate keys (JSON.parse silently keeps the last one, which
 * would let a typo replace a customer's policy unnoticed).
 *
 * Pure: no I/O.
 * @module
 */

export interface Entry {
  readonly key: string;
  readonly line: number;
  readonly value: unknown;
  /** Line of each key of `value`, when `value` is an object. */
  readonly keyLines: ReadonlyMap<string, number>;
}

export type EntriesResult =
  | { readonly ok: true; readonly entries: readonly Entry[] }
  | { readonly ok: false; readonly line: number; readonly column: number; readonly message: string };

class JsonError extends Error {
  constructor(readonly pos: number, message: string) {
    super(message);
  }
}

class Reader {
  pos = 0;
  line = 1;
  lineStart = 0;

  constructor(readonly s: string) {}

  fail(message: string, pos = this.pos): never {
    throw new JsonError(pos, message);
  }

  ws(): void {
    const s = this.s;
    for (;;) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x09 || c === 0x0d) this.pos++;
      else if (c === 0x0a) {
        this.pos++;
        this.line++;
        this.lineStart = this.pos;
      } else return;
    }
  }

  expect(ch: string): void {
    this.ws();
    if (this.s[this.pos] !== ch) this.fail(this.pos >= this.s.length ? `expected '${ch}', got end of file` : `expected '${ch}', got '${this.s[this.pos]}'`);
    this.pos++;
  }

  string(): string {
    this.ws();
    const s = this.s;
    if (s.charCodeAt(this.pos) !== 0x22) this.fail("expected a string in double quotes");
    const start = this.pos;
    let escaped = false;
    let i = this.pos + 1;
    for (;; i++) {
      if (i >= s.length) this.fail("unterminated string", start);
      const c = s.charCodeAt(i);
      if (c === 0x22) break;
      if (c === 0x5c) {
        escaped = true;
        i++;
      } else if (c < 0x20) this.fail("control character in string", i);
    }
    this.pos = i + 1;
    if (!escaped) return s.slice(start + 1, i);
    try {
      return JSON.parse(s.slice(start, i + 1)) as string;
    } catch {
      return this.fail("invalid escape in string", start);
    }
  }

  value(keyLines?: Map<string, number>): unknown {
    this.ws();
    const c = this.s[this.pos];
    if (c === "{") return this.object(keyLines);
    if (c === "[") return this.array();
    if (c === "\"") return this.string();
    const m = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(this.s.slice(this.pos, this.pos + 64));
    if (m === null) this.fail(c === undefined ? "unexpected end of file" : `unexpected '${c}'`);
    this.pos += m[0].length;
    return JSON.parse(m[0]);
  }

  array(): unknown[] {
    this.pos++;
    const out: unknown[] = [];
    this.ws();
    if (this.s[this.pos] === "]") {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.ws();
      const c = this.s[this.pos++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expected ',' or ']'", this.pos - 1);
    }
  }

  /** Calls `each` per member; the object itself is not built here. */
  members(each: (key: string, line: number, keyPos: number) => void): void {
    this.expect("{");
    this.ws();
    if (this.s[this.pos] === "}") {
      this.pos++;
      return;
    }
    for (;;) {
      this.ws();
      const keyPos = this.pos;
      const line = this.line;
      const key = this.string();
      this.expect(":");
      each(key, line, keyPos);
      this.ws();
      const c = this.s[this.pos++];
      if (c === "}") return;
      if (c !== ",") this.fail(c === undefined ? "expected ',' or '}', got end of file" : `expected ',' or '}', got '${c}'`, this.pos - 1);
    }
  }

  object(keyLines?: Map<string, number>): Record<string, unknown> {
    // No prototype: keys such as "__proto__" stay plain data.
    const obj = Object.create(null) as Record<string, unknown>;
    const seen = new Set<string>();
    this.members((key, line, keyPos) => {
      if (seen.has(key)) this.fail(`duplicate key "${key}"`, keyPos);
      seen.add(key);
      keyLines?.set(key, line);
      obj[key] = this.value();
    });
    return obj;
  }
}

/**
 * Reads a JSON document that must be one object, returning its members in
 * order with their line numbers. `sameKey` maps keys to the form in which two
 * keys count as duplicates (e.g. lower-case domains).
 */
export function readEntries(text: string, sameKey: (key: string) => string = (k) => k): EntriesResult {
  const r = new Reader(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  const entries: Entry[] = [];
  const seen = new Map<string, string>();
  try {
    r.ws();
    if (r.s[r.pos] !== "{") r.fail("the policy must be one JSON object: { \"domain\": { ... }, ... }");
    r.members((key, line, keyPos) => {
      const k = sameKey(key);
      const first = seen.get(k);
      if (first !== undefined) r.fail(first === key ? `duplicate key "${key}"` : `duplicate key "${key}" (same as "${first}")`, keyPos);
      seen.set(k, key);
      const keyLines = new Map<string, number>();
      entries.push({ key, line, value: r.value(keyLines), keyLines });
    });
    r.ws();
    if (r.pos < r.s.length) r.fail("text after the closing '}'");
    return { ok: true, entries };
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    const before = r.s.slice(0, e.pos);
    const line = before.split("\n").length;
    const column = e.pos - before.lastIndexOf("\n");
    return { ok: false, line, column, message: e.message };
  }
}
