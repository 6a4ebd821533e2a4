/**
 * Listening sockets: TCP, unix (a stale socket file is replaced, the mode
 * set) and sockets inherited from systemd (LISTEN_FDS), which win.
 * @module
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";
import { formatSocketSpec, type SocketSpec } from "./socket-spec.ts";

export interface Listener {
  readonly server: net.Server;
  /** What it listens on, for logs. */
  readonly name: string;
  /** A socket file to remove at shutdown. */
  readonly path?: string;
}

export type ConnectionHandler = (socket: net.Socket, listener: string) => void;

/** File descriptors passed by systemd socket activation, with their names. */
export function inheritedFds(env: Readonly<Record<string, string | undefined>>, pid: number): Array<{ fd: number; name: string }> {
  const count = Number(env.LISTEN_FDS ?? "0");
  if (!(count > 0) || Number(env.LISTEN_PID) !== pid) return [];
  const names = (env.LISTEN_FDNAMES ?? "").split(":");
  return Array.from({ length: count }, (_, i) => ({ fd: 3 + i, name: names[i] || `fd${3 + i}` }));
}

function listening(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(options, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** Resolves true when something accepts connections on the unix socket. */
function inUse(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; not replacing it`);
  if (await inUse(path)) throw new Error(`${path} is in use by another process`);
  unlinkSync(path);
}

export async function listenOn(spec: SocketSpec, socketMode: number, onConnection: ConnectionHandler): Promise<Listener> {
  const name = formatSocketSpec(spec);
  const server = net.createServer({ noDelay: true }, (s) => onConnection(s, name));
  if (spec.kind === "unix") {
    await removeStaleSocket(spec.path);
    await listening(server, { path: spec.path });
    chmodSync(spec.path, socketMode);
    return { server, name, path: spec.path };
  }
  await listening(server, { host: spec.host, port: spec.port, ipv6Only: spec.family === 6 });
  return { server, name };
}

export async function listenOnFd(fd: number, name: string, onConnection: ConnectionHandler): Promise<Listener> {
  const label = `systemd:${name}`;
  const server = net.createServer({ noDelay: true }, (s) => onConnection(s, label));
  await listening(server, { fd } as net.ListenOptions);
  return { server, name: label };
}
