#!/usr/bin/env bash
# Debian packages the tests use: real curl, openssl and ssh as clients, Go with
# hashicorp/yamux for the reference peer, QEMU and friends for the provisioner
# (passt's pasta for the VMs' network, iproute2 for the tests' network namespaces),
# nginx/haproxy/wrk for the bench's own correctness test, mmdebstrap and the
# disk tools for the real Debian image (scripts/build-debian-image.sh, built by
# test/helpers/debianimage.ts inside its test), pebble (an RFC 8555 test CA, with
# pebble-challtestsrv as its DNS) for the ACME tests, chromium for the status
# page's browser test (driven by playwright-core), systemd, util-linux and procps
# for deploy/*.service (test/systemd.test.ts needs no running systemd;
# test/systemd-run.test.ts boots one in namespaces, which needs root), PostgreSQL
# for the state store's second dialect (throwaway clusters made with initdb and
# pg_ctl, which Debian keeps in /usr/lib/postgresql/N/bin).
# Installed when run as root; otherwise this stops with the exact apt-get line.
# Tests never skip because a tool is missing.
set -euo pipefail
root=$(dirname "$0")/..
"$root/scripts/debian-prereqs.sh" "npm test" \
  curl=curl openssl=openssl ssh=openssh-client ssh-keygen=openssh-client \
  go=golang-go /usr/share/gocode/src/github.com/hashicorp/yamux/session.go=golang-github-hashicorp-yamux-dev \
  qemu-system-x86_64=qemu-system-x86 qemu-img=qemu-utils /bin/busybox=busybox-static \
  genisoimage=genisoimage dropbear=dropbear-bin dropbearkey=dropbear-bin cpio=cpio \
  pasta=passt unshare=util-linux prlimit=util-linux nsenter=util-linux ip=iproute2 ss=iproute2 \
  nginx=nginx-light haproxy=haproxy wrk=wrk /usr/bin/chromium=chromium \
  mmdebstrap=mmdebstrap sfdisk=fdisk mkfs.ext4=e2fsprogs \
  /usr/share/keyrings/debian-archive-keyring.gpg=debian-archive-keyring \
  pebble=pebble pebble-challtestsrv=pebble \
  systemd-analyze=systemd /lib/systemd/systemd-journald=systemd pgrep=procps \
  '/usr/lib/postgresql/*/bin/initdb=postgresql' '/usr/lib/postgresql/*/bin/pg_ctl=postgresql'

# Build the Go peers ahead of the tests (test/helpers/yamuxref.ts and the bench reuse
# these binaries; a cold build inside a test would eat into that test's timeout). They
# are cached outside the repository, keyed by a hash of their sources.
"$root/scripts/build-go-peer.sh" "$root/test/interop/yamuxpeer" >/dev/null
"$root/scripts/build-go-peer.sh" "$root/bench/peers/gopeer" >/dev/null
