#!/usr/bin/env bash
# Installs the Debian packages the tests use (real curl, openssl, ssh, Go for the
# reference yamux peer, QEMU and friends for the provisioner), when run as root.
# Otherwise it stops with the exact apt-get line to run. Tests never skip
# because a tool is missing.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [curl]=curl
  [openssl]=openssl
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [go]=golang-go
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [busybox]=busybox-static
  [genisoimage]=genisoimage
  [dropbear]=dropbear-bin
  [dpkg-deb]=dpkg
  [cpio]=cpio
)
# packages checked by file rather than command
declare -A NEED_FILES=(
  [/usr/share/gocode/src/github.com/hashicorp/yamux/session.go]=golang-github-hashicorp-yamux-dev
)

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/bin/$cmd" ] || missing+=("${NEED[$cmd]}")
done
for f in "${!NEED_FILES[@]}"; do
  [ -e "$f" ] || missing+=("${NEED_FILES[$f]}")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
  echo "test prerequisites: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >&2
else
  echo "The tests need Debian packages that are missing. Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y $pkgs" >&2
  exit 1
fi
