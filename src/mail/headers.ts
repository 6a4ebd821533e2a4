/**
 * Collects, header by header, what the decision needs from a message, so
 * nothing else of the message is kept in memory.
 *
 * Pure: no I/O.
 * @module
 */

export const EXOTA_HEADER = "X-ExOTA-Authentication-Results";
export const TENANT_ID_HEADER = "X-MS-Exchange-CrossTenant-Id";

export interface AuthResultsHeader {
  readonly value: string;
  /** True when no Received header stands above it (added by our own MTA's chain). */
  readonly aboveReceived: boolean;
}

/** The headers the decision reads, as they came, in message order. */
export interface MessageHeaders {
  readonly from: readonly string[];
  readonly resentFrom: readonly string[];
  readonly tenantIds: readonly string[];
  readonly authResults: readonly AuthResultsHeader[];
  /** X-ExOTA-Authentication-Results headers, counted in any letter case. */
  readonly exotaResults: number;
}

export class HeaderCollector implements MessageHeaders {
  from: string[] = [];
  resentFrom: string[] = [];
  tenantIds: string[] = [];
  authResults: AuthResultsHeader[] = [];
  exotaResults = 0;
  count = 0;
  bytes = 0;
  #sawReceived = false;

  add(name: string, value: string): void {
    this.count++;
    this.bytes += name.length + value.length;
    // Most headers are none of these: their length says so without lower-casing them.
    switch (name.length) {
      case 4:
        if (name.toLowerCase() === "from") this.from.push(value);
        break;
      case 8:
        if (name.toLowerCase() === "received") this.#sawReceived = true;
        break;
      case 11:
        if (name.toLowerCase() === "resent-from") this.resentFrom.push(value);
        break;
      case 22:
        if (name.toLowerCase() === "authentication-results") this.authResults.push({ value, aboveReceived: !this.#sawReceived });
        break;
      case 28:
        if (name.toLowerCase() === "x-ms-exchange-crosstenant-id") this.tenantIds.push(value);
        break;
      case 30:
        if (name.toLowerCase() === "x-exota-authentication-results") this.exotaResults++;
        break;
    }
  }
}
