/**
 * The contract of the runtime seam: what the server needs of the runtime it
 * runs on. One thin adapter per runtime implements it (runtime-bun.ts,
 * runtime-deno.ts); runtime.ts picks one at start. Types only, so each
 * adapter type-checks under its own runtime's checker.
 * @module
 */

/** What a milter connection needs of its socket (a subset of Bun's Socket). */
export interface MilterSocket {
  /**
   * Takes what it can now: the byte count, -1 when closed. The socket owns
   * the bytes it took (the caller does not change them afterwards).
   */
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
  /** Bytes from the peer; the chunk is the receiver's to keep. */
  data(chunk: Uint8Array): void;
  /** The socket takes bytes again after a partial write. */
  writable(): void;
  close(): void;
  error(e: Error): void;
}

/**
 * Called for each accepted socket; `tcp` is false for unix sockets. Returns
 * the receiver of the socket's events, or undefined after closing it.
 */
export type ConnectionHandler = (socket: MilterSocket, listener: string, tcp: boolean) => SocketEvents | undefined;

/** A listening socket as an adapter returns it. */
export interface NativeListener {
  /** Stops accepting; open connections stay. */
  close(): void;
}

/** Something the milter will touch, for runtimes that grant access per resource. */
export interface Access {
  readonly kind: "read" | "write" | "net" | "env";
  /** A path, `host:port`, `unix:/path` or a variable name. */
  readonly target: string;
  /** What it is for, for the message when it is not granted. */
  readonly why: string;
}

export interface Runtime {
  /** "Bun 1.4.5", for messages. */
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
  /** Whether `e` is the runtime refusing access it was not granted (its message names the flag). */
  isRefusal(e: unknown): boolean;
  /** Of `needs`, what the runtime would refuse, each as the flag that grants it and why. */
  refused(needs: readonly Access[]): string[];
}
