/**
 * A compact, read-only map of domain -> policy for big policy files: domains
 * as bytes in one arena, tenant ids as 16 bytes, an open-addressing hash
 * table of indexes. A million domains take ~70 MB and load without creating
 * a million strings and objects; a lookup is O(1) (one hash, one or two
 * probes) and builds the policy object it returns. Laid out for few cache
 * misses with a table far bigger than the CPU's caches: a slot holds the
 * entry and its hash, an entry its arena offset and length side by side.
 *
 * Pure: no I/O.
 * @module
 */
import type { Policy } from "./types.ts";

const DKIM = 1, ALIGN = 2, TENANT = 4;

/** FNV-1a step; the same over bytes (insert) and char codes (lookup). */
const step = (h: number, c: number) => Math.imul(h ^ c, 16777619);
const FNV = 0x811c9dc5 | 0;

const HEX = "0123456789abcdef";

export class PolicyTable implements ReadonlyMap<string, Policy> {
  #arena: Uint8Array;
  #arenaLen = 0;
  /** Per entry: arena offset, then key length | flags << 8. */
  #keys: Int32Array;
  #tenant: Uint8Array;
  /** Per slot: entry index + 1 (0: empty), the key's hash. Power-of-two slot count, at most half full. */
  #slots: Int32Array;
  #slotMask: number;
  #size = 0;

  /** Room for about `entries` domains of `domainBytes` in all (it grows beyond). */
  constructor(entries = 1024, domainBytes = entries * 32) {
    const n = Math.max(16, entries);
    this.#arena = new Uint8Array(Math.max(1024, domainBytes));
    this.#keys = new Int32Array(n * 2);
    this.#tenant = new Uint8Array(n * 16);
    let slots = 32;
    while (slots < n * 2) slots *= 2;
    this.#slots = new Int32Array(slots * 2);
    this.#slotMask = slots - 1;
  }

  get size(): number {
    return this.#size;
  }

  /** The bytes of a domain being added; the caller writes them with {@link addByte}. */
  #pendingStart = -1;

  /** Starts a new key; bytes follow with {@link addByte}, then {@link commit}. */
  begin(): void {
    this.#pendingStart = this.#arenaLen;
  }

  addByte(c: number): void {
    if (this.#arenaLen === this.#arena.length) {
      const a = new Uint8Array(this.#arena.length * 2);
      a.set(this.#arena);
      this.#arena = a;
    }
    this.#arena[this.#arenaLen++] = c;
  }

  /**
   * Ends the key begun with {@link begin}: its policy, `tenant` being 16
   * bytes at `tenantAt` in `tenantBytes`, or undefined for none. False (and
   * nothing added) when the key is already there.
   */
  commit(dkimEnabled: boolean, alignmentRequired: boolean, tenantBytes: Uint8Array | undefined, tenantAt = 0): boolean {
    const start = this.#pendingStart;
    const len = this.#arenaLen - start;
    // Domains are at most 253 bytes (callers check); the length shares an int with the flags.
    if (len > 255) throw new RangeError(`domain of ${len} bytes`);
    let h = FNV;
    for (let i = 0; i < len; i++) h = step(h, this.#arena[start + i]!);
    if (this.#find(h, start, len) >= 0) {
      this.#arenaLen = start;
      return false;
    }
    const n = this.#size;
    if (2 * n === this.#keys.length) this.#growEntries();
    let f = (dkimEnabled ? DKIM : 0) | (alignmentRequired ? ALIGN : 0);
    if (tenantBytes !== undefined) {
      f |= TENANT;
      const t = this.#tenant;
      for (let i = 0; i < 16; i++) t[n * 16 + i] = tenantBytes[tenantAt + i]!;
    }
    this.#keys[2 * n] = start;
    this.#keys[2 * n + 1] = len | (f << 8);
    this.#size = n + 1;
    if (this.#size * 2 > this.#slotMask + 1) this.#rehash((this.#slotMask + 1) * 2);
    this.#place(h, n);
    return true;
  }

  /** Adds a domain given as a string (ASCII); false when it is already there. */
  add(domain: string, policy: Policy): boolean {
    this.begin();
    for (let i = 0; i < domain.length; i++) this.addByte(domain.charCodeAt(i) & 0xff);
    let tenant: Uint8Array | undefined;
    if (policy.tenantId !== "") {
      tenant = new Uint8Array(16);
      const hex = policy.tenantId.replaceAll("-", "");
      for (let i = 0; i < 16; i++) tenant[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    }
    return this.commit(policy.dkimEnabled, policy.dkimAlignmentRequired, tenant);
  }

  #growEntries(): void {
    const cap = this.#keys.length; // entries after growing: twice as many (two ints each)
    const grow = <T extends Int32Array | Uint8Array>(a: T, n: number): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a);
      return b;
    };
    this.#keys = grow(this.#keys, cap * 2);
    this.#tenant = grow(this.#tenant, cap * 16);
  }

  #place(h: number, n: number): void {
    const mask = this.#slotMask;
    let i = h & mask;
    while (this.#slots[2 * i] !== 0) i = (i + 1) & mask;
    this.#slots[2 * i] = n + 1;
    this.#slots[2 * i + 1] = h;
  }

  #rehash(slots: number): void {
    const old = this.#slots;
    this.#slots = new Int32Array(slots * 2);
    this.#slotMask = slots - 1;
    for (let i = 0; i < old.length; i += 2) if (old[i] !== 0) this.#place(old[i + 1]!, old[i]! - 1);
  }

  /** Index of the entry with these key bytes in the arena, or -1. */
  #find(h: number, start: number, len: number): number {
    const mask = this.#slotMask, slots = this.#slots, keys = this.#keys, a = this.#arena;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const e = slots[2 * i]! - 1;
      if (e < 0) return -1;
      if (slots[2 * i + 1] !== h || (keys[2 * e + 1]! & 0xff) !== len) continue;
      const o = keys[2 * e]!;
      let j = 0;
      while (j < len && a[o + j] === a[start + j]) j++;
      if (j === len) return e;
    }
  }

  /**
   * Index of the entry for a domain string, or -1: the probe of `#find`
   * over char codes. One loop with a key callback for both would cost every
   * lookup a call per byte.
   */
  #index(domain: string): number {
    const len = domain.length;
    if (len === 0 || len > 255) return -1;
    let h = FNV;
    for (let i = 0; i < len; i++) {
      const c = domain.charCodeAt(i);
      if (c > 0x7f) return -1;
      h = step(h, c);
    }
    const mask = this.#slotMask, slots = this.#slots, keys = this.#keys, a = this.#arena;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const e = slots[2 * i]! - 1;
      if (e < 0) return -1;
      if (slots[2 * i + 1] !== h || (keys[2 * e + 1]! & 0xff) !== len) continue;
      const o = keys[2 * e]!;
      let j = 0;
      while (j < len && a[o + j] === domain.charCodeAt(j)) j++;
      if (j === len) return e;
    }
  }

  #policy(e: number): Policy {
    const f = this.#keys[2 * e + 1]! >> 8;
    let tenantId = "";
    if ((f & TENANT) !== 0) {
      const t = this.#tenant;
      for (let i = 0; i < 16; i++) {
        const b = t[e * 16 + i]!;
        tenantId += HEX[b >> 4]! + HEX[b & 15]!;
        if (i === 3 || i === 5 || i === 7 || i === 9) tenantId += "-";
      }
    }
    return { tenantId, dkimEnabled: (f & DKIM) !== 0, dkimAlignmentRequired: (f & ALIGN) !== 0 };
  }

  #key(e: number): string {
    const o = this.#keys[2 * e]!;
    return String.fromCharCode(...this.#arena.subarray(o, o + (this.#keys[2 * e + 1]! & 0xff)));
  }

  get(domain: string): Policy | undefined {
    const e = this.#index(domain);
    return e < 0 ? undefined : this.#policy(e);
  }

  has(domain: string): boolean {
    return this.#index(domain) >= 0;
  }

  /** Domains whose policy has `dkim_enabled: false`, without building each policy. */
  dkimOffDomains(): string[] {
    const out: string[] = [];
    for (let e = 0; e < this.#size; e++) if (((this.#keys[2 * e + 1]! >> 8) & DKIM) === 0) out.push(this.#key(e));
    return out;
  }

  *entries(): MapIterator<[string, Policy]> {
    for (let e = 0; e < this.#size; e++) yield [this.#key(e), this.#policy(e)];
  }

  *keys(): MapIterator<string> {
    for (let e = 0; e < this.#size; e++) yield this.#key(e);
  }

  *values(): MapIterator<Policy> {
    for (let e = 0; e < this.#size; e++) yield this.#policy(e);
  }

  [Symbol.iterator](): MapIterator<[string, Policy]> {
    return this.entries();
  }

  forEach(cb: (value: Policy, key: string, map: ReadonlyMap<string, Policy>) => void, thisArg?: unknown): void {
    for (let e = 0; e < this.#size; e++) cb.call(thisArg, this.#policy(e), this.#key(e), this);
  }
}
