#!/usr/bin/env bash
# Installs the Debian packages the tests need, and Java 17 for TorchServe when no java is on PATH.
# A no-op (a few hundred milliseconds) when everything is present.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v java >/dev/null 2>&1; then
  missing+=("openjdk-17-jre-headless")
fi
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postinst may start a system prometheus where an init system exists; tests start their
# own on free ports, so a system one is only noise, never a dependency.
