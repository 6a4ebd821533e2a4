/**
 * The milter protocol as data: every command the MTA sends and every reply
 * the filter gives, as discriminated unions.
 * @module
 */

/** Address family of the SMTP client in a CONNECT command. */
export type Family = "unknown" | "unix" | "inet" | "inet6";

/** The command letters a macro set can belong to. */
export type MacroCommandLetter =
  | "A" | "B" | "C" | "E" | "H" | "L" | "M" | "N" | "R" | "T" | "U";

/** A command from the MTA. */
export type Command =
  | { readonly type: "optneg"; readonly version: number; readonly actions: number; readonly protocol: number }
  | { readonly type: "macro"; readonly stage: MacroCommandLetter; readonly macros: ReadonlyArray<readonly [string, string]> }
  | { readonly type: "connect"; readonly hostname: string; readonly family: "unknown" }
  | {
    readonly type: "connect";
    readonly hostname: string;
    readonly family: "unix" | "inet" | "inet6";
    readonly port: number;
    readonly address: string;
  }
  | { readonly type: "helo"; readonly name: string }
  | { readonly type: "mail"; readonly args: readonly string[] }
  | { readonly type: "rcpt"; readonly args: readonly string[] }
  | { readonly type: "data" }
  | { readonly type: "header"; readonly name: string; readonly value: string }
  | { readonly type: "eoh" }
  | { readonly type: "body"; readonly chunk: Uint8Array }
  | { readonly type: "eom"; readonly chunk: Uint8Array }
  | { readonly type: "abort" }
  | { readonly type: "quit" }
  | { readonly type: "quit_nc" }
  | { readonly type: "unknown"; readonly line: string };

export type CommandType = Command["type"];

/** Macro names requested per stage (set-macro-list), keyed by stage number. */
export type MacroRequest = ReadonlyMap<number, readonly string[]>;

/** A reply from the filter. */
export type Reply =
  | {
    readonly type: "optneg";
    readonly version: number;
    readonly actions: number;
    readonly protocol: number;
    readonly macros?: MacroRequest;
  }
  | { readonly type: "continue" }
  | { readonly type: "accept" }
  | { readonly type: "reject" }
  | { readonly type: "tempfail" }
  | { readonly type: "discard" }
  | { readonly type: "skip" }
  | { readonly type: "progress" }
  /** `code` is e.g. 550, `text` is "5.7.1 reason"; the codec doubles `%`. */
  | { readonly type: "replycode"; readonly code: number; readonly text: string }
  | { readonly type: "addheader"; readonly name: string; readonly value: string }
  | { readonly type: "insheader"; readonly index: number; readonly name: string; readonly value: string }
  /** `index` is 1-based among headers of that name; an empty value deletes. */
  | { readonly type: "chgheader"; readonly index: number; readonly name: string; readonly value: string };

export type ReplyType = Reply["type"];
