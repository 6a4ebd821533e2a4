/*
 * Copied from the team's shared bench instruments (../shared/bench/miltload.c)
 * so that `npm run bench:cbar` works on a fresh clone; the only change: the
 * RESULT line also gives conn_p99_us.
 *
 * miltload - a Postfix-like MTA-side load generator for the Sendmail milter
 * protocol, version 6.  Single file, libc + pthreads + epoll only.
 *
 *   cc -O2 -Wall -Wextra -o miltload miltload.c -lpthread      (or: make)
 *
 * Per milter connection it sends what Postfix 3.7's milter8.c sends (checked
 * frame by frame against a real Postfix 3.7.11 by postfix-check.sh):
 *   OPTNEG  version 6, actions 0x1FF, protocol mask 0x1FFFFF; honours the
 *           filter's NO* (do not send) and NR_* (no reply) bits, HDR_LEADSPC,
 *           SKIP, SETSYMLIST (per-stage macro lists) and older versions (v2
 *           filters get no DATA).
 *   D C [+ C]  connect   macros of connect/helo/mail/rcpt/data go out even when
 *   D H [+ H]  helo      the filter skips the event; none for skipped content
 *   per message (an SMTP transaction):
 *   D M [+ M], D R [+ R], D T [+ T]      ("i" first appears with DATA)
 *   (D L + L) x 16 headers   (Postfix repeats the end-of-header macros before
 *                             EVERY header; nothing at all when NOHDRS)
 *   [D N + N] eoh, [D B + B] one ~2 KB body chunk, D E + E end of message,
 *   then modification requests until the final reply;
 *   A (abort) after every transaction, A + Q at the end of the session.
 * Frames that need no reply are pipelined with the next frame that does, as
 * Postfix's VSTREAM buffering does; the envelope tail is written separately
 * from the first content frame, because in Postfix smtpd writes the one and
 * the cleanup server the other.  Like Postfix it leaves Nagle on (TCP): with
 * a filter that skips DATA this reproduces Postfix's 40 ms delayed-ACK stall
 * at the handover, and with a filter that writes a modification and its final
 * reply separately (libmilter does) the filter-side stall at end of message.
 *
 * Latency is measured per message from the moment its MAIL batch is queued
 * until its final reply has been parsed.  Only loopback/unix sockets are
 * accepted.  Every run is bounded by a message count and/or a duration.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- protocol */
#define SMFI_VERSION_MTA 6
#define OFFER_ACTIONS 0x000001FFu  /* ADDHDRS..SETSYMLIST, as Postfix */
#define OFFER_PROTO 0x001FFFFFu    /* MILTER8_V6_PROTO_MASK */

#define A_ADDHDRS 0x001u
#define A_CHGBODY 0x002u
#define A_ADDRCPT 0x004u
#define A_DELRCPT 0x008u
#define A_CHGHDRS 0x010u
#define A_QUARANTINE 0x020u
#define A_CHGFROM 0x040u
#define A_ADDRCPT_PAR 0x080u
#define A_SETSYMLIST 0x100u

#define P_NOCONNECT 0x1u
#define P_NOHELO 0x2u
#define P_NOMAIL 0x4u
#define P_NORCPT 0x8u
#define P_NOBODY 0x10u
#define P_NOHDRS 0x20u
#define P_NOEOH 0x40u
#define P_NR_HDR 0x80u
#define P_NOUNKNOWN 0x100u
#define P_NODATA 0x200u
#define P_SKIP 0x400u
#define P_RCPT_REJ 0x800u
#define P_NR_CONN 0x1000u
#define P_NR_HELO 0x2000u
#define P_NR_MAIL 0x4000u
#define P_NR_RCPT 0x8000u
#define P_NR_DATA 0x10000u
#define P_NR_UNKN 0x20000u
#define P_NR_EOH 0x40000u
#define P_NR_BODY 0x80000u
#define P_HDR_LEADSPC 0x100000u

static const struct { uint32_t bit; const char *name; } PNAMES[] = {
    {P_NOCONNECT, "NOCONNECT"}, {P_NOHELO, "NOHELO"}, {P_NOMAIL, "NOMAIL"},
    {P_NORCPT, "NORCPT"}, {P_NOBODY, "NOBODY"}, {P_NOHDRS, "NOHDRS"},
    {P_NOEOH, "NOEOH"}, {P_NR_HDR, "NR_HDR"}, {P_NOUNKNOWN, "NOUNKNOWN"},
    {P_NODATA, "NODATA"}, {P_SKIP, "SKIP"}, {P_RCPT_REJ, "RCPT_REJ"},
    {P_NR_CONN, "NR_CONN"}, {P_NR_HELO, "NR_HELO"}, {P_NR_MAIL, "NR_MAIL"},
    {P_NR_RCPT, "NR_RCPT"}, {P_NR_DATA, "NR_DATA"}, {P_NR_UNKN, "NR_UNKN"},
    {P_NR_EOH, "NR_EOH"}, {P_NR_BODY, "NR_BODY"}, {P_HDR_LEADSPC, "HDR_LEADSPC"},
    {0, NULL}};
static const struct { uint32_t bit; const char *name; } ANAMES[] = {
    {A_ADDHDRS, "ADDHDRS"}, {A_CHGBODY, "CHGBODY"}, {A_ADDRCPT, "ADDRCPT"},
    {A_DELRCPT, "DELRCPT"}, {A_CHGHDRS, "CHGHDRS"}, {A_QUARANTINE, "QUARANTINE"},
    {A_CHGFROM, "CHGFROM"}, {A_ADDRCPT_PAR, "ADDRCPT_PAR"},
    {A_SETSYMLIST, "SETSYMLIST"}, {0, NULL}};

/* macro stages as numbered in the SETSYMLIST reply (SMFIM_*) */
enum { MS_CONNECT = 0, MS_HELO, MS_ENVFROM, MS_ENVRCPT, MS_DATA, MS_EOM, MS_EOH, MS_N };
/* chronological rank, used to decide which macros are defined yet */
enum { R_CONNECT = 0, R_HELO, R_MAIL, R_RCPT, R_DATA, R_EOH, R_EOM };
static const char *MS_NAME[MS_N] = {"connect", "helo", "envfrom", "envrcpt", "data", "eom", "eoh"};

/* -------------------------------------------------------------- utilities */
#define MAX_FRAME (16u * 1024u * 1024u)
#define MAXNAMES 32

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "miltload: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(64);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q && n) die("out of memory");
  return q;
}

typedef struct {
  uint8_t *p;
  size_t len, cap, off; /* off: first unconsumed (input) / unwritten (output) byte */
} buf_t;

static void b_reserve(buf_t *b, size_t n) {
  if (b->len + n <= b->cap) return;
  size_t nc = b->cap ? b->cap : 16384;
  while (nc < b->len + n) nc *= 2;
  b->p = xrealloc(b->p, nc);
  b->cap = nc;
}
static size_t fr_begin(buf_t *b, char cmd) {
  b_reserve(b, 5);
  size_t s = b->len;
  b->len += 4;
  b->p[b->len++] = (uint8_t)cmd;
  return s;
}
static void fr_mem(buf_t *b, const void *m, size_t n) {
  b_reserve(b, n);
  memcpy(b->p + b->len, m, n);
  b->len += n;
}
static void fr_str(buf_t *b, const char *s) { fr_mem(b, s, strlen(s) + 1); }
static void fr_u8(buf_t *b, uint8_t v) { fr_mem(b, &v, 1); }
static void fr_u16(buf_t *b, uint16_t v) { v = htons(v); fr_mem(b, &v, 2); }
static void fr_u32(buf_t *b, uint32_t v) { v = htonl(v); fr_mem(b, &v, 4); }
static void fr_end(buf_t *b, size_t s) {
  uint32_t l = htonl((uint32_t)(b->len - s - 4));
  memcpy(b->p + s, &l, 4);
}

static void mask_names(char *out, size_t n, uint32_t v, int actions) {
  size_t o = 0;
  out[0] = 0;
  for (int i = 0;; i++) {
    uint32_t bit = actions ? ANAMES[i].bit : PNAMES[i].bit;
    const char *nm = actions ? ANAMES[i].name : PNAMES[i].name;
    if (!nm) break;
    if (v & bit) {
      o += (size_t)snprintf(out + o, o < n ? n - o : 0, "%s%s", o ? "," : "", nm);
      v &= ~bit;
    }
  }
  if (v) snprintf(out + o, o < n ? n - o : 0, "%s0x%x", o ? "," : "", v);
}

/* --------------------------------------------------------------- options */
enum { EXPECT_POLICY = 0, EXPECT_CONTINUE, EXPECT_NONE };
enum { CERT_HELO = 0, CERT_RCPT, CERT_NONE };

static struct {
  const char *spec;
  int is_unix;
  struct sockaddr_storage sa;
  socklen_t salen;
  int conc, threads, per_conn;
  uint64_t total;
  double duration;
  double reject_ratio;
  uint64_t reject_ppm;
  int timeout_ms;
  char *domains[64];
  int ndomains;
  const char *bad_domain;
  const char *authserv;
  const char *expect_header;
  int expect_mode;
  int cert_at;
  int hdr_macros;
  const char *client_ip, *client_name, *helo_name, *myhostname;
  int body_size;
  int extra_headers;
  int verbose;
  int max_errors;
  int quiet;
  int quickack;
  int nodelay;
  int split;
  const char *label;
} O;

/* ----------------------------------------------------------------- stats */
enum { V_CONTINUE = 0, V_ACCEPT, V_REJECT, V_TEMPFAIL, V_DISCARD, V_SHUTDOWN, V_NCLASS };
static const char *V_NAME[V_NCLASS] = {"continue", "accept", "reject", "tempfail", "discard", "shutdown"};
enum { K_GOOD = 0, K_BAD = 1 };

typedef struct {
  uint64_t *lat;
  size_t nlat, caplat;
  uint64_t *clat;
  size_t nclat, capclat;
  uint64_t completed, failed;
  uint64_t by_class[V_NCLASS];
  uint64_t by_letter[256];
  uint64_t kind_sent[2], kind_class[2][V_NCLASS];
  uint64_t early[V_NCLASS]; /* final verdicts before end-of-message */
  uint64_t mods[256];
  uint64_t hdr_present, hdr_missing, qid_mismatch, verify_fail;
  uint64_t proto_err, connects, conn_verdicts, quarantines, skips, progress;
  uint64_t timeouts, connect_fail;
  uint64_t frames_sent, replies, writes, reads, bytes_out, bytes_in;
} stats_t;

static void push_lat(uint64_t **a, size_t *n, size_t *cap, uint64_t v) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 65536;
    *a = xrealloc(*a, *cap * sizeof(uint64_t));
  }
  (*a)[(*n)++] = v;
}

/* ------------------------------------------------------------ connection */
enum { S_OPTNEG = 0, S_CONNECT, S_HELO, S_MSG_START, S_MAIL, S_RCPT, S_DATA, S_HDR,
       S_EOH, S_BODY, S_EOM, S_CLOSED };
static const char *S_NAME[] = {"OPTNEG", "CONNECT", "HELO", "MSG_START", "MAIL", "RCPT", "DATA",
                               "HEADER", "EOH", "BODY", "EOM", "CLOSED"};

#define MAXHDRS 64
typedef struct {
  int n;
  const char *names[MAXNAMES];
} namelist_t;

typedef struct conn {
  int fd;
  int id;
  int step;      /* next step to emit */
  int wait_step; /* step whose reply we are waiting for, or -1 */
  int connecting;
  int want_out;
  buf_t out, in;
  uint32_t version, actions, pflags;
  uint32_t np_mask; /* events the filter's (older) protocol version lacks */
  namelist_t *symlist[MS_N]; /* filter-requested lists (NULL: defaults) */
  int msgs_on_conn;
  int setup_recorded;
  /* current message */
  int in_msg;
  uint64_t msg_idx;
  int kind, dom;
  char qid[24];
  int nhdrs, hdr_i;
  const char *hname[MAXHDRS];
  size_t hval_off[MAXHDRS];
  buf_t hbuf;
  int hdr_seen;     /* expected header added/inserted */
  char reply[512];  /* text of a 'y' reply */
  uint64_t t_conn, t_msg, t_wait;
  int trace; /* print frames of this message */
} conn_t;

typedef struct thr {
  int id, epfd;
  conn_t *conns;
  int nconns, active;
  stats_t st;
  pthread_t th;
} thr_t;

static namelist_t g_macros[MS_N];
static uint64_t g_next_msg;       /* atomic */
static volatile int g_stop;       /* set by signal or deadline */
static uint64_t g_t0, g_deadline, g_hard_deadline;
static int g_err_printed;         /* atomic */
static int g_negotiated_printed;  /* atomic */
static int g_trace_done;          /* atomic */
static uint64_t g_total_proto_err;/* atomic */
static uint64_t g_last_done;      /* atomic max of completion time */
static char *g_body;
static size_t g_body_len;
static char g_neg_summary[512];

static void conn_error(thr_t *t, conn_t *c, const char *fmt, ...);

/* ---------------------------------------------------------- message data */
static const char *TENANT_FMT = "%08x-18c5-45e8-88de-%012" PRIx64;

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  while (*s) { h ^= (uint8_t)*s++; h *= 16777619u; }
  return h;
}
static void tenant_id(const char *dom, char *out, size_t n) {
  uint32_t h = fnv1a(dom);
  snprintf(out, n, TENANT_FMT, h, (uint64_t)(h * 2654435761u) & 0xffffffffffffull);
}

static void make_qid(uint64_t idx, char *out) {
  /* Postfix long queue id style: 10+ chars from [0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z] */
  static const char A[] = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";
  char tmp[24];
  int n = 0;
  uint64_t v = idx + 0x2f1c0ffeeull;
  do { tmp[n++] = A[v % 52]; v /= 52; } while (v && n < 20);
  while (n < 11) tmp[n++] = A[0];
  out[0] = '4';
  for (int i = 0; i < n; i++) out[1 + i] = tmp[n - 1 - i];
  out[1 + n] = 0;
}

static const char *DKIM_B =
    "Zk3jxhQ1mT0yqk3bWm8mB2vYp7HcYQ5kGXw3d3Cz1yTB7f0uXJ2r1qkP1xq8z0B8u8wFQZ8v"
    "n2y7cR1m5TqZpK3b9Hq1yVJw0bX2tq3mZ8pX3l5cW0sQh2Tj8uYH1fZk3e4bLJ1gq9nXo6wC"
    "2cXb7m0uJqYH3l8vR5sT1fKq2bNn9yW4pZ3x0dB6hUe1kG7aMiL5oQ8rS2tV4wX6yZ0aB3cD"
    "5eF7gH9iJ1kL3mN5oP7qR9sT1uV3wX5yZ7aB9cD1eF3gH5iJ7kL9mN1oP3qR5sT7uV9wX1y"
    "Z3aB5cD7eF9gH1iJ3kL5mN7oP9qR1sT3uV5wX7yZ9aB1cD3eF5gH7iJ9kL1mN3oP5qR7sT9==";

static const char *EXTRA_HDRS[][2] = {
    {"Thread-Topic", "Quarterly report"},
    {"Thread-Index", "AdsB3kq0m4CqYx9nRy2mZ3l0qZ3Xw=="},
    {"Accept-Language", "en-US"},
    {"Content-Language", "en-US"},
    {"X-MS-TNEF-Correlator", ""},
    {"X-MS-PublicTrafficType", "Email"},
    {"X-MS-TrafficTypeDiagnostic", "DB9PR07MB1234:EE_|AM0PR07MB5678:EE_"},
    {"X-MS-Office365-Filtering-Correlation-Id", "5f0c2a9e-7b1d-4c3e-9a8f-0e1d2c3b4a59"},
    {"X-MS-Exchange-CrossTenant-fromentityheader", "Hosted"},
    {"X-MS-Exchange-CrossTenant-mailboxtype", "HOSTED"},
    {"X-MS-Exchange-CrossTenant-AuthAs", "Internal"},
    {"X-MS-Exchange-CrossTenant-AuthSource", "DB9PR07MB1234.eurprd07.prod.outlook.com"},
    {"X-Microsoft-Antispam", "BCL:0;ARA:13230040|366016|1800799024|376014|38070700018;"},
    {"X-Forefront-Antispam-Report",
     "CIP:255.255.255.255;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;SFV:NSPM;H:DB9PR07MB1234.eurprd07"
     ".prod.outlook.com;PTR:;CAT:NONE;SFS:(13230040)(366016)(1800799024)(376014);DIR:OUT;SFP:1101;"},
};
#define N_EXTRA (int)(sizeof(EXTRA_HDRS) / sizeof(EXTRA_HDRS[0]))

static void add_hdr(conn_t *c, const char *name, const char *fmt, ...) {
  if (c->nhdrs >= MAXHDRS) return;
  char tmp[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof tmp) n = sizeof tmp - 1;
  c->hname[c->nhdrs] = name;
  c->hval_off[c->nhdrs] = c->hbuf.len;
  fr_mem(&c->hbuf, tmp, (size_t)n + 1);
  c->nhdrs++;
}

static const char *cur_domain(conn_t *c) {
  return c->kind == K_BAD ? O.bad_domain : O.domains[c->dom];
}

/* Builds the ~16 headers of an Exchange Online (outbound) message. */
static void build_message(conn_t *c) {
  const char *dom = cur_domain(c);
  char tid[64], bline[4][96];
  tenant_id(dom, tid, sizeof tid);
  for (int i = 0; i < 4; i++) snprintf(bline[i], sizeof bline[i], "%.86s", DKIM_B + i * 86);
  uint64_t s = c->msg_idx;
  c->nhdrs = 0;
  c->hbuf.len = 0;
  /* The verifier's result on top, where OpenDKIM inserts it: above every
     Received header, the only place a careful milter trusts it. */
  add_hdr(c, "Authentication-Results",
          "%s;\n\tdkim=pass (2048-bit key; unprotected) header.d=%s header.i=@%s "
          "header.a=rsa-sha256 header.s=selector1 header.b=Zk3jxhQ1",
          O.authserv, dom, dom);
  add_hdr(c, "Received",
          "from DB9PR07MB1234.eurprd07.prod.outlook.com ([fe80::1c4a:9f00:2b1d:7e21]) by "
          "DB9PR07MB1234.eurprd07.prod.outlook.com ([fe80::1c4a:9f00:2b1d:7e21%%7]) with mapi id "
          "15.20.8207.017; Sat, 28 Nov 2026 06:31:05 +0000");
  add_hdr(c, "DKIM-Signature",
          "v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=selector1;\n\t"
          "h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:X-MS-Exchange-SenderADCheck;\n\t"
          "bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n\tb=%s\n\t %s\n\t %s\n\t %s",
          dom, bline[0], bline[1], bline[2], bline[3]);
  add_hdr(c, "From", "\"Alice Example\" <alice@%s>", dom);
  add_hdr(c, "To", "\"Bob Receiver\" <bob@example.net>");
  add_hdr(c, "Subject", "Quarterly report %" PRIu64, s);
  add_hdr(c, "Date", "Sat, 28 Nov 2026 06:31:05 +0000");
  add_hdr(c, "Message-ID", "<DB9PR07MB1234%012" PRIX64 "%s@DB9PR07MB1234.eurprd07.prod.outlook.com>",
          s, c->qid);
  add_hdr(c, "MIME-Version", "1.0");
  add_hdr(c, "Content-Type", "text/plain; charset=\"us-ascii\"");
  add_hdr(c, "X-MS-Has-Attach", "");
  add_hdr(c, "X-OriginatorOrg", "%s", dom);
  add_hdr(c, "X-MS-Exchange-CrossTenant-Network-Message-Id",
          "%08" PRIx64 "-7b1d-4c3e-9a8f-%012" PRIx64, s & 0xffffffffu, s);
  add_hdr(c, "X-MS-Exchange-CrossTenant-originalarrivaltime", "28 Nov 2026 06:31:04.8310 (UTC)");
  add_hdr(c, "X-MS-Exchange-CrossTenant-Id", "%s", tid);
  add_hdr(c, "X-MS-Exchange-Transport-CrossTenantHeadersStamped", "AM0PR07MB5678");
  for (int i = 0; i < O.extra_headers; i++)
    add_hdr(c, EXTRA_HDRS[i % N_EXTRA][0], "%s", EXTRA_HDRS[i % N_EXTRA][1]);
}

/* ---------------------------------------------------------------- macros */
static const char *strip_braces(const char *n, char *tmp, size_t tn) {
  size_t l = strlen(n);
  if (l >= 2 && n[0] == '{' && n[l - 1] == '}') {
    snprintf(tmp, tn, "%.*s", (int)(l - 2), n + 1);
    return tmp;
  }
  return n;
}

/* Value of macro `name` at chronological stage `rank`, NULL if undefined. */
static const char *macro_value(conn_t *c, int rank, const char *name, char *vb, size_t vn) {
  char tb[64];
  const char *n = strip_braces(name, tb, sizeof tb);
  if (!strcmp(n, "j") || !strcmp(n, "daemon_name")) return O.myhostname;
  if (!strcmp(n, "daemon_addr")) return "192.0.2.25";
  if (!strcmp(n, "daemon_port")) return "25";
  if (!strcmp(n, "v")) return "Postfix 3.7.11";
  if (!strcmp(n, "_")) { snprintf(vb, vn, "%s [%s]", O.client_name, O.client_ip); return vb; }
  if (!strcmp(n, "client_addr")) return O.client_ip;
  if (!strcmp(n, "client_name") || !strcmp(n, "client_ptr")) return O.client_name;
  if (!strcmp(n, "client_port")) return "41234";
  if (!strcmp(n, "client_connections")) return "1";
  if (rank >= R_HELO) {
    if (!strcmp(n, "tls_version")) return "TLSv1.3";
    if (!strcmp(n, "cipher")) return "TLS_AES_256_GCM_SHA384";
    if (!strcmp(n, "cipher_bits")) return "256";
    if (O.cert_at != CERT_NONE && (O.cert_at == CERT_HELO || rank >= R_RCPT)) {
      if (!strcmp(n, "cert_subject")) return "mail.protection.outlook.com";
      if (!strcmp(n, "cert_issuer")) return "DigiCert Cloud Services CA-1";
    }
  }
  if (!c->in_msg) return NULL;
  if (rank >= R_MAIL && !strcmp(n, "mail_addr")) { snprintf(vb, vn, "alice@%s", cur_domain(c)); return vb; }
  if (rank >= R_MAIL && !strcmp(n, "mail_host")) return cur_domain(c);
  if (rank >= R_MAIL && !strcmp(n, "mail_mailer")) return "smtp";
  /* Postfix (smtpd_delay_open_until_valid_rcpt=yes) opens the queue file only
     after the first RCPT passed the milters: "i" first appears with DATA.
     The miltertest layout of the upstream tests sends it with RCPT. */
  if (!strcmp(n, "i") && (rank >= R_DATA || (O.cert_at == CERT_RCPT && rank >= R_RCPT))) return c->qid;
  if (rank >= R_RCPT) {
    if (!strcmp(n, "rcpt_addr")) return "bob@example.net";
    if (!strcmp(n, "rcpt_host")) return "example.net";
    if (!strcmp(n, "rcpt_mailer")) return "smtp";
  }
  return NULL; /* e.g. {auth_type}: undefined, so not sent (as Postfix) */
}

static void parse_namelist(namelist_t *nl, const char *s) {
  nl->n = 0;
  const char *p = s;
  while (*p && nl->n < MAXNAMES) {
    while (*p == ' ' || *p == ',' || *p == '\t') p++;
    if (!*p) break;
    const char *e = p;
    while (*e && *e != ' ' && *e != ',' && *e != '\t') e++;
    nl->names[nl->n++] = strndup(p, (size_t)(e - p));
    p = e;
  }
}

static void put_macros(conn_t *c, int ms, char cmd, int rank) {
  namelist_t *nl = c->symlist[ms] ? c->symlist[ms] : &g_macros[ms];
  char vb[256];
  size_t s = fr_begin(&c->out, 'D');
  fr_u8(&c->out, (uint8_t)cmd);
  for (int i = 0; i < nl->n; i++) {
    const char *v = macro_value(c, rank, nl->names[i], vb, sizeof vb);
    if (!v) continue;
    fr_str(&c->out, nl->names[i]);
    fr_str(&c->out, v);
  }
  fr_end(&c->out, s);
}

/* ------------------------------------------------------------ networking */
/* protocol errors and connection-level verdicts both end a session without
   consuming a message; cap them so a broken filter cannot make us spin */
static int g_err_limit_hit(void) { return __atomic_load_n(&g_total_proto_err, __ATOMIC_RELAXED) >= (uint64_t)O.max_errors; }

static void set_events(thr_t *t, conn_t *c, int out) {
  if (c->want_out == out) return;
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = out;
}

static void trace_frames(conn_t *c, const uint8_t *p, size_t n, const char *dir) {
  size_t o = 0;
  while (o + 5 <= n) {
    uint32_t l;
    memcpy(&l, p + o, 4);
    l = ntohl(l);
    if (o + 4 + l > n || l == 0) break;
    char cmd = (char)p[o + 4];
    fprintf(stderr, "  [conn %d] %s '%c' len=%u", c->id, dir, cmd, l);
    fprintf(stderr, " \"");
    for (uint32_t i = 1; i < l && i < 120; i++) {
      uint8_t ch = p[o + 4 + i];
      if (ch == 0) fputs("\\0", stderr);
      else if (ch == '\n') fputs("\\n", stderr);
      else if (ch == '\r') fputs("\\r", stderr);
      else if (ch == '\t') fputs("\\t", stderr);
      else if (ch < 32 || ch > 126) fprintf(stderr, "\\x%02x", ch);
      else fputc(ch, stderr);
    }
    fprintf(stderr, "%s\"\n", l > 120 ? "..." : "");
    o += 4 + l;
  }
}

/* Writes pending output; returns -1 on error (connection closed). */
static int flush_out(thr_t *t, conn_t *c) {
  while (c->out.off < c->out.len) {
    ssize_t w = write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { set_events(t, c, 1); return 0; }
      conn_error(t, c, "write: %s", strerror(errno));
      return -1;
    }
    t->st.writes++;
    t->st.bytes_out += (uint64_t)w;
    c->out.off += (size_t)w;
  }
  if (c->trace) trace_frames(c, c->out.p, c->out.len, "->");
  c->out.len = c->out.off = 0;
  set_events(t, c, 0);
  return 0;
}

static void close_conn(thr_t *t, conn_t *c) {
  if (c->fd >= 0) {
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
  }
  c->fd = -1;
  c->step = S_CLOSED;
  c->wait_step = -1;
  c->in_msg = 0;
  c->in.len = c->in.off = 0;
  c->out.len = c->out.off = 0;
  for (int i = 0; i < MS_N; i++) {
    if (!c->symlist[i]) continue;
    for (int j = 0; j < c->symlist[i]->n; j++) free((void *)c->symlist[i]->names[j]);
    free(c->symlist[i]);
    c->symlist[i] = NULL;
  }
  t->active--;
}

static void conn_error(thr_t *t, conn_t *c, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  t->st.proto_err++;
  __atomic_fetch_add(&g_total_proto_err, 1, __ATOMIC_RELAXED);
  if (__atomic_fetch_add(&g_err_printed, 1, __ATOMIC_RELAXED) < 20)
    fprintf(stderr, "miltload: PROTOCOL ERROR conn %d (waiting for %s, msg %s): %s\n", c->id,
            c->wait_step >= 0 ? S_NAME[c->wait_step] : S_NAME[c->step], c->in_msg ? c->qid : "-", msg);
  if (c->in_msg) t->st.failed++;
  close_conn(t, c);
}

static int open_conn(thr_t *t, conn_t *c);

/* Claims the next message index from the global budget. */
static int claim_message(thr_t *t, conn_t *c) {
  (void)t;
  if (g_stop || g_err_limit_hit()) return 0;
  if (O.per_conn > 0 && c->msgs_on_conn >= O.per_conn) return 0;
  uint64_t idx = __atomic_fetch_add(&g_next_msg, 1, __ATOMIC_RELAXED);
  if (O.total && idx >= O.total) return 0;
  if (now_ns() >= g_deadline) { g_stop = 1; return 0; }
  c->msg_idx = idx;
  c->in_msg = 1;
  /* deterministic mix: exactly floor(n * ppm / 1e6) bad messages among 0..n-1 */
  c->kind = ((idx + 1) * O.reject_ppm / 1000000u != idx * O.reject_ppm / 1000000u) ? K_BAD : K_GOOD;
  c->dom = (int)(idx % (uint64_t)O.ndomains);
  make_qid(idx, c->qid);
  c->hdr_seen = 0;
  c->reply[0] = 0;
  build_message(c);
  c->hdr_i = 0;
  t->st.kind_sent[c->kind]++;
  return 1;
}

static int wait_reply(thr_t *t, conn_t *c, int step) {
  c->wait_step = step;
  c->t_wait = now_ns();
  return flush_out(t, c);
}

/* Emits frames until one that needs a reply; returns -1 if the conn closed. */
static int advance(thr_t *t, conn_t *c) {
  uint32_t pf = c->pflags;
  buf_t *o = &c->out;
  size_t s;
  for (;;) {
    switch (c->step) {
    case S_CONNECT:
      put_macros(c, MS_CONNECT, 'C', R_CONNECT);
      c->step = S_HELO;
      if (!(pf & P_NOCONNECT)) {
        s = fr_begin(o, 'C');
        fr_str(o, O.client_name);
        int v6 = strchr(O.client_ip, ':') != NULL;
        fr_u8(o, v6 ? '6' : '4');
        fr_u16(o, 41234);
        fr_str(o, O.client_ip);
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_CONN)) return wait_reply(t, c, S_CONNECT);
      }
      break;
    case S_HELO:
      put_macros(c, MS_HELO, 'H', R_HELO);
      c->step = S_MSG_START;
      if (!(pf & P_NOHELO)) {
        s = fr_begin(o, 'H');
        fr_str(o, O.helo_name);
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_HELO)) return wait_reply(t, c, S_HELO);
      }
      break;
    case S_MSG_START:
      if (!c->setup_recorded) {
        push_lat(&t->st.clat, &t->st.nclat, &t->st.capclat, now_ns() - c->t_conn);
        c->setup_recorded = 1;
      }
      if (!claim_message(t, c)) {
        /* end of SMTP session: Postfix 3.7 sends one more ABORT (smtpd's
           final mail_reset) and QUIT, then closes */
        s = fr_begin(o, 'A');
        fr_end(o, s);
        s = fr_begin(o, 'Q');
        fr_end(o, s);
        c->wait_step = -1;
        flush_out(t, c);
        if (c->fd >= 0) {
          /* the write may still be pending only if the socket buffer is full,
             which cannot happen for a few bytes after a reply; close now */
          close_conn(t, c);
        }
        return -1;
      }
      c->t_msg = now_ns();
      c->step = S_MAIL;
      break;
    case S_MAIL: {
      put_macros(c, MS_ENVFROM, 'M', R_MAIL);
      c->step = S_RCPT;
      if (!(pf & P_NOMAIL)) {
        char a[160];
        snprintf(a, sizeof a, "<alice@%s>", cur_domain(c));
        s = fr_begin(o, 'M');
        fr_str(o, a);
        snprintf(a, sizeof a, "SIZE=%zu", g_body_len + 4096);
        fr_str(o, a);
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_MAIL)) return wait_reply(t, c, S_MAIL);
      }
      break;
    }
    case S_RCPT:
      put_macros(c, MS_ENVRCPT, 'R', R_RCPT);
      c->step = S_DATA;
      if (!(pf & P_NORCPT)) {
        s = fr_begin(o, 'R');
        fr_str(o, "<bob@example.net>");
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_RCPT)) return wait_reply(t, c, S_RCPT);
      }
      break;
    case S_DATA:
      c->step = S_HDR;
      if (!(c->np_mask & P_NODATA)) {
        put_macros(c, MS_DATA, 'T', R_DATA);
        if (!(pf & P_NODATA)) {
          s = fr_begin(o, 'T');
          fr_end(o, s);
          t->st.frames_sent++;
          if (!(pf & P_NR_DATA)) return wait_reply(t, c, S_DATA);
        }
      }
      /* Postfix: the message content is sent by the cleanup server, not by
         smtpd; smtpd flushes what it buffered (macros of skipped events, the
         previous ABORT) in its own write before handing the socket over.
         Over TCP with Nagle on (Postfix does not set TCP_NODELAY here) the
         first content write then waits for the filter's delayed ACK. */
      if (O.split && c->out.len > c->out.off && flush_out(t, c) < 0) return -1;
      break;
    case S_HDR:
      if ((pf & P_NOHDRS) || c->hdr_i >= c->nhdrs) { c->step = S_EOH; break; }
      if (O.hdr_macros) put_macros(c, MS_EOH, 'L', R_EOH);
      s = fr_begin(o, 'L');
      fr_str(o, c->hname[c->hdr_i]);
      {
        const char *v = (const char *)c->hbuf.p + c->hval_off[c->hdr_i];
        /* raw "Name: value" (or "Name:" when empty) keeps its space */
        if ((pf & P_HDR_LEADSPC) && v[0]) fr_mem(o, " ", 1);
        fr_str(o, v);
      }
      fr_end(o, s);
      t->st.frames_sent++;
      c->hdr_i++;
      if (!(pf & P_NR_HDR)) return wait_reply(t, c, S_HDR);
      break;
    case S_EOH:
      c->step = S_BODY;
      if (!(pf & P_NOEOH)) {
        put_macros(c, MS_EOH, 'N', R_EOH);
        s = fr_begin(o, 'N');
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_EOH)) return wait_reply(t, c, S_EOH);
      }
      break;
    case S_BODY:
      c->step = S_EOM;
      if (!(pf & P_NOBODY) && g_body_len > 0) {
        if (O.hdr_macros) put_macros(c, MS_EOM, 'B', R_EOM);
        s = fr_begin(o, 'B');
        fr_mem(o, g_body, g_body_len);
        fr_end(o, s);
        t->st.frames_sent++;
        if (!(pf & P_NR_BODY)) return wait_reply(t, c, S_BODY);
      }
      break;
    case S_EOM:
      put_macros(c, MS_EOM, 'E', R_EOM);
      s = fr_begin(o, 'E');
      fr_end(o, s);
      t->st.frames_sent++;
      c->step = S_MSG_START;
      return wait_reply(t, c, S_EOM);
    default:
      conn_error(t, c, "internal: advance in step %d", c->step);
      return -1;
    }
  }
}

/* ----------------------------------------------------- reply processing */
static int classify_reply(const char *txt) {
  return txt[0] == '4' ? V_TEMPFAIL : V_REJECT;
}

/* Validates a SMFIR_REPLYCODE text the way Postfix does. */
static int valid_replycode(const char *r) {
  if ((r[0] != '4' && r[0] != '5') || !isdigit((unsigned char)r[1]) || !isdigit((unsigned char)r[2]))
    return 0;
  if (r[3] != ' ' && r[3] != '-') return 0;
  if (isdigit((unsigned char)r[4]) && r[4] != r[0]) return 0;
  return 1;
}

static int ci_eq(const char *a, const char *b) { return strcasecmp(a, b) == 0; }

/* Splits a payload into NUL-terminated strings; returns count or -1. */
static int split_strings(const uint8_t *p, size_t n, const char **out, int max) {
  int k = 0;
  size_t o = 0;
  while (o < n) {
    const uint8_t *z = memchr(p + o, 0, n - o);
    if (!z) return -1;
    if (k < max) out[k] = (const char *)p + o;
    k++;
    o = (size_t)(z - p) + 1;
  }
  return k;
}

static void finish_message(thr_t *t, conn_t *c, int cls, char letter, int at_eom) {
  uint64_t tn = now_ns();
  stats_t *st = &t->st;
  push_lat(&st->lat, &st->nlat, &st->caplat, tn - c->t_msg);
  st->completed++;
  st->by_class[cls]++;
  st->by_letter[(uint8_t)letter]++;
  st->kind_class[c->kind][cls]++;
  if (!at_eom) st->early[cls]++;
  uint64_t prev = __atomic_load_n(&g_last_done, __ATOMIC_RELAXED);
  while (tn > prev && !__atomic_compare_exchange_n(&g_last_done, &prev, tn, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}

  /* verification */
  int ok_accept = (cls == V_CONTINUE || cls == V_ACCEPT);
  int bad = 0;
  if (O.expect_mode == EXPECT_POLICY) bad = c->kind == K_GOOD ? !ok_accept : cls != V_REJECT;
  else if (O.expect_mode == EXPECT_CONTINUE) bad = !ok_accept;
  if (O.expect_header && ok_accept && O.expect_mode != EXPECT_NONE) {
    if (c->hdr_seen) st->hdr_present++;
    else { st->hdr_missing++; bad = 1; }
  }
  /* a queue id quoted in the reply must be this message's (Postfix defines
     macro i from DATA on, so only check from there) */
  if (c->reply[0] && (at_eom || c->wait_step >= S_DATA || (O.cert_at == CERT_RCPT && c->wait_step >= S_RCPT))) {
    const char *q = strstr(c->reply, "queue_id: ");
    if (q) {
      q += 10;
      size_t l = strcspn(q, " ");
      if (l != strlen(c->qid) || strncmp(q, c->qid, l) != 0) { st->qid_mismatch++; bad = 1; }
    }
  }
  if (bad) {
    st->verify_fail++;
    if (__atomic_fetch_add(&g_err_printed, 1, __ATOMIC_RELAXED) < 20)
      fprintf(stderr, "miltload: VERIFY MISMATCH msg %s kind=%s verdict=%s ('%c'%s) header_seen=%d reply=\"%s\"\n",
              c->qid, c->kind == K_BAD ? "reject-designed" : "accept-designed", V_NAME[cls], letter,
              at_eom ? "" : ", before EOM", c->hdr_seen, c->reply);
  }
  if (c->trace)
    fprintf(stderr, "  [conn %d] message %s done: %s ('%c') in %.1f us\n", c->id, c->qid, V_NAME[cls],
            letter, (tn - c->t_msg) / 1e3);
  c->in_msg = 0;
  if (O.verbose < 2) c->trace = 0;
  c->msgs_on_conn++;
  /* Postfix's mail_reset(): ABORT after every transaction, buffered until the next read */
  size_t s = fr_begin(&c->out, 'A');
  fr_end(&c->out, s);
  c->step = S_MSG_START;
  c->wait_step = -1;
}

static int parse_optneg(thr_t *t, conn_t *c, const uint8_t *p, size_t n) {
  if (n < 12) { conn_error(t, c, "OPTNEG reply too short (%zu bytes)", n); return -1; }
  uint32_t v[3];
  memcpy(v, p, 12);
  c->version = ntohl(v[0]);
  c->actions = ntohl(v[1]);
  c->pflags = ntohl(v[2]);
  if (c->version > SMFI_VERSION_MTA || c->version < 2) {
    conn_error(t, c, "filter protocol version %u not supported", c->version);
    return -1;
  }
  if ((c->actions & OFFER_ACTIONS) != c->actions) {
    conn_error(t, c, "filter requests actions 0x%x not offered (0x%x)", c->actions, OFFER_ACTIONS);
    return -1;
  }
  /* Postfix only logs this; we do the same and keep the offered subset */
  uint32_t unk = c->pflags & ~OFFER_PROTO;
  /* Like Postfix: a filter speaking an older protocol version gets no events
     (and no macros) that its version does not define: v2 has no DATA and no
     UNKNOWN, v3 no DATA. */
  c->np_mask = c->version <= 2 ? (P_NODATA | P_NOUNKNOWN) : c->version == 3 ? P_NODATA : 0;
  size_t o = 12;
  int nsym = 0;
  while (o < n) {
    if (n - o < 5) { conn_error(t, c, "truncated SETSYMLIST entry"); return -1; }
    uint32_t stage;
    memcpy(&stage, p + o, 4);
    stage = ntohl(stage);
    o += 4;
    const uint8_t *z = memchr(p + o, 0, n - o);
    if (!z) { conn_error(t, c, "unterminated SETSYMLIST string"); return -1; }
    if (!(c->actions & A_SETSYMLIST)) { conn_error(t, c, "macro list sent without SETSYMLIST action"); return -1; }
    if (stage < MS_N) {
      namelist_t *nl = calloc(1, sizeof *nl);
      parse_namelist(nl, (const char *)p + o);
      c->symlist[stage] = nl;
      nsym++;
    } else if (!O.quiet) {
      fprintf(stderr, "miltload: warning: ignoring macro list for unknown stage %u\n", stage);
    }
    o = (size_t)(z - p) + 1;
  }
  if (__atomic_exchange_n(&g_negotiated_printed, 1, __ATOMIC_RELAXED) == 0) {
    char an[256], pn[512];
    mask_names(an, sizeof an, c->actions, 1);
    mask_names(pn, sizeof pn, c->pflags, 0);
    int k = snprintf(g_neg_summary, sizeof g_neg_summary,
                     "version=%u actions=0x%x[%s] protocol=0x%x[%s]", c->version, c->actions, an,
                     c->pflags, pn);
    for (int i = 0; i < MS_N; i++) {
      if (!c->symlist[i] || k >= (int)sizeof g_neg_summary) continue;
      k += snprintf(g_neg_summary + k, sizeof g_neg_summary - (size_t)k, " symlist[%s]=", MS_NAME[i]);
      for (int j = 0; j < c->symlist[i]->n && k < (int)sizeof g_neg_summary; j++)
        k += snprintf(g_neg_summary + k, sizeof g_neg_summary - (size_t)k, "%s%s", j ? "," : "",
                      c->symlist[i]->names[j]);
    }
    if (unk && k < (int)sizeof g_neg_summary)
      snprintf(g_neg_summary + k, sizeof g_neg_summary - (size_t)k, " (unoffered bits 0x%x ignored)", unk);
    if (!O.quiet) fprintf(stderr, "miltload: negotiated: %s\n", g_neg_summary);
  }
  c->pflags &= OFFER_PROTO;
  (void)nsym;
  return 0;
}

static const char *mod_action_name(char cmd) {
  switch (cmd) {
  case 'h': return "addheader";
  case 'i': return "insheader";
  case 'm': return "chgheader";
  case 'e': return "chgfrom";
  case '+': return "addrcpt";
  case '-': return "delrcpt";
  case '2': return "addrcpt_par";
  case 'b': return "replbody";
  case 'q': return "quarantine";
  default: return "?";
  }
}

/* Handles one reply frame.  Returns 0 to keep reading frames, -1 if closed. */
static int handle_frame(thr_t *t, conn_t *c, char cmd, const uint8_t *p, size_t n) {
  int ws = c->wait_step;
  t->st.replies++;
  if (ws < 0) { conn_error(t, c, "unsolicited reply '%c' (%zu bytes)", cmd, n); return -1; }
  if (ws == S_OPTNEG) {
    if (cmd != 'O') { conn_error(t, c, "expected OPTNEG reply, got '%c'", cmd); return -1; }
    if (parse_optneg(t, c, p, n) < 0) return -1;
    c->wait_step = -1;
    c->step = S_CONNECT;
    return advance(t, c) < 0 ? -1 : 0;
  }
  int no_data = (cmd == 'c' || cmd == 'a' || cmd == 'r' || cmd == 't' || cmd == 'd' || cmd == 's' ||
                 cmd == 'p' || cmd == '4');
  if (no_data && n != 0) { conn_error(t, c, "reply '%c' followed by %zu data bytes", cmd, n); return -1; }
  int in_conn_stage = (ws == S_CONNECT || ws == S_HELO);

  switch (cmd) {
  case 'p': t->st.progress++; c->t_wait = now_ns(); return 0; /* progress restarts the reply timer */
  case 'q': {
    const char *sv[2];
    if (split_strings(p, n, sv, 2) != 1) { conn_error(t, c, "malformed quarantine reply"); return -1; }
    if (ws == S_EOM && !(c->actions & A_QUARANTINE)) { conn_error(t, c, "quarantine not negotiated"); return -1; }
    t->st.quarantines++;
    return 0; /* Postfix keeps reading for the real reply */
  }
  case 'c':
  case 's':
    if (cmd == 's') {
      if (ws == S_EOM) { conn_error(t, c, "SKIP is not a valid end-of-message reply"); return -1; }
      if (!(c->pflags & P_SKIP)) { conn_error(t, c, "SKIP without negotiated SMFIP_SKIP"); return -1; }
      t->st.skips++;
      /* Postfix skips further events of this type: the remaining headers */
      if (ws == S_HDR) c->hdr_i = c->nhdrs;
    }
    if (ws == S_EOM) { finish_message(t, c, V_CONTINUE, 'c', 1); return advance(t, c) < 0 ? -1 : 0; }
    c->wait_step = -1;
    return advance(t, c) < 0 ? -1 : 0;
  case 'a':
  case 'r':
  case 't':
  case 'd':
  case '4':
  case 'y': {
    int cls;
    if (cmd == 'y') {
      if (n == 0 || p[n - 1] != 0 || memchr(p, 0, n) != p + n - 1) {
        conn_error(t, c, "malformed REPLYCODE payload");
        return -1;
      }
      if (!valid_replycode((const char *)p)) { conn_error(t, c, "malformed reply code \"%s\"", (const char *)p); return -1; }
      snprintf(c->reply, sizeof c->reply, "%s", (const char *)p);
      cls = classify_reply(c->reply);
    } else {
      cls = cmd == 'a' ? V_ACCEPT : cmd == 'r' ? V_REJECT : cmd == 't' ? V_TEMPFAIL : cmd == 'd' ? V_DISCARD : V_SHUTDOWN;
    }
    if (in_conn_stage) {
      /* connection-level verdict: Postfix stops talking to this filter for the session */
      t->st.conn_verdicts++;
      t->st.verify_fail++;
      __atomic_fetch_add(&g_total_proto_err, 1, __ATOMIC_RELAXED);
      if (__atomic_fetch_add(&g_err_printed, 1, __ATOMIC_RELAXED) < 20)
        fprintf(stderr, "miltload: VERIFY MISMATCH connection-level verdict '%c' at %s\n", cmd, S_NAME[ws]);
      close_conn(t, c);
      return -1;
    }
    if (cmd == 'd' && ws < S_MAIL) { conn_error(t, c, "DISCARD at connection stage"); return -1; }
    finish_message(t, c, cls, cmd, ws == S_EOM);
    if (cmd == '4') { close_conn(t, c); return -1; }
    return advance(t, c) < 0 ? -1 : 0;
  }
  case 'h':
  case 'i':
  case 'm':
  case 'e':
  case '+':
  case '-':
  case '2':
  case 'b': {
    if (ws != S_EOM) { conn_error(t, c, "modification '%c' outside end-of-message (at %s)", cmd, S_NAME[ws]); return -1; }
    uint32_t need = cmd == 'h' || cmd == 'i' ? A_ADDHDRS : cmd == 'm' ? A_CHGHDRS : cmd == 'e' ? A_CHGFROM
                  : cmd == '+' ? A_ADDRCPT : cmd == '-' ? A_DELRCPT : cmd == '2' ? A_ADDRCPT_PAR : A_CHGBODY;
    if (!(c->actions & need)) { conn_error(t, c, "%s without negotiated action", mod_action_name(cmd)); return -1; }
    const char *sv[3];
    int k;
    if (cmd == 'i' || cmd == 'm') {
      if (n < 4) { conn_error(t, c, "%s too short", mod_action_name(cmd)); return -1; }
      k = split_strings(p + 4, n - 4, sv, 3);
      if (k != 2) { conn_error(t, c, "%s: expected index+name+value", mod_action_name(cmd)); return -1; }
      if (!sv[0][0]) { conn_error(t, c, "%s: empty header name", mod_action_name(cmd)); return -1; }
    } else if (cmd == 'h') {
      k = split_strings(p, n, sv, 3);
      if (k != 2 || !sv[0][0]) { conn_error(t, c, "addheader: expected name+value"); return -1; }
    } else if (cmd == 'b') {
      k = 0;
    } else {
      k = split_strings(p, n, sv, 3);
      int maxk = (cmd == 'e' || cmd == '2') ? 2 : 1;
      if (k < 1 || k > maxk) { conn_error(t, c, "%s: bad argument count %d", mod_action_name(cmd), k); return -1; }
    }
    t->st.mods[(uint8_t)cmd]++;
    if ((cmd == 'h' || cmd == 'i') && O.expect_header && ci_eq(sv[0], O.expect_header)) c->hdr_seen++;
    return 0;
  }
  default:
    conn_error(t, c, "unexpected filter response '%c' (0x%02x) after %s", cmd, (uint8_t)cmd, S_NAME[ws]);
    return -1;
  }
}

static int on_readable(thr_t *t, conn_t *c) {
  for (;;) {
    b_reserve(&c->in, 65536);
    ssize_t r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      conn_error(t, c, "read: %s", strerror(errno));
      return -1;
    }
    t->st.reads++;
    if (O.quickack && !O.is_unix) { /* diagnostic only: Postfix does not do this */
      int one = 1;
      setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    if (r == 0) {
      conn_error(t, c, "connection closed by filter");
      return -1;
    }
    t->st.bytes_in += (uint64_t)r;
    c->in.len += (size_t)r;
    if (c->in.len < c->in.cap) break; /* drained */
  }
  if (c->trace) trace_frames(c, c->in.p + c->in.off, c->in.len - c->in.off, "<-");
  while (c->in.len - c->in.off >= 4) {
    uint32_t l;
    memcpy(&l, c->in.p + c->in.off, 4);
    l = ntohl(l);
    if (l == 0 || l > MAX_FRAME) { conn_error(t, c, "bad reply frame length %u", l); return -1; }
    if (c->in.len - c->in.off < 4 + (size_t)l) break;
    char cmd = (char)c->in.p[c->in.off + 4];
    const uint8_t *payload = c->in.p + c->in.off + 5;
    c->in.off += 4 + (size_t)l;
    if (handle_frame(t, c, cmd, payload, l - 1) < 0) return -1;
  }
  if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
  else if (c->in.off > 0) {
    memmove(c->in.p, c->in.p + c->in.off, c->in.len - c->in.off);
    c->in.len -= c->in.off;
    c->in.off = 0;
  }
  return 0;
}

static int open_conn(thr_t *t, conn_t *c) {
  static int next_id; /* only for messages */
  if (g_stop || g_err_limit_hit()) return -1;
  if (O.total && __atomic_load_n(&g_next_msg, __ATOMIC_RELAXED) >= O.total) return -1;
  int fd = socket(O.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  if (!O.is_unix && O.nodelay) { /* not Postfix: it keeps Nagle on */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c->in.len = c->in.off = c->out.len = c->out.off = 0;
  c->fd = fd;
  c->id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);
  c->msgs_on_conn = 0;
  c->setup_recorded = 0;
  c->in_msg = 0;
  c->want_out = -1;
  c->t_conn = now_ns();
  c->trace = O.verbose > 1 || (O.verbose && __atomic_exchange_n(&g_trace_done, 1, __ATOMIC_RELAXED) == 0);
  t->st.connects++;
  t->active++;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  c->want_out = 1;
  int r = connect(fd, (struct sockaddr *)&O.sa, O.salen);
  if (r < 0 && errno != EINPROGRESS && errno != EAGAIN) {
    t->st.connect_fail++;
    conn_error(t, c, "connect %s: %s", O.spec, strerror(errno));
    return -1;
  }
  if (r < 0 && errno == EAGAIN) { /* unix socket backlog full: retry later */
    t->st.connect_fail++;
    close_conn(t, c);
    return -2;
  }
  c->connecting = 1;
  c->step = S_OPTNEG;
  c->wait_step = -1;
  /* OPTNEG goes out as soon as the socket is writable */
  size_t s = fr_begin(&c->out, 'O');
  fr_u32(&c->out, SMFI_VERSION_MTA);
  fr_u32(&c->out, OFFER_ACTIONS);
  fr_u32(&c->out, OFFER_PROTO);
  fr_end(&c->out, s);
  c->wait_step = S_OPTNEG;
  c->t_wait = now_ns();
  return 0;
}

static void *thread_main(void *arg) {
  thr_t *t = arg;
  t->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (t->epfd < 0) die("epoll_create1: %s", strerror(errno));
  for (int i = 0; i < t->nconns; i++) {
    t->conns[i].fd = -1;
    t->conns[i].step = S_CLOSED;
    open_conn(t, &t->conns[i]);
  }
  struct epoll_event evs[256];
  uint64_t last_scan = now_ns();
  int retry_pending = 0;
  for (;;) {
    uint64_t tn = now_ns();
    if (tn >= g_deadline) g_stop = 1;
    if (tn >= g_hard_deadline) {
      for (int i = 0; i < t->nconns; i++)
        if (t->conns[i].fd >= 0) conn_error(t, &t->conns[i], "hard deadline reached with message in flight");
      break;
    }
    if (t->active == 0 && !retry_pending) break;
    int n = epoll_wait(t->epfd, evs, 256, retry_pending ? 1 : 50);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (c->fd < 0) continue;
      if (c->connecting && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
          t->st.connect_fail++;
          conn_error(t, c, "connect %s: %s", O.spec, strerror(err));
          continue;
        }
        c->connecting = 0;
        if (flush_out(t, c) < 0) continue;
      } else if ((evs[i].events & EPOLLOUT) && c->out.off < c->out.len) {
        if (flush_out(t, c) < 0) continue;
      }
      if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(t, c);
    }
    tn = now_ns();
    /* reconnect closed slots while budget remains (Postfix: new SMTP session) */
    retry_pending = 0;
    for (int i = 0; i < t->nconns; i++) {
      conn_t *c = &t->conns[i];
      if (c->fd < 0) {
        int r = open_conn(t, c);
        if (r == -2) retry_pending = 1;
      }
    }
    tn = now_ns(); /* after open_conn(), so that t_wait <= tn */
    if (tn - last_scan > 50000000ull) {
      last_scan = tn;
      uint64_t lim = (uint64_t)O.timeout_ms * 1000000ull;
      for (int i = 0; i < t->nconns; i++) {
        conn_t *c = &t->conns[i];
        if (c->fd >= 0 && c->wait_step >= 0 && tn > c->t_wait && tn - c->t_wait > lim) {
          t->st.timeouts++;
          conn_error(t, c, "no reply within %d ms", O.timeout_ms);
        }
      }
    }
  }
  close(t->epfd);
  return NULL;
}

/* --------------------------------------------------------------- report */
static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}
static double pct(const uint64_t *a, size_t n, double p) {
  if (!n) return 0;
  size_t i = (size_t)(p / 100.0 * (double)n);
  if (i >= n) i = n - 1;
  return (double)a[i] / 1e3;
}

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static int parse_socket(const char *spec) {
  memset(&O.sa, 0, sizeof O.sa);
  if (!strncmp(spec, "unix:", 5) || !strncmp(spec, "local:", 6)) {
    const char *path = strchr(spec, ':') + 1;
    struct sockaddr_un *su = (struct sockaddr_un *)&O.sa;
    if (strlen(path) >= sizeof su->sun_path) die("unix socket path too long");
    su->sun_family = AF_UNIX;
    strcpy(su->sun_path, path);
    O.salen = sizeof *su;
    O.is_unix = 1;
    return 0;
  }
  if (!strncmp(spec, "inet:", 5) || !strncmp(spec, "inet6:", 6)) {
    const char *r = strchr(spec, ':') + 1;
    char port[16], host[128];
    const char *at = strchr(r, '@');
    if (!at) die("socket must be inet:PORT@HOST");
    snprintf(port, sizeof port, "%.*s", (int)(at - r), r);
    snprintf(host, sizeof host, "%s", at + 1);
    if (host[0] == '[') { memmove(host, host + 1, strlen(host)); host[strcspn(host, "]")] = 0; }
    int pn = atoi(port);
    if (pn <= 0 || pn > 65535) die("bad port %s", port);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_in *s4 = (struct sockaddr_in *)&O.sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&O.sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
      if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127) die("refusing non-loopback address %s", host);
      s4->sin_family = AF_INET;
      s4->sin_port = htons((uint16_t)pn);
      O.salen = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
      if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr)) die("refusing non-loopback address %s", host);
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons((uint16_t)pn);
      O.salen = sizeof *s6;
    } else {
      die("host must be a loopback IP literal (127.x.x.x or ::1), got %s", host);
    }
    return 0;
  }
  die("socket must be inet:PORT@127.0.0.1, inet6:PORT@::1 or unix:/path");
  return -1;
}

static void usage(void) {
  fprintf(stderr,
"usage: miltload -s SOCKET [options]\n"
"  -s, --socket SPEC        inet:PORT@127.0.0.1 | inet6:PORT@::1 | unix:/path (loopback only)\n"
"  -c, --concurrency N      parallel milter connections (default 1)\n"
"  -m, --per-conn N         messages per connection, ABORT between them; 0 = unlimited (default 10)\n"
"  -n, --messages N         total messages (default 1000; 0 = until --duration)\n"
"  -d, --duration SEC       hard cap on run time; no new message starts after it (default 60, max 3600)\n"
"  -r, --reject-ratio F     fraction of messages with a From domain that has no policy (default 0)\n"
"  -t, --threads N          event-loop threads of the generator (default 1)\n"
"  -T, --timeout MS         per-reply timeout (default 10000)\n"
"      --domains a,b,...    From domains that have a policy (default 4 *.example domains)\n"
"      --bad-domain D       From domain of reject-designed messages (default unlisted-tenant.example)\n"
"      --authserv-id ID     authserv-id of the Authentication-Results header (default relay.bench.example)\n"
"      --expect MODE        policy (default): accept-designed -> continue/accept, reject-designed -> 5xx;\n"
"                           continue: everything -> continue/accept;  none: no verdict check\n"
"      --expect-header NAME every continued/accepted message must get ADDHEADER/INSHEADER NAME\n"
"      --cert-at WHERE      helo: {cert_subject} with the HELO macros, i from DATA on (Postfix 3.7);\n"
"                           rcpt: i and {cert_subject} with RCPT (layout of the upstream miltertest\n"
"                           scripts); none: no {cert_subject} at all (x509 reject path)\n"
"      --no-hdr-macros      do not send the eoh/eom macros before each header/body chunk\n"
"      --body-size BYTES    body chunk size (default 2048)\n"
"      --extra-headers N    add N more Exchange X-MS-* headers (default 0 -> 16 headers)\n"
"      --client-ip IP       client address reported in SMFIC_CONNECT (default 40.107.22.53)\n"
"      --print-policy       print a JSON policy file matching --domains and exit\n"
"      --quickack           TCP only, diagnostic: set TCP_QUICKACK after every read (NOT what Postfix\n"
"                           does; removes the stall caused by the filter's own Nagle at EOM)\n"
"      --nodelay            TCP only, diagnostic: set TCP_NODELAY on the MTA side (Postfix does not)\n"
"      --no-split           send the envelope tail and the first content frame in one write (Postfix\n"
"                           writes them from two processes, smtpd and cleanup)\n"
"      --label TEXT         label echoed on the RESULT line\n"
"  -v, --verbose            print the frames of the first message\n"
"  -q, --quiet              only the RESULT line (and errors)\n"
"exit: 0 ok, 1 protocol errors/timeouts, 2 verdict verification failed, 3 fewer messages than requested\n");
  exit(64);
}

int main(int argc, char **argv) {
  O.conc = 1;
  O.threads = 1;
  O.per_conn = 10;
  O.total = 1000;
  O.duration = 60;
  O.timeout_ms = 10000;
  O.bad_domain = "unlisted-tenant.example";
  O.authserv = "relay.bench.example";
  O.cert_at = CERT_HELO;
  O.hdr_macros = 1;
  O.client_ip = "40.107.22.53";
  O.client_name = "mail-db5eur03on2053.outbound.protection.outlook.com";
  O.helo_name = "EUR03-DB5-obe.outbound.protection.outlook.com";
  O.myhostname = "relay.bench.example";
  O.body_size = 2048;
  O.max_errors = 100;
  O.split = 1;
  const char *domains = "contoso.example,fabrikam.example,northwind.example,tailspin.example";
  int print_policy = 0;

  static const struct option lo[] = {
      {"socket", 1, 0, 's'}, {"concurrency", 1, 0, 'c'}, {"per-conn", 1, 0, 'm'},
      {"messages", 1, 0, 'n'}, {"duration", 1, 0, 'd'}, {"reject-ratio", 1, 0, 'r'},
      {"threads", 1, 0, 't'}, {"timeout", 1, 0, 'T'}, {"domains", 1, 0, 1},
      {"bad-domain", 1, 0, 2}, {"authserv-id", 1, 0, 3}, {"expect", 1, 0, 4},
      {"expect-header", 1, 0, 5}, {"cert-at", 1, 0, 6}, {"no-hdr-macros", 0, 0, 7},
      {"body-size", 1, 0, 8}, {"extra-headers", 1, 0, 9}, {"client-ip", 1, 0, 10},
      {"print-policy", 0, 0, 11}, {"label", 1, 0, 12}, {"verbose", 0, 0, 'v'},
      {"quiet", 0, 0, 'q'}, {"quickack", 0, 0, 13}, {"nodelay", 0, 0, 14}, {"no-split", 0, 0, 15},
      {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "s:c:m:n:d:r:t:T:vqh", lo, NULL)) != -1) {
    switch (ch) {
    case 's': O.spec = optarg; break;
    case 'c': O.conc = atoi(optarg); break;
    case 'm': O.per_conn = atoi(optarg); break;
    case 'n': O.total = strtoull(optarg, NULL, 10); break;
    case 'd': O.duration = atof(optarg); break;
    case 'r': O.reject_ratio = atof(optarg); break;
    case 't': O.threads = atoi(optarg); break;
    case 'T': O.timeout_ms = atoi(optarg); break;
    case 1: domains = optarg; break;
    case 2: O.bad_domain = optarg; break;
    case 3: O.authserv = optarg; break;
    case 4:
      if (!strcmp(optarg, "policy")) O.expect_mode = EXPECT_POLICY;
      else if (!strcmp(optarg, "continue")) O.expect_mode = EXPECT_CONTINUE;
      else if (!strcmp(optarg, "none")) O.expect_mode = EXPECT_NONE;
      else usage();
      break;
    case 5: O.expect_header = optarg; break;
    case 6:
      if (!strcmp(optarg, "helo")) O.cert_at = CERT_HELO;
      else if (!strcmp(optarg, "rcpt")) O.cert_at = CERT_RCPT;
      else if (!strcmp(optarg, "none")) O.cert_at = CERT_NONE;
      else usage();
      break;
    case 7: O.hdr_macros = 0; break;
    case 8: O.body_size = atoi(optarg); break;
    case 9: O.extra_headers = atoi(optarg); break;
    case 10: O.client_ip = optarg; break;
    case 11: print_policy = 1; break;
    case 12: O.label = optarg; break;
    case 13: O.quickack = 1; break;
    case 14: O.nodelay = 1; break;
    case 15: O.split = 0; break;
    case 'v': O.verbose++; break;
    case 'q': O.quiet = 1; break;
    default: usage();
    }
  }
  {
    char *d = strdup(domains), *save = NULL;
    for (char *tok = strtok_r(d, ",", &save); tok && O.ndomains < 64; tok = strtok_r(NULL, ",", &save))
      O.domains[O.ndomains++] = tok;
    if (!O.ndomains) die("--domains is empty");
  }
  if (print_policy) {
    printf("{\n");
    for (int i = 0; i < O.ndomains; i++) {
      char tid[64];
      tenant_id(O.domains[i], tid, sizeof tid);
      printf("  \"%s\": {\n    \"tenant_id\": \"%s\",\n    \"dkim_enabled\": true,\n"
             "    \"dkim_alignment_required\": true\n  }%s\n",
             O.domains[i], tid, i + 1 < O.ndomains ? "," : "");
    }
    printf("}\n");
    return 0;
  }
  if (!O.spec) usage();
  if (O.conc < 1 || O.conc > 10000) die("--concurrency must be 1..10000");
  if (O.threads < 1 || O.threads > 64) die("--threads must be 1..64");
  if (O.threads > O.conc) O.threads = O.conc;
  if (O.per_conn < 0) die("--per-conn must be >= 0");
  if (!(O.duration > 0) || O.duration > 3600) die("--duration must be in (0, 3600]");
  if (O.total > 50000000ull) die("--messages at most 50000000");
  if (O.reject_ratio < 0 || O.reject_ratio > 1) die("--reject-ratio must be within 0..1");
  if (O.timeout_ms < 10) die("--timeout too small");
  if (O.extra_headers < 0 || O.extra_headers > MAXHDRS - 16) die("--extra-headers must be 0..%d", MAXHDRS - 16);
  if (O.body_size < 0 || O.body_size > 1000000) die("--body-size must be 0..1000000");
  O.reject_ppm = (uint64_t)(O.reject_ratio * 1e6 + 0.5);
  parse_socket(O.spec);

  /* Postfix 3.x default macro lists (milter_*_macros) */
  const char *defl[MS_N];
  defl[MS_CONNECT] = "j {daemon_name} {daemon_addr} v _";
  defl[MS_HELO] = O.cert_at == CERT_HELO ? "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"
                                         : "{tls_version} {cipher} {cipher_bits}";
  defl[MS_ENVFROM] = "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}";
  defl[MS_ENVRCPT] = O.cert_at == CERT_RCPT ? "i {rcpt_addr} {rcpt_host} {rcpt_mailer} {cert_subject}"
                                            : "i {rcpt_addr} {rcpt_host} {rcpt_mailer}";
  defl[MS_DATA] = "i";
  defl[MS_EOH] = "i";
  defl[MS_EOM] = "i";
  for (int i = 0; i < MS_N; i++) parse_namelist(&g_macros[i], defl[i]);

  /* ~2 KB CRLF text body */
  g_body = malloc((size_t)O.body_size + 128);
  g_body_len = 0;
  for (int line = 1; g_body_len < (size_t)O.body_size; line++) {
    char l[128];
    int k = snprintf(l, sizeof l, "Line %03d of the quarterly report: revenue, costs and forecast figures =\r\n", line);
    size_t take = (size_t)k;
    if (g_body_len + take > (size_t)O.body_size) take = (size_t)O.body_size - g_body_len;
    memcpy(g_body + g_body_len, l, take);
    g_body_len += take;
  }

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  thr_t *thr = calloc((size_t)O.threads, sizeof *thr);
  int per = O.conc / O.threads, rem = O.conc % O.threads;
  for (int i = 0; i < O.threads; i++) {
    thr[i].id = i;
    thr[i].nconns = per + (i < rem);
    thr[i].conns = calloc((size_t)thr[i].nconns, sizeof(conn_t));
  }
  if (!O.quiet)
    fprintf(stderr,
            "miltload: socket=%s concurrency=%d per-conn=%d messages=%" PRIu64 " duration-cap=%.0fs "
            "reject-ratio=%.3f threads=%d cert-at=%s hdr-macros=%s nodelay=%s split=%s\n",
            O.spec, O.conc, O.per_conn, O.total, O.duration, O.reject_ratio, O.threads,
            O.cert_at == CERT_HELO ? "helo" : O.cert_at == CERT_RCPT ? "rcpt" : "none",
            O.hdr_macros ? "on" : "off", O.nodelay ? "on" : "off", O.split ? "on" : "off");
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  g_t0 = now_ns();
  g_deadline = g_t0 + (uint64_t)(O.duration * 1e9);
  g_hard_deadline = g_deadline + (uint64_t)O.timeout_ms * 1000000ull + 1000000000ull;
  for (int i = 0; i < O.threads; i++) pthread_create(&thr[i].th, NULL, thread_main, &thr[i]);
  for (int i = 0; i < O.threads; i++) pthread_join(thr[i].th, NULL);
  uint64_t t1 = now_ns();
  getrusage(RUSAGE_SELF, &ru1);
  uint64_t tend = g_last_done ? g_last_done : t1;

  /* merge */
  stats_t S;
  memset(&S, 0, sizeof S);
  for (int i = 0; i < O.threads; i++) {
    stats_t *st = &thr[i].st;
    for (size_t j = 0; j < st->nlat; j++) push_lat(&S.lat, &S.nlat, &S.caplat, st->lat[j]);
    for (size_t j = 0; j < st->nclat; j++) push_lat(&S.clat, &S.nclat, &S.capclat, st->clat[j]);
#define ADD(f) S.f += st->f
    ADD(completed); ADD(failed); ADD(hdr_present); ADD(hdr_missing); ADD(qid_mismatch);
    ADD(verify_fail); ADD(proto_err); ADD(connects); ADD(conn_verdicts); ADD(quarantines);
    ADD(skips); ADD(progress); ADD(timeouts); ADD(connect_fail); ADD(frames_sent); ADD(replies);
    ADD(writes); ADD(reads); ADD(bytes_out); ADD(bytes_in);
    for (int k = 0; k < V_NCLASS; k++) { ADD(by_class[k]); ADD(early[k]); ADD(kind_class[0][k]); ADD(kind_class[1][k]); }
    for (int k = 0; k < 256; k++) { ADD(by_letter[k]); ADD(mods[k]); }
    ADD(kind_sent[0]); ADD(kind_sent[1]);
#undef ADD
  }
  qsort(S.lat, S.nlat, sizeof(uint64_t), cmp_u64);
  qsort(S.clat, S.nclat, sizeof(uint64_t), cmp_u64);
  double secs = (double)(tend - g_t0) / 1e9;
  double rate = secs > 0 ? (double)S.completed / secs : 0;
  double mean = 0;
  for (size_t j = 0; j < S.nlat; j++) mean += (double)S.lat[j];
  mean = S.nlat ? mean / (double)S.nlat / 1e3 : 0;
  double ucpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
  double scpu = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;

  /* expectations */
  uint64_t exp_bad = 0, n_started = S.kind_sent[0] + S.kind_sent[1];
  exp_bad = S.kind_sent[K_BAD];
  uint64_t got_reject = S.by_class[V_REJECT];
  int count_ok = 1;
  if (O.expect_mode == EXPECT_POLICY) count_ok = (got_reject == exp_bad) && (S.kind_class[K_BAD][V_REJECT] == exp_bad);
  else if (O.expect_mode == EXPECT_CONTINUE) count_ok = (S.by_class[V_CONTINUE] + S.by_class[V_ACCEPT] == S.completed);
  uint64_t want_bad_total = O.total ? O.total * O.reject_ppm / 1000000u : 0;

  if (!O.quiet) {
    printf("negotiated: %s\n", g_neg_summary[0] ? g_neg_summary : "(never)");
    printf("completed:  %" PRIu64 " messages in %.3f s = %.1f msgs/s  (%" PRIu64 " connections, %" PRIu64 " failed messages)\n",
           S.completed, secs, rate, S.connects, S.failed);
    printf("latency us: p50 %.0f  p90 %.0f  p99 %.0f  max %.0f  mean %.0f   (MAIL..final reply)\n",
           pct(S.lat, S.nlat, 50), pct(S.lat, S.nlat, 90), pct(S.lat, S.nlat, 99),
           S.nlat ? (double)S.lat[S.nlat - 1] / 1e3 : 0, mean);
    printf("conn setup us: p50 %.0f  p99 %.0f   (connect..ready for MAIL, %zu samples)\n",
           pct(S.clat, S.nclat, 50), pct(S.clat, S.nclat, 99), S.nclat);
    printf("verdicts:   continue=%" PRIu64 " accept=%" PRIu64 " reject=%" PRIu64 " tempfail=%" PRIu64
           " discard=%" PRIu64 " shutdown=%" PRIu64 "   (replies: c=%" PRIu64 " a=%" PRIu64 " r=%" PRIu64
           " t=%" PRIu64 " y=%" PRIu64 " d=%" PRIu64 "; before EOM: %" PRIu64 ")\n",
           S.by_class[V_CONTINUE], S.by_class[V_ACCEPT], S.by_class[V_REJECT], S.by_class[V_TEMPFAIL],
           S.by_class[V_DISCARD], S.by_class[V_SHUTDOWN], S.by_letter['c'], S.by_letter['a'],
           S.by_letter['r'], S.by_letter['t'], S.by_letter['y'], S.by_letter['d'],
           S.early[0] + S.early[1] + S.early[2] + S.early[3] + S.early[4] + S.early[5]);
    printf("by design:  accept-designed %" PRIu64 " -> continue/accept %" PRIu64 ", reject %" PRIu64 ", tempfail %" PRIu64
           " | reject-designed %" PRIu64 " -> reject %" PRIu64 ", continue/accept %" PRIu64 ", tempfail %" PRIu64 "\n",
           S.kind_sent[K_GOOD], S.kind_class[K_GOOD][V_CONTINUE] + S.kind_class[K_GOOD][V_ACCEPT],
           S.kind_class[K_GOOD][V_REJECT], S.kind_class[K_GOOD][V_TEMPFAIL], S.kind_sent[K_BAD],
           S.kind_class[K_BAD][V_REJECT], S.kind_class[K_BAD][V_CONTINUE] + S.kind_class[K_BAD][V_ACCEPT],
           S.kind_class[K_BAD][V_TEMPFAIL]);
    printf("mods:       addheader=%" PRIu64 " insheader=%" PRIu64 " chgheader=%" PRIu64 " other=%" PRIu64
           " quarantine=%" PRIu64 " progress=%" PRIu64 " skip=%" PRIu64 "\n",
           S.mods['h'], S.mods['i'], S.mods['m'],
           S.mods['e'] + S.mods['+'] + S.mods['-'] + S.mods['2'] + S.mods['b'], S.quarantines, S.progress, S.skips);
    if (O.expect_header)
      printf("header:     '%s' present on %" PRIu64 " continued/accepted messages, missing on %" PRIu64 "\n",
             O.expect_header, S.hdr_present, S.hdr_missing);
    printf("checks:     expect=%s  reject-designed sent=%" PRIu64 " (planned %" PRIu64 " of %" PRIu64 ") rejected=%" PRIu64
           " -> %s; verify mismatches=%" PRIu64 " qid mismatches=%" PRIu64 " protocol errors=%" PRIu64
           " timeouts=%" PRIu64 " conn-level verdicts=%" PRIu64 "\n",
           O.expect_mode == EXPECT_POLICY ? "policy" : O.expect_mode == EXPECT_CONTINUE ? "continue" : "none",
           exp_bad, want_bad_total, O.total, got_reject, count_ok ? "OK" : "MISMATCH", S.verify_fail,
           S.qid_mismatch, S.proto_err, S.timeouts, S.conn_verdicts);
    printf("wire:       %.1f frames/msg sent, %.1f replies/msg, %.1f writes/msg, %.1f reads/msg, %.0f B/msg out\n",
           S.completed ? (double)S.frames_sent / (double)S.completed : 0,
           S.completed ? (double)S.replies / (double)S.completed : 0,
           S.completed ? (double)S.writes / (double)S.completed : 0,
           S.completed ? (double)S.reads / (double)S.completed : 0,
           S.completed ? (double)S.bytes_out / (double)S.completed : 0);
    printf("generator:  cpu user %.2f s + sys %.2f s = %.1f us/msg  (%.0f%% of one core)\n", ucpu, scpu,
           S.completed ? (ucpu + scpu) * 1e6 / (double)S.completed : 0, secs > 0 ? (ucpu + scpu) * 100 / secs : 0);
  }
  int rc = 0;
  if (S.proto_err || S.timeouts || S.connect_fail) rc = 1;
  else if (S.verify_fail || !count_ok) rc = 2;
  else if (O.total && S.completed < O.total) rc = 3;
  printf("RESULT label=%s conc=%d per_conn=%d msgs=%" PRIu64 " secs=%.3f rate=%.1f p50_us=%.0f p90_us=%.0f "
         "p99_us=%.0f max_us=%.0f mean_us=%.0f continue=%" PRIu64 " accept=%" PRIu64 " reject=%" PRIu64
         " tempfail=%" PRIu64 " other=%" PRIu64 " reject_designed=%" PRIu64 " hdr_missing=%" PRIu64
         " verify_fail=%" PRIu64 " proto_err=%" PRIu64 " conns=%" PRIu64 " conn_p50_us=%.0f gen_cpu_s=%.3f "
         "gen_us_per_msg=%.1f conn_p99_us=%.0f rc=%d\n",
         O.label ? O.label : "-", O.conc, O.per_conn, S.completed, secs, rate, pct(S.lat, S.nlat, 50),
         pct(S.lat, S.nlat, 90), pct(S.lat, S.nlat, 99), S.nlat ? (double)S.lat[S.nlat - 1] / 1e3 : 0, mean,
         S.by_class[V_CONTINUE], S.by_class[V_ACCEPT], S.by_class[V_REJECT], S.by_class[V_TEMPFAIL],
         S.by_class[V_DISCARD] + S.by_class[V_SHUTDOWN], exp_bad, S.hdr_missing, S.verify_fail, S.proto_err,
         S.connects, pct(S.clat, S.nclat, 50), ucpu + scpu,
         S.completed ? (ucpu + scpu) * 1e6 / (double)S.completed : 0, pct(S.clat, S.nclat, 99), rc);
  (void)n_started;
  return rc;
}
