/**
 * The runtime's floor: a Bun program that negotiates exactly as
 * exota-milter does (its own filterNeeds and negotiate, so the two cannot
 * drift apart) and does nothing else: it answers CONTINUE at end of message
 * (and to DATA on TCP, which exota-milter's TCP wishes leave unskipped) and
 * closes at QUIT. What any filter on Bun costs before it decides anything;
 * a row of `npm run bench:chain`.
 *
 *   bun build --compile bench/reference/lean-filter.ts --outfile lean-filter-bun
 *   ./lean-filter-bun -p unix:/path/to/socket | -p inet:PORT@127.0.0.1
 * @module
 */
import { filterNeeds } from "../../src/filter.ts";
import { decodeCommand, encodeReply, FrameReader } from "../../src/milter/codec.ts";
import { negotiate } from "../../src/milter/negotiate.ts";
import { Cmd } from "../../src/milter/protocol.ts";

const at = process.argv.indexOf("-p");
const spec = at > 0 ? process.argv[at + 1] ?? "" : "";
if (!/^(unix|inet):/.test(spec)) {
  console.error("usage: lean-filter-bun -p unix:PATH | -p inet:PORT@HOST");
  process.exit(2);
}
const tcp = spec.startsWith("inet:");
const needs = filterNeeds({ addHeader: true }, tcp);
const CONTINUE = encodeReply({ type: "continue" });

const socket: import("bun").SocketHandler<FrameReader> = {
  binaryType: "uint8array",
  open(s) {
    s.data = new FrameReader();
  },
  data(s, chunk: Uint8Array) {
    s.data.push(chunk);
    for (let f = s.data.next(); f !== undefined; f = s.data.next()) {
      if (!f.ok) return void s.end();
      const { code, payload } = f.value;
      if (code === Cmd.OPTNEG) {
        const cmd = decodeCommand(code, payload);
        const agreed = cmd.ok && cmd.value.type === "optneg" ? negotiate(cmd.value, needs) : undefined;
        if (agreed === undefined || !agreed.ok) return void s.end();
        s.write(encodeReply(agreed.agreement.reply));
      } else if (code === Cmd.BODYEOB || (code === Cmd.DATA && tcp)) s.write(CONTINUE);
      else if (code === Cmd.QUIT) return void s.end();
    }
  },
};
if (tcp) Bun.listen<FrameReader>({ hostname: spec.split("@")[1]!, port: Number(spec.slice(5).split("@")[0]), socket });
else Bun.listen<FrameReader>({ unix: spec.slice(5), socket });
