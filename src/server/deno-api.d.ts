/**
 * For tsc only (Bun's types know no Deno): the part of Deno's API that
 * runtime-deno.ts uses, as lib.deno.d.ts declares it. `deno check` checks
 * that adapter against Deno's own declarations instead.
 */
declare namespace Deno {
  export const version: { readonly deno: string };
  export namespace errors {
    export class BadResource extends Error {}
    export class Interrupted extends Error {}
    export class NotCapable extends Error {}
  }
  export interface NetAddr {
    transport: "tcp" | "udp";
    hostname: string;
    port: number;
  }
  export interface Conn {
    readonly remoteAddr: NetAddr | { transport: "unix"; path: string };
    read(p: Uint8Array): Promise<number | null>;
    write(p: Uint8Array): Promise<number>;
    closeWrite(): Promise<void>;
    close(): void;
  }
  export interface TcpConn extends Conn {
    setNoDelay(noDelay?: boolean): void;
  }
  export interface Listener {
    accept(): Promise<Conn>;
    close(): void;
  }
  export function listen(options: { transport?: "tcp"; hostname?: string; port: number }): Listener;
  export function listen(options: { transport: "unix"; path: string }): Listener;
  export function connect(options: { transport: "unix"; path: string }): Promise<Conn>;
  export type PermissionDescriptor =
    | { name: "env"; variable?: string }
    | { name: "net"; host?: string }
    | { name: "read" | "write"; path?: string };
  export const permissions: { querySync(desc: PermissionDescriptor): { readonly state: "granted" | "denied" | "prompt" } };
}
