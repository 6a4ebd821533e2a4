/**
 * Socket specifications in libmilter's spelling: `inet:PORT@HOST`,
 * `inet6:PORT@HOST`, `unix:/path` and `local:/path`.
 * @module
 */

export type SocketSpec =
  | { readonly kind: "tcp"; readonly family: 4 | 6; readonly port: number; readonly host: string }
  | { readonly kind: "unix"; readonly path: string };

export function parseSocketSpec(spec: string): { ok: true; value: SocketSpec } | { ok: false; error: string } {
  const colon = spec.indexOf(":");
  const scheme = colon < 0 ? "" : spec.slice(0, colon).toLowerCase();
  const rest = spec.slice(colon + 1);
  if (scheme === "unix" || scheme === "local") {
    if (!rest.startsWith("/")) return { ok: false, error: "a unix socket needs an absolute path" };
    return { ok: true, value: { kind: "unix", path: rest } };
  }
  if (scheme === "inet" || scheme === "inet6") {
    const at = rest.indexOf("@");
    const portText = at < 0 ? rest : rest.slice(0, at);
    const family = scheme === "inet" ? 4 : 6;
    const host = at < 0 ? (family === 4 ? "0.0.0.0" : "::") : rest.slice(at + 1).replace(/^\[(.*)\]$/, "$1");
    const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) return { ok: false, error: `port "${portText}" is not a number from 1 to 65535` };
    if (host === "") return { ok: false, error: "empty host after @" };
    return { ok: true, value: { kind: "tcp", family, port, host } };
  }
  return { ok: false, error: "expected inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path" };
}

/** `host:port`, an IPv6 host in brackets (`[::1]:25`), as messages and permission flags write it. */
export const hostPort = (host: string, port: number | string): string => `${host.includes(":") ? `[${host}]` : host}:${port}`;

export function formatSocketSpec(s: SocketSpec): string {
  return s.kind === "unix" ? `unix:${s.path}` : `inet${s.family === 6 ? "6" : ""}:${s.port}@${s.host}`;
}
