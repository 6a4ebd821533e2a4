/**
 * The runtime's floor: a Bun program that negotiates exactly like
 * exota-milter (bench/reference/lean-filter.c's wishes and macros) and does
 * nothing else: it answers CONTINUE at end of message (and to DATA on TCP)
 * and closes at QUIT. What any filter on Bun costs before it decides
 * anything; a row of `npm run bench:chain`.
 *
 *   bun build --compile bench/reference/lean-filter.ts --outfile lean-filter-bun
 *   ./lean-filter-bun -p unix:/path/to/socket | -p inet:PORT@127.0.0.1
 * @module
 */
const at = process.argv.indexOf("-p");
const spec = at > 0 ? process.argv[at + 1] ?? "" : "";
if (!/^(unix|inet):/.test(spec)) {
  console.error("usage: lean-filter-bun -p unix:PATH | -p inet:PORT@HOST");
  process.exit(2);
}
const tcp = spec.startsWith("inet:");
// NORCPT NOBODY NOEOH NOUNKNOWN NODATA, NR_CONN HELO MAIL RCPT DATA HDR EOH BODY UNKN (lean-filter.c)
const WISHES = 0x8 | 0x10 | 0x40 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x80 | 0x40000 | 0x80000 | 0x20000;
const wishes = tcp ? WISHES & ~(0x200 | 0x10000) : WISHES;
const enc = new TextEncoder();
function negotiation(offeredSteps: number): Uint8Array {
  const macros: Array<[number, string]> = [[1, "{cert_subject} {cert_issuer} {verify}"], [2, "i"], [5, "i"]];
  const parts = macros.map(([st, m]) => [st, enc.encode(m + "\0")] as const);
  const len = 1 + 12 + parts.reduce((n, [, b]) => n + 4 + b.length, 0);
  const out = new Uint8Array(4 + len);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, len);
  out[4] = 0x4f;
  dv.setUint32(5, 6);
  dv.setUint32(9, 0x01 | 0x10 | 0x100);
  dv.setUint32(13, wishes & offeredSteps);
  let o = 17;
  for (const [st, b] of parts) {
    dv.setUint32(o, st);
    out.set(b, o + 4);
    o += 4 + b.length;
  }
  return out;
}
const CONT = new Uint8Array([0, 0, 0, 1, 0x63]);
type St = { buf: Uint8Array | null };
const socket: import("bun").SocketHandler<St> = {
  binaryType: "uint8array",
  open(s) {
    s.data = { buf: null };
  },
  data(s, chunk: Uint8Array) {
    const held = s.data.buf;
    let b = chunk;
    if (held !== null) {
      b = new Uint8Array(held.length + chunk.length);
      b.set(held);
      b.set(chunk, held.length);
    }
    let o = 0;
    while (b.length - o >= 4) {
      const len = ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
      if (b.length - o < 4 + len) break;
      const cmd = b[o + 4];
      if (cmd === 0x4f) s.write(negotiation(new DataView(b.buffer, b.byteOffset + o + 13, 4).getUint32(0)));
      else if (cmd === 0x45 || (tcp && cmd === 0x54)) s.write(CONT);
      else if (cmd === 0x51) {
        s.end();
        return;
      }
      o += 4 + len;
    }
    s.data.buf = o < b.length ? b.slice(o) : null;
  },
};
if (tcp) Bun.listen<St>({ hostname: spec.split("@")[1]!, port: Number(spec.slice(5).split("@")[0]), socket });
else Bun.listen<St>({ unix: spec.slice(5), socket });
