/**
 * The seam between the server and the runtime it runs on. What Bun and Deno
 * do differently (native sockets, inherited sockets, the garbage collector)
 * sits in one thin adapter per runtime, runtime-bun.ts and runtime-deno.ts;
 * the runtime is detected once, here, and nothing outside src/server/ knows
 * which one runs.
 * @module
 */
import type { ConnectionHandler } from "./listen.ts";
import { bunRuntime } from "./runtime-bun.ts";

/** A listening socket as an adapter returns it. */
export interface NativeListener {
  /** Stops accepting; open connections stay. */
  close(): void;
}

export interface Runtime {
  /** "bun 1.4.5", for logs. */
  readonly name: string;
  /**
   * Listens on TCP. Accepted sockets send each write at once (TCP_NODELAY):
   * no reply waits for the MTA's delayed ACK. Throws what the runtime threw.
   */
  listenTcp(host: string, port: number, ipv6Only: boolean, name: string, onConnection: ConnectionHandler): NativeListener;
  /** Listens on a unix socket at `path` (nothing there). Throws what the runtime threw. */
  listenUnix(path: string, name: string, onConnection: ConnectionHandler): NativeListener;
  /** Accepts on an inherited listening socket (systemd socket activation). */
  listenFd(fd: number, name: string, onConnection: ConnectionHandler): Promise<NativeListener>;
  /** Resolves true when something accepts connections on the unix socket. */
  unixInUse(path: string): Promise<boolean>;
  /** Collects garbage now, where the runtime lets a program ask for it. */
  collectGarbage(): void;
}

function detect(): Runtime {
  if ("Bun" in globalThis) return bunRuntime;
  throw new Error("exota-milter runs under Bun");
}

export const runtime: Runtime = detect();
