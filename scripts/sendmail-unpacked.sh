#!/usr/bin/env bash
# Unpacks Debian's Sendmail for the e2e tests without installing it
# (installing sendmail-bin would remove Postfix): apt-get download the .debs
# into a cache folder outside the repository and dpkg-deb -x them there.
#   sendmail-unpacked.sh [DIR]    (default /var/cache/exota-milter-e2e/sendmail)
# Leaves DIR/root/usr/libexec/sendmail/sendmail and DIR/root/usr/share/sendmail/cf.
# Run as root (or with sudo) on Debian 12; does nothing when DIR/root is there.
set -euo pipefail
dir=${1:-/var/cache/exota-milter-e2e/sendmail}
if [ -x "$dir/root/usr/libexec/sendmail/sendmail" ] && [ -f "$dir/root/usr/share/sendmail/cf/m4/cf.m4" ]; then
  echo "sendmail-unpacked.sh: $dir/root is there"
  exit 0
fi
mkdir -p "$dir/debs"
rm -rf "$dir/root.new"
cd "$dir/debs"
apt-get download sendmail-bin sendmail-base sendmail-cf 2>/dev/null || { apt-get update -qq && apt-get download sendmail-bin sendmail-base sendmail-cf; }
for deb in sendmail-bin_*.deb sendmail-base_*.deb sendmail-cf_*.deb; do dpkg-deb -x "$deb" "$dir/root.new"; done
rm -rf "$dir/root"
mv "$dir/root.new" "$dir/root"
echo "sendmail-unpacked.sh: Sendmail unpacked in $dir/root"
