#!/bin/sh
# .ci/deps.sh - install the Debian packages lora needs to build and test, if any
# are missing.  Uses sudo when not root.  Safe to run again: it does nothing
# when everything is there.
set -e
PKGS="make gcc pkg-config libc6-dev libarchive-dev libssl-dev libcjson-dev libopenblas-dev
      liblapacke-dev libpcre2-dev libcurl4-openssl-dev openssh-client tar coreutils groff-base jq
      docker-registry apache2-utils skopeo curl"
# Optional tools the tests use when present (rsvg-convert for loss plots);
# installed where the archive has them.
OPT_PKGS="librsvg2-bin"
missing=""
for p in $PKGS $OPT_PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
for p in $OPT_PKGS; do
	$SUDO apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 ||
		echo "note: optional package $p not installed; tests needing it will say so" >&2
done
