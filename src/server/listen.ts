/**
 * Listening sockets: TCP, unix (a stale socket file is replaced, the mode
 * set) and sockets inherited from systemd (LISTEN_FDS), which win.
 *
 * Bun.listen rather than node:net: ~30% less CPU per request and a lighter
 * socket object per connection (DESIGN.md section 6). Its `write` may take
 * only part of the bytes; the connection queues the rest until `drain`.
 * @module
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { formatSocketSpec, type SocketSpec } from "./socket-spec.ts";

export interface Listener {
  /** What it listens on, for logs. */
  readonly name: string;
  /** A socket file to remove at shutdown. */
  readonly path?: string;
  /** Stops accepting; open connections stay. */
  close(): void;
}

/** What a milter connection needs of its socket (a subset of Bun's Socket). */
export interface MilterSocket {
  /** Writes what the kernel takes now: the byte count, -1 when closed. */
  write(data: Uint8Array): number;
  /** Closes gracefully (FIN) once written bytes are sent. */
  end(): void;
  /** Closes at once (RST). */
  terminate(): void;
  /** Stops / restarts reading from the peer. */
  pause(): void;
  resume(): void;
  /** The peer's IP address; undefined on a unix socket. */
  readonly remoteAddress: string | undefined;
}

/** Socket events, delivered to what the connection handler returned. */
export interface SocketEvents {
  data(chunk: Uint8Array): void;
  /** The kernel takes bytes again after a partial write. */
  writable(): void;
  close(): void;
  error(e: Error): void;
}

/**
 * Called for each accepted socket; `tcp` is false for unix sockets. Returns
 * the receiver of the socket's events, or undefined after closing it.
 */
export type ConnectionHandler = (socket: MilterSocket, listener: string, tcp: boolean) => SocketEvents | undefined;

type Handler = import("bun").SocketHandler<SocketEvents | undefined>;

function handler(name: string, onConnection: ConnectionHandler): Handler {
  return {
    binaryType: "uint8array",
    open(s) {
      s.data = onConnection(s as unknown as MilterSocket, name, s.remoteAddress !== undefined && s.remoteAddress !== "");
    },
    // binaryType "uint8array": plain views, no Buffer objects.
    data(s, chunk: Uint8Array) {
      s.data?.data(chunk);
    },
    drain(s) {
      s.data?.writable();
    },
    close(s) {
      const events = s.data;
      s.data = undefined;
      events?.close();
    },
    error(s, e) {
      s.data?.error(e);
    },
  };
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

/** Resolves true when something accepts connections on the unix socket. */
async function inUse(path: string): Promise<boolean> {
  try {
    const s = await Bun.connect({ unix: path, socket: { data() {}, connectError() {} } });
    s.end();
    return true;
  } catch {
    return false;
  }
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
  const socket = handler(name, onConnection);
  if (spec.kind === "unix") {
    await removeStaleSocket(spec.path);
    let server;
    try {
      server = Bun.listen<SocketEvents | undefined>({ unix: spec.path, socket });
    } catch (e) {
      throw listenError(e, spec.path);
    }
    chmodSync(spec.path, socketMode);
    return { name, path: spec.path, close: () => server.stop(false) };
  }
  let server;
  try {
    // Accepted TCP sockets get TCP_NODELAY from Bun: each reply batch goes out at once.
    const options = { hostname: spec.host, port: spec.port, ipv6Only: spec.family === 6, socket };
    server = Bun.listen<SocketEvents | undefined>(options);
  } catch (e) {
    throw listenError(e, spec.host.includes(":") ? `[${spec.host}]:${spec.port}` : `${spec.host}:${spec.port}`);
  }
  return { name, close: () => server.stop(false) };
}

export function listenOnFd(fd: number, name: string, onConnection: ConnectionHandler): Promise<Listener> {
  const label = `systemd:${name}`;
  let server;
  try {
    // `fd` is not in bun's types, but Bun.listen accepts an inherited listening socket.
    const options = { fd, socket: handler(label, onConnection) } as unknown as import("bun").TCPSocketListenOptions<SocketEvents | undefined>;
    server = Bun.listen<SocketEvents | undefined>(options);
  } catch (e) {
    return Promise.reject(listenError(e, `fd ${fd}`));
  }
  return Promise.resolve({ name: label, close: () => server.stop(false) });
}
