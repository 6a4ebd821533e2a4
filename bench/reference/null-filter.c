/*
 * The reference of `npm run bench`: a libmilter filter that decides nothing.
 * It reads the headers and adds one header at end of message, so it costs
 * what libmilter itself costs per message: the floor for any libmilter
 * filter on the machine.
 *
 *   cc -O2 -Wall -o null-filter null-filter.c -lmilter -lpthread
 *   null-filter -p SOCKET [-n]
 *
 *   -p  where to listen, as libmilter spells it (unix:/path, inet:PORT@HOST)
 *   -n  ask for no reply per header (SMFIP_NR_HDR) and skip every step it
 *       does not use: what the protocol allows a filter that needs only the
 *       headers
 *
 * Needs Debian's libmilter-dev.
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Per-connection flag (libmilter's private pointer): NR_HDR was agreed. */
static char no_header_reply;

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) {
  (void)name;
  (void)value;
  /* Once NR_HDR is agreed, libmilter wants NOREPLY from every header call. */
  return smfi_getpriv(ctx) == &no_header_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx) {
  const char *queue_id = smfi_getsymval(ctx, "i");
  char value[200];
  snprintf(value, sizeof value, "null.bench.example; queue_id=%s", queue_id != NULL ? queue_id : "none");
  return smfi_addheader(ctx, "X-Null-Milter", value) == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}

static sfsistat on_close(SMFICTX *ctx) {
  smfi_setpriv(ctx, NULL);
  return SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long actions, unsigned long steps, unsigned long unused2,
                             unsigned long unused3, unsigned long *our_actions, unsigned long *our_steps,
                             unsigned long *our2, unsigned long *our3) {
  (void)unused2;
  (void)unused3;
  if ((steps & SMFIP_NR_HDR) == 0) return SMFIS_ALL_OPTS;
  *our_actions = actions & SMFIF_ADDHDRS;
  *our_steps = steps & (SMFIP_NR_HDR | SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT |
                        SMFIP_NODATA | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN);
  *our2 = 0;
  *our3 = 0;
  smfi_setpriv(ctx, &no_header_reply);
  return SMFIS_CONTINUE;
}

int main(int argc, char **argv) {
  const char *socket_spec = NULL;
  int no_reply = 0;
  int opt;
  while ((opt = getopt(argc, argv, "p:n")) != -1) {
    if (opt == 'p') socket_spec = optarg;
    else if (opt == 'n') no_reply = 1;
    else {
      fprintf(stderr, "usage: %s -p SOCKET [-n]\n", argv[0]);
      return 2;
    }
  }
  if (socket_spec == NULL) {
    fprintf(stderr, "usage: %s -p SOCKET [-n]\n", argv[0]);
    return 2;
  }
  struct smfiDesc desc;
  memset(&desc, 0, sizeof desc);
  desc.xxfi_name = "null-filter";
  desc.xxfi_version = SMFI_VERSION;
  desc.xxfi_flags = SMFIF_ADDHDRS;
  desc.xxfi_header = on_header;
  desc.xxfi_eom = on_eom;
  if (no_reply) {
    desc.xxfi_negotiate = on_negotiate;
    desc.xxfi_close = on_close;
  }
  /* A stale unix socket file from an earlier run would make listen fail. */
  if (strncmp(socket_spec, "unix:", 5) == 0) unlink(socket_spec + 5);
  else if (strncmp(socket_spec, "local:", 6) == 0) unlink(socket_spec + 6);
  /* 1,000 connections arrive within a second in the idle-memory row. */
  if (smfi_setconn((char *)socket_spec) == MI_FAILURE || smfi_setbacklog(512) == MI_FAILURE ||
      smfi_settimeout(30) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
    fprintf(stderr, "null-filter: libmilter set-up failed for %s\n", socket_spec);
    return 1;
  }
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
