#!/usr/bin/env bash
# Debian packages the tests use: real curl, openssl and ssh as clients, Go with
# hashicorp/yamux for the reference peer, QEMU and friends for the provisioner,
# nginx/haproxy/wrk for the bench's own correctness test, chromium for the status
# page's browser test (driven by playwright-core). Installed when run as
# root; otherwise this stops with the exact apt-get line. Tests never skip
# because a tool is missing.
set -euo pipefail
root=$(dirname "$0")/..
"$root/scripts/debian-prereqs.sh" "npm test" \
  curl=curl openssl=openssl ssh=openssh-client ssh-keygen=openssh-client \
  go=golang-go /usr/share/gocode/src/github.com/hashicorp/yamux/session.go=golang-github-hashicorp-yamux-dev \
  qemu-system-x86_64=qemu-system-x86 qemu-img=qemu-utils /bin/busybox=busybox-static \
  genisoimage=genisoimage dropbear=dropbear-bin dropbearkey=dropbear-bin cpio=cpio \
  nginx=nginx-light haproxy=haproxy wrk=wrk /usr/bin/chromium=chromium

# Build the reference yamux peer once, ahead of the tests (test/helpers/yamuxref.ts
# reuses this binary; building it inside a test would eat into that test's timeout).
yamuxref_bin="${TMPDIR:-/tmp}/capsul-yamuxref/yamuxref"
if [ ! -x "$yamuxref_bin" ]; then
  shared="$root/../shared/tools/yamuxref"
  if [ ! -f "$shared/build.sh" ]; then
    echo "npm test needs ../shared/tools/yamuxref beside the repository (the reference yamux peer)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$yamuxref_bin")"
  sh "$shared/build.sh" "$yamuxref_bin.tmp.$$" >&2 && mv "$yamuxref_bin.tmp.$$" "$yamuxref_bin"
fi
