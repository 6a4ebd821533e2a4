/**
 * The Deno adapter of the runtime seam (runtime-api.ts): Deno.listen and
 * Deno.connect for TCP and unix sockets; node:net for sockets inherited from
 * systemd, because Deno.listen takes no file descriptor.
 *
 * Deno's socket writes are asynchronous. A socket here takes bytes while
 * less than {@link HIGH_WATER} of them wait for the kernel and refuses more
 * (a partial write) until they are out, then reports `writable`: the same
 * back-pressure as Bun's partial writes.
 * @module
 */
import type { Access, ConnectionHandler, MilterSocket, NativeListener, Runtime, SocketEvents } from "./runtime-api.ts";

/** Bytes waiting for the kernel beyond which a socket takes no more. */
const HIGH_WATER = 64 * 1024;
/** First read buffer of a connection; it grows while reads fill it (milter body chunks are up to 64 KiB). */
const READ_MIN = 4 * 1024;
const READ_MAX = 64 * 1024;

/** Errors that mean the socket is gone, not a fault worth reporting. */
const closedErrors = (e: unknown) => e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted;

interface Gate {
  readonly promise: Promise<void>;
  open(): void;
}

function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

class DenoSocket implements MilterSocket {
  readonly remoteAddress: string | undefined;
  events: SocketEvents | undefined;
  /** Taken bytes not yet written, oldest first. */
  #queue: Uint8Array[] = [];
  #queued = 0;
  #writing = false;
  /** A write was refused: report `writable` once the queue is out. */
  #refused = false;
  #ending = false;
  #closed = false;
  /** Set while paused: reading waits for it. */
  #paused: Gate | undefined;

  constructor(readonly conn: Deno.Conn, tcp: boolean) {
    this.remoteAddress = tcp ? (conn.remoteAddr as Deno.NetAddr).hostname : undefined;
  }

  write(data: Uint8Array): number {
    if (this.#closed || this.#ending) return -1;
    if (this.#queued >= HIGH_WATER) {
      this.#refused = true;
      return 0;
    }
    this.#queue.push(data);
    this.#queued += data.length;
    if (!this.#writing) void this.#pump();
    return data.length;
  }

  async #pump(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const chunk = this.#queue.length === 1 ? this.#queue[0]! : concat(this.#queue, this.#queued);
        this.#queue = [];
        this.#queued = 0;
        for (let done = 0; done < chunk.length;) done += await this.conn.write(chunk.subarray(done));
      }
    } catch (e) {
      this.#fail(e);
      return;
    } finally {
      this.#writing = false;
    }
    if (this.#closed) return;
    if (this.#ending) this.#shutdown();
    else if (this.#refused) {
      this.#refused = false;
      this.events?.writable();
    }
  }

  end(): void {
    if (this.#closed || this.#ending) return;
    this.#ending = true;
    this.resume(); // read on, to see the peer's FIN
    if (!this.#writing) this.#shutdown();
  }

  /** FIN after the last byte; the socket closes when the peer closes its side. */
  #shutdown(): void {
    this.conn.closeWrite().catch((e) => this.#fail(e));
  }

  terminate(): void {
    this.#close();
  }

  pause(): void {
    if (!this.#ending) this.#paused ??= gate();
  }

  resume(): void {
    this.#paused?.open();
    this.#paused = undefined;
  }

  /** Reads until the peer closes; each chunk is a fresh copy the receiver may keep. */
  async readLoop(): Promise<void> {
    let buf = new Uint8Array(READ_MIN);
    try {
      while (!this.#closed) {
        if (this.#paused !== undefined) await this.#paused.promise;
        const n = await this.conn.read(buf);
        if (n === null) break;
        if (!this.#ending) this.events?.data(buf.slice(0, n));
        if (n === buf.length && buf.length < READ_MAX) buf = new Uint8Array(buf.length * 2);
      }
    } catch (e) {
      if (!this.#closed) this.#fail(e);
    }
    this.#close();
  }

  #fail(e: unknown): void {
    if (this.#closed) return;
    if (!closedErrors(e)) this.events?.error(e instanceof Error ? e : new Error(String(e)));
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.resume();
    try {
      this.conn.close();
    } catch { /* closed already */ }
    const events = this.events;
    this.events = undefined;
    events?.close();
  }
}

function concat(chunks: readonly Uint8Array[], length: number): Uint8Array {
  const all = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return all;
}

function serve(listener: Deno.Listener, name: string, tcp: boolean, onConnection: ConnectionHandler): NativeListener {
  let open = true;
  void (async () => {
    while (open) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (!open || closedErrors(e)) return;
        // Out of file descriptors and the like: try again shortly rather than spin.
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (tcp) (conn as Deno.TcpConn).setNoDelay(true);
      const socket = new DenoSocket(conn, tcp);
      socket.events = onConnection(socket, name, tcp);
      void socket.readLoop();
    }
  })();
  return {
    close() {
      open = false;
      listener.close();
    },
  };
}

/** A node:net socket (an inherited listener's connection) as a milter socket. */
function nodeSocket(s: import("node:net").Socket): MilterSocket {
  return {
    remoteAddress: s.remoteAddress,
    // node:net takes everything; like Bun's partial write, refuse more while its buffer is full.
    write: (data) => s.destroyed ? -1 : s.writableNeedDrain ? 0 : (s.write(data), data.length),
    end: () => void s.end(),
    terminate: () => void s.destroy(),
    pause: () => void s.pause(),
    resume: () => void s.resume(),
  };
}

async function listenFd(fd: number, name: string, onConnection: ConnectionHandler): Promise<NativeListener> {
  const { createServer } = await import("node:net");
  const server = createServer((s) => {
    const tcp = s.remoteAddress !== undefined;
    if (tcp) s.setNoDelay(true);
    const events = onConnection(nodeSocket(s), name, tcp);
    // Without a listener, an error event would end the process.
    s.on("error", (e) => events?.error(e));
    if (events === undefined) return;
    s.on("data", (chunk: Uint8Array) => events.data(chunk));
    s.on("drain", () => events.writable());
    s.on("close", () => events.close());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ fd }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return { close: () => void server.close() };
}

function refused(needs: readonly Access[]): string[] {
  const out: string[] = [];
  for (const n of needs) {
    const descriptor: Deno.PermissionDescriptor = n.kind === "env"
      ? { name: "env", variable: n.target }
      : n.kind === "net"
      ? { name: "net", host: n.target }
      : { name: n.kind, path: n.target };
    if (Deno.permissions.querySync(descriptor).state !== "granted") out.push(`--allow-${n.kind}=${n.target} (${n.why})`);
  }
  return out;
}

export const denoRuntime: Runtime = {
  get name() {
    return `Deno ${Deno.version.deno}`;
  },

  listenTcp(hostname, port, ipv6Only, name, onConnection) {
    // Deno.listen (and Deno's node:net) cannot set IPV6_V6ONLY: on the
    // wildcard address it would take IPv4 connections too.
    if (ipv6Only && /^[0:]+$/.test(hostname)) {
      throw new Error("Deno cannot listen on IPv6 only (no IPV6_V6ONLY); name an address, or use inet:PORT@0.0.0.0 or the Bun executable");
    }
    return serve(Deno.listen({ transport: "tcp", hostname, port }), name, true, onConnection);
  },

  listenUnix(path, name, onConnection) {
    return serve(Deno.listen({ transport: "unix", path }), name, false, onConnection);
  },

  listenFd,

  async unixInUse(path) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return true;
    } catch (e) {
      // Not allowed to look is not "unused": the caller must not remove the file.
      if (e instanceof Deno.errors.NotCapable) throw e;
      return false;
    }
  },

  collectGarbage() {
    // Only with --v8-flags=--expose-gc; otherwise V8 collects when it sees fit.
    (globalThis as { gc?: () => void }).gc?.();
  },

  isRefusal: (e) => e instanceof Deno.errors.NotCapable,
  refused,
};
