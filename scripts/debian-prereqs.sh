#!/usr/bin/env bash
# Usage: scripts/debian-prereqs.sh WHAT CHECK=PACKAGE...
# CHECK is a command name (looked up in PATH, /usr/sbin, /sbin) or an absolute
# path that must exist (a glob needs one match: /usr/lib/postgresql/*/bin/initdb).
# As root, installs the packages whose check fails; otherwise stops with the
# exact apt-get line to run. Never skips silently.
set -euo pipefail
what=$1; shift
missing=()
for pair in "$@"; do
  check=${pair%%=*}; pkg=${pair#*=}
  if [[ $check == /* ]]; then
    compgen -G "$check" >/dev/null || missing+=("$pkg")
  else
    command -v "$check" >/dev/null 2>&1 || [ -x "/usr/sbin/$check" ] || [ -x "/sbin/$check" ] || missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
  echo "$what prerequisites: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >&2
else
  echo "$what needs Debian packages that are missing. Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y $pkgs" >&2
  exit 1
fi
