#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to (real peers, not mocks):
#   miltertest   the milter client from OpenDKIM, driven by Lua scripts
#   python3      plays systemd for the socket-activation tests
#   slapd, ldap-utils   a throwaway OpenLDAP server for the LDAP backend tests
#   systemd, procps     systemd-analyze verify for the unit files; kill for ExecReload
#   postfix      the MTA of the end-to-end chain (a private instance in a temp folder)
#   opendkim     milter 1 of that chain: DKIM verify, keys from a file
#   swaks, libnet-ssleay-perl   the SMTP client playing Exchange Online (STARTTLS, client certificate)
#   python3-dkim   dkimsign, to sign the test messages
#   openssl      throwaway CA, certificates and DKIM keys
#   dkimpy-milter, rspamd   the other DKIM verifiers of the e2e chain (private instances)
#   m4           builds the e2e Sendmail's sendmail.cf; Sendmail itself is only unpacked
#                (installing sendmail-bin would remove Postfix): scripts/sendmail-unpacked.sh
#   man-db, groff-base, mandoc   render and lint the man page (man -l, groff -ww, mandoc -T lint)
#   qemu-user, libc6-arm64-cross, libstdc++6-arm64-cross   run the arm64 release executable here
#   lintian, adduser   check the Debian packages; install one (its postinst calls adduser)
# Run as root (or with sudo) on Debian 12.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps.sh: run as root, e.g. sudo $0" >&2
  exit 1
fi
# slapd must not ask for a directory of its own: the tests start their own.
echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
# Nor postfix: the e2e tests run their own instance, /etc/postfix stays unconfigured.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Their postinst scripts would start system daemons (rspamd, dkimpy-milter,
# slapd, ...) where no service manager stops it: the tests run their own
# instances on free loopback ports, so keep the system ones from starting.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# test-deps.sh: no daemon starts while it installs\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
"$(dirname "$0")/apt-install.sh" test-deps.sh \
  miltertest python3 slapd ldap-utils systemd procps postfix opendkim swaks libnet-ssleay-perl python3-dkim openssl m4 \
  man-db groff-base mandoc dkimpy-milter rspamd \
  qemu-user libc6-arm64-cross libstdc++6-arm64-cross lintian adduser
"$(dirname "$0")/sendmail-unpacked.sh"
