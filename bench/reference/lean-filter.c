/*
 * The C bar of `npm run bench:cbar`: a libmilter filter that negotiates
 * exactly like exota-milter (src/filter.ts, filterNeeds) and does nothing
 * else, so it costs what libmilter costs for exota-milter's protocol:
 *
 *   - actions ADDHDRS | CHGHDRS (| SETSYMLIST when offered);
 *   - skips RCPT, body, end of headers, unknown commands and (unix socket)
 *     DATA: NORCPT NOBODY NOEOH NOUNKNOWN [NODATA];
 *   - no reply to anything but end of message: NR_CONN NR_HELO NR_MAIL
 *     NR_RCPT NR_HDR NR_EOH NR_BODY NR_UNKN [NR_DATA]; on TCP DATA is
 *     answered (exota-milter does so against Postfix's Nagle stall);
 *   - macros per stage: {cert_subject} {cert_issuer} {verify} at HELO, i at
 *     MAIL and at end of message;
 *   - one reply per message: CONTINUE at end of message.
 *
 * bench/cbar.ts compares both negotiations before measuring and stops when
 * they differ: keep this file in step with filterNeeds.
 *
 *   cc -O2 -Wall -o lean-filter lean-filter.c -lmilter -lpthread
 *   lean-filter -p SOCKET
 *
 *   -p  where to listen, as libmilter spells it (unix:/path, inet:PORT@HOST)
 *
 * Needs Debian's libmilter-dev.
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WISHES                                                                                              \
  (SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA | SMFIP_NR_CONN |             \
   SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_HDR | SMFIP_NR_EOH |             \
   SMFIP_NR_BODY | SMFIP_NR_UNKN)

/* exota-milter's TCP wishes: DATA is sent and answered. */
static unsigned long wishes = WISHES;

/* The agreed protocol flags of a connection: a callback whose step got NR_* must not reply. */
static sfsistat quiet(SMFICTX *ctx, unsigned long flag) {
  unsigned long *agreed = smfi_getpriv(ctx);
  return agreed != NULL && (*agreed & flag) != 0 ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long actions, unsigned long steps, unsigned long unused2,
                             unsigned long unused3, unsigned long *our_actions, unsigned long *our_steps,
                             unsigned long *our2, unsigned long *our3) {
  (void)unused2;
  (void)unused3;
  *our_actions = SMFIF_ADDHDRS | SMFIF_CHGHDRS;
  if ((actions & SMFIF_SETSYMLIST) != 0) {
    *our_actions |= SMFIF_SETSYMLIST;
    if (smfi_setsymlist(ctx, SMFIM_HELO, "{cert_subject} {cert_issuer} {verify}") != MI_SUCCESS ||
        smfi_setsymlist(ctx, SMFIM_ENVFROM, "i") != MI_SUCCESS || smfi_setsymlist(ctx, SMFIM_EOM, "i") != MI_SUCCESS)
      return SMFIS_REJECT;
  }
  *our_steps = wishes & steps;
  *our2 = 0;
  *our3 = 0;
  /* The flags agreed on this connection (libmilter frees nothing it did not allocate: on_close clears it). */
  unsigned long *agreed = malloc(sizeof *agreed);
  if (agreed == NULL) return SMFIS_TEMPFAIL;
  *agreed = *our_steps;
  smfi_setpriv(ctx, agreed);
  return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) {
  (void)host;
  (void)addr;
  return quiet(ctx, SMFIP_NR_CONN);
}

static sfsistat on_helo(SMFICTX *ctx, char *name) {
  (void)name;
  return quiet(ctx, SMFIP_NR_HELO);
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv) {
  (void)argv;
  return quiet(ctx, SMFIP_NR_MAIL);
}

static sfsistat on_data(SMFICTX *ctx) { return quiet(ctx, SMFIP_NR_DATA); }

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) {
  (void)name;
  (void)value;
  return quiet(ctx, SMFIP_NR_HDR);
}

static sfsistat on_eom(SMFICTX *ctx) {
  (void)ctx;
  return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx) {
  free(smfi_getpriv(ctx));
  smfi_setpriv(ctx, NULL);
  return SMFIS_CONTINUE;
}

int main(int argc, char **argv) {
  const char *socket_spec = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "p:")) != -1) {
    if (opt == 'p') socket_spec = optarg;
    else {
      fprintf(stderr, "usage: %s -p SOCKET\n", argv[0]);
      return 2;
    }
  }
  if (socket_spec == NULL) {
    fprintf(stderr, "usage: %s -p SOCKET\n", argv[0]);
    return 2;
  }
  if (strncmp(socket_spec, "inet:", 5) == 0 || strncmp(socket_spec, "inet6:", 6) == 0)
    wishes = WISHES & ~(SMFIP_NODATA | SMFIP_NR_DATA);
  struct smfiDesc desc;
  memset(&desc, 0, sizeof desc);
  desc.xxfi_name = "lean-filter";
  desc.xxfi_version = SMFI_VERSION;
  desc.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS;
  desc.xxfi_negotiate = on_negotiate;
  desc.xxfi_connect = on_connect;
  desc.xxfi_helo = on_helo;
  desc.xxfi_envfrom = on_envfrom;
  desc.xxfi_data = on_data;
  desc.xxfi_header = on_header;
  desc.xxfi_eom = on_eom;
  desc.xxfi_close = on_close;
  /* A stale unix socket file from an earlier run would make listen fail. */
  if (strncmp(socket_spec, "unix:", 5) == 0) unlink(socket_spec + 5);
  else if (strncmp(socket_spec, "local:", 6) == 0) unlink(socket_spec + 6);
  if (smfi_setconn((char *)socket_spec) == MI_FAILURE || smfi_setbacklog(512) == MI_FAILURE ||
      smfi_settimeout(30) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
    fprintf(stderr, "lean-filter: libmilter set-up failed for %s\n", socket_spec);
    return 1;
  }
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
