/** Reading the Prometheus metrics endpoint of a milter under test. */
import assert from "node:assert/strict";

/** GET (or another method) on the metrics endpoint. */
export async function httpGet(port: number, path = "/metrics", method = "GET"): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return { status: r.status, body: await r.text() };
}

/** Samples of a Prometheus text exposition: series (name{labels}) -> value. */
export function samples(body: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^(\S+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(m, `malformed sample line ${JSON.stringify(line)}`);
    assert.ok(!out.has(m[1]!), `series ${m[1]} twice`);
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** The samples of one metric name. */
export function series(all: Map<string, number>, name: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of all) if (k === name || k.startsWith(`${name}{`)) out[k] = v;
  return out;
}

export async function scrape(port: number): Promise<Map<string, number>> {
  const r = await httpGet(port);
  assert.equal(r.status, 200);
  return samples(r.body);
}
