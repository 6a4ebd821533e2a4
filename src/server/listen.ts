/**
 * Listening sockets: TCP, unix (a stale socket file is replaced, the mode
 * set) and sockets inherited from systemd (LISTEN_FDS), which win. The
 * runtime's own sockets do the work (runtime.ts); this module does not know
 * which runtime runs.
 * @module
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import type { ConnectionHandler } from "./runtime-api.ts";
import { runtime } from "./runtime.ts";
import { formatSocketSpec, hostPort, type SocketSpec } from "./socket-spec.ts";

export interface Listener {
  /** What it listens on, for logs. */
  readonly name: string;
  /** Stops accepting (and removes its unix socket file); open connections stay. */
  close(): void;
}

/** "Failed to listen at HOST EADDRINUSE" -> with the code spelt out. */
function listenError(e: unknown, where: string): Error {
  const code = (e as { code?: string }).code;
  const text = code === "EADDRINUSE" ? "address already in use" : code === "EACCES" ? "permission denied" : (e as Error).message;
  return new Error(`${where}: ${code !== undefined && !text.includes(code) ? `${code}: ` : ""}${text}`);
}

/** File descriptors passed by systemd socket activation, with their names. */
export function inheritedFds(env: Readonly<Record<string, string | undefined>>, pid: number): Array<{ fd: number; name: string }> {
  const count = Number(env.LISTEN_FDS ?? "0");
  if (!(count > 0) || Number(env.LISTEN_PID) !== pid) return [];
  const names = (env.LISTEN_FDNAMES ?? "").split(":");
  return Array.from({ length: count }, (_, i) => ({ fd: 3 + i, name: names[i] || `fd${3 + i}` }));
}

async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; not replacing it`);
  if (await runtime.unixInUse(path)) throw new Error(`${path} is in use by another process`);
  unlinkSync(path);
}

export async function listenOn(spec: SocketSpec, socketMode: number, onConnection: ConnectionHandler): Promise<Listener> {
  const name = formatSocketSpec(spec);
  if (spec.kind === "unix") {
    await removeStaleSocket(spec.path);
    let server;
    try {
      server = runtime.listenUnix(spec.path, name, onConnection);
    } catch (e) {
      throw listenError(e, spec.path);
    }
    chmodSync(spec.path, socketMode);
    const close = () => {
      server.close();
      try {
        // Some runtimes remove the socket file on close, others leave it.
        unlinkSync(spec.path);
      } catch { /* gone already */ }
    };
    return { name, close };
  }
  let server;
  try {
    server = runtime.listenTcp(spec.host, spec.port, spec.family === 6, name, onConnection);
  } catch (e) {
    throw listenError(e, hostPort(spec.host, spec.port));
  }
  return { name, close: () => server.close() };
}

export async function listenOnFd(fd: number, name: string, onConnection: ConnectionHandler): Promise<Listener> {
  const label = `systemd:${name}`;
  let server;
  try {
    server = await runtime.listenFd(fd, label, onConnection);
  } catch (e) {
    throw listenError(e, `fd ${fd}`);
  }
  return { name: label, close: () => server.close() };
}
