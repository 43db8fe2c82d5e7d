#!/usr/bin/env bash
# Builds a container base image rootfs from Debian packages only (no registry): a tarball that
# `podman import` turns into an image that the Dockerfiles take as PYTHON_IMAGE.
#
#   hack/debian-base.sh SUITE OUTPUT.tar PACKAGE...
#
# minbase (dpkg, apt, coreutils, bash, ...) plus the packages named, without Recommends; docs,
# man pages and translations are left out like the slim images do (copyright files are kept;
# man1/ stays as an empty folder because openjdk's postinst links its man page there).
# The mirror is the single Debian host the build machines can reach; MIRROR overrides it.
# elastiserve.testing.images hashes this file into the image cache key: change it and the
# bases (and images) are rebuilt.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 SUITE OUTPUT.tar [PACKAGE...]" >&2
  exit 2
fi
suite=$1 output=$2
shift 2
mirror=${MIRROR:-http://deb.debian.org}
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
include=$(IFS=,; echo "$*")
tmp="$output.part"
trap 'rm -f "$tmp"' EXIT
trap 'exit 143' TERM INT  # so that the EXIT trap also runs when the build is stopped
mmdebstrap \
  --variant=minbase \
  --format=tar \
  ${include:+--include="$include"} \
  --aptopt='Acquire::Retries "3"' \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --setup-hook='mkdir -p "$1"/usr/share/man/man1' \
  --customize-hook='rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/cache/ldconfig/aux-cache' \
  --customize-hook='rm -f "$1"/etc/machine-id && touch "$1"/etc/machine-id' \
  "$suite" "$tmp" \
  "deb $mirror/debian $suite main" \
  "deb $mirror/debian $suite-updates main" \
  "deb $mirror/debian-security $suite-security main"
mv -f "$tmp" "$output"
trap - EXIT
