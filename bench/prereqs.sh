#!/usr/bin/env bash
# Debian packages the bench needs (installed when root, else the exact apt-get line).
# Debian may start nginx/haproxy services on install; the bench runs its own instances.
exec "$(dirname "$0")/../scripts/debian-prereqs.sh" "the bench" \
  nginx=nginx-light haproxy=haproxy wrk=wrk curl=curl openssl=openssl go=golang-go \
  /usr/share/gocode/src/github.com/hashicorp/yamux/session.go=golang-github-hashicorp-yamux-dev
