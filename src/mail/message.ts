/**
 * The header block of a saved message (.eml), as an MTA passes it to a
 * milter: name and value per field, folded lines joined, in order.
 *
 * Pure: no I/O.
 * @module
 */

export type HeaderField = readonly [name: string, value: string];

/** Header fields up to the first empty line; a line that is no field ends the block. */
export function parseHeaderBlock(message: string): HeaderField[] {
  const lines = message.split(/\r?\n/);
  const out: Array<[string, string]> = [];
  for (const line of lines) {
    if (line === "") break;
    if ((line[0] === " " || line[0] === "\t") && out.length > 0) {
      out[out.length - 1]![1] += "\n" + line;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0 || /[\s]/.test(line.slice(0, colon))) break;
    out.push([line.slice(0, colon), line.slice(colon + 1).replace(/^[ \t]/, "")]);
  }
  return out;
}
