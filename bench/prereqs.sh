#!/usr/bin/env bash
# Debian packages the bench needs. As root it installs the missing ones; otherwise it
# stops with the exact apt-get line.
set -euo pipefail
declare -A NEED=([nginx]=nginx-light [haproxy]=haproxy [wrk]=wrk [curl]=curl [openssl]=openssl [go]=golang-go)
declare -A NEED_FILES=([/usr/share/gocode/src/github.com/hashicorp/yamux/session.go]=golang-github-hashicorp-yamux-dev)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEED[$cmd]}")
done
for f in "${!NEED_FILES[@]}"; do [ -e "$f" ] || missing+=("${NEED_FILES[$f]}"); done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
  echo "bench prerequisites: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >&2
  # Debian starts the nginx/haproxy services on install where an init system runs;
  # the bench starts its own instances and needs none of them.
else
  echo "The bench needs Debian packages that are missing. Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y $pkgs" >&2
  exit 1
fi
