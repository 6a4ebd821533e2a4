/**
 * Client address allow-lists: IPv4 and IPv6 addresses and CIDR ranges. IPv4
 * is held in its IPv4-mapped IPv6 form, so a client that the MTA reports as
 * `::ffff:192.0.2.1` matches an entry `192.0.2.0/24`.
 *
 * Pure: no I/O.
 * @module
 */

/** 16 bytes of an IPv6 address (IPv4 as ::ffff:a.b.c.d), or undefined. */
export function parseIp(text: string): Uint8Array | undefined {
  let s = text.trim();
  if (s.toLowerCase().startsWith("ipv6:")) s = s.slice(5); // Sendmail's spelling
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  const v4 = parseIpv4(s);
  if (v4 !== undefined) {
    const out = new Uint8Array(16);
    out[10] = 0xff;
    out[11] = 0xff;
    out.set(v4, 12);
    return out;
  }
  return parseIpv6(s);
}

function parseIpv4(s: string): Uint8Array | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^(?:0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return undefined;
    out[i] = Number(p);
  }
  return out;
}

function parseIpv6(s: string): Uint8Array | undefined {
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const groups = (h: string): number[] | undefined => {
    if (h === "") return [];
    const out: number[] = [];
    const parts = h.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseIpv4(p);
        if (v4 === undefined) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-f]{1,4}$/i.test(p)) {
        out.push(parseInt(p, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (head === undefined || tail === undefined) return undefined;
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return undefined;
  const all = [...head, ...new Array<number>(fill).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

export interface IpRange {
  readonly base: Uint8Array;
  /** Prefix length in the 128-bit space. */
  readonly bits: number;
  /** As written in the configuration, for logs. */
  readonly text: string;
  /** Written as IPv4 (its prefix counts within the mapped space). */
  readonly v4: boolean;
}

/** `addr` or `addr/prefix`; an IPv4 prefix counts within the mapped space. */
export function parseRange(text: string): IpRange | undefined {
  const slash = text.indexOf("/");
  const addr = slash < 0 ? text : text.slice(0, slash);
  const base = parseIp(addr);
  if (base === undefined) return undefined;
  const isV4 = parseIpv4(addr.trim()) !== undefined;
  const max = isV4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) return undefined;
    prefix = Number(p);
  }
  return { base, bits: isV4 ? 96 + prefix : prefix, text, v4: isV4 };
}

export function inRange(ip: Uint8Array, range: IpRange): boolean {
  const full = range.bits >> 3;
  for (let i = 0; i < full; i++) if (ip[i] !== range.base[i]) return false;
  const rest = range.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (ip[full]! & mask) === (range.base[full]! & mask);
}

/** Whether a client address (as the MTA wrote it) is on the list. */
export function allowListed(address: string | undefined, list: readonly IpRange[]): IpRange | undefined {
  if (address === undefined || list.length === 0) return undefined;
  const ip = parseIp(address);
  return ip === undefined ? undefined : list.find((r) => inRange(ip, r));
}

/** An address in its usual text form: dotted IPv4, or IPv6 with the longest zero run as `::` (RFC 5952). */
function formatIp(ip: Uint8Array, v4: boolean): string {
  if (v4) return Array.from(ip.subarray(12)).join(".");
  const groups = Array.from({ length: 8 }, (_, i) => (ip[2 * i]! << 8) | ip[2 * i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  return best < 0 ? hex(groups) : `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/**
 * For a range written with host bits set (`10.1.2.3/8`), the range it
 * stands for (`10.0.0.0/8`); undefined when it is written canonically.
 */
export function hostBitsSet(r: IpRange): string | undefined {
  const masked = r.base.slice();
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, r.bits - 8 * i));
    masked[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  if (masked.every((b, i) => b === r.base[i])) return undefined;
  return `${formatIp(masked, r.v4)}/${r.v4 ? r.bits - 96 : r.bits}`;
}
