#!/usr/bin/env bash
# Usage: scripts/build-go-peer.sh DIR
# Builds the Go program in DIR (test/interop/yamuxpeer, bench/peers/gopeer) with
# Debian's golang-go and golang-github-hashicorp-yamux-dev in GOPATH mode: nothing is
# downloaded. Prints the binary's path as the last line of stdout.
#
# The binary lives outside the repository, in ${TMPDIR:-/tmp}/capsul-go-peers/, under
# a name keyed by a hash of DIR's *.go files and the Go version, so editing a source
# rebuilds and an unchanged tree reuses the binary (a cold build takes ~30-60 s on
# 2 cores, mostly crypto/tls; a cached one costs a sha256sum). Builds go to a
# temporary name and are renamed into place, so parallel test processes never run
# half a binary.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "$1" && pwd)
name=$(basename "$src")
yamux_src=/usr/share/gocode/src/github.com/hashicorp/yamux

"$root/scripts/debian-prereqs.sh" "building $name" go=golang-go "$yamux_src/session.go=golang-github-hashicorp-yamux-dev"

shopt -s nullglob
sources=("$src"/*.go)
[ ${#sources[@]} -gt 0 ] || { echo "no .go files in $src" >&2; exit 1; }
key=$( { go version; for f in "${sources[@]}"; do echo "== $(basename "$f")"; cat "$f"; done; } | sha256sum | cut -c1-16)

cache=${TMPDIR:-/tmp}/capsul-go-peers
out="$cache/$name-$key/$name"
if [ ! -x "$out" ]; then
  mkdir -p "$(dirname "$out")" "$cache/gopath"
  export GO111MODULE=off GOFLAGS= GOPATH="/usr/share/gocode:$cache/gopath"
  export GOCACHE=${GOCACHE:-$cache/gocache}
  tmp="$out.$$.tmp"
  (cd "$src" && go vet . && go build -trimpath -o "$tmp" .) >&2
  mv -f "$tmp" "$out"
  echo "built $name from $src" >&2
fi
echo "$out"
