#!/usr/bin/env bash
# Builds capsul's tiny test VM image offline, from Debian packages only:
#   OUTDIR/kernel      the Debian kernel (linux-image-amd64), unpacked with dpkg-deb -x
#   OUTDIR/initrd      a busybox-static initramfs: virtio modules loaded in dependency
#                      order, cidata seed applied (hostname, SSH keys), dropbear on 22,
#                      busybox httpd on 80, openssl s_server on 443 (self-signed cert
#                      for the hostname from the seed); qemu-ga on the virtio-serial
#                      port org.qemu.guest_agent.0 when the VM has one, and ext4 (which
#                      mounts ext2; crc32c_generic, which ext4 asks the crypto API for
#                      by name) so a test can put a filesystem on the blank disk
#   OUTDIR/cmdline     the kernel command line the image wants
#   OUTDIR/SHA256SUMS  checksums of the above
# Usage: scripts/build-test-image.sh OUTDIR
# Boots in seconds under TCG; the guest has no disk root, everything runs from RAM.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$1

NEEDED_PKGS="qemu-system-x86 qemu-utils busybox-static genisoimage dropbear-bin openssl openssh-client qemu-guest-agent"
NEEDED_CMDS="qemu-system-x86_64 qemu-img genisoimage dropbear dropbearkey openssl ssh ssh-keygen dpkg-deb apt-get ldd gzip qemu-ga"
missing=""
for c in $NEEDED_CMDS; do
  command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -x /bin/busybox ] || missing="$missing busybox(static)"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "build-test-image: installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # shellcheck disable=SC2086
    apt-get install -y -q $NEEDED_PKGS >&2
  else
    echo "build-test-image: missing:$missing. Run as root:" >&2
    echo "  apt-get update && apt-get install -y $NEEDED_PKGS" >&2
    exit 1
  fi
fi
if ! file -L /bin/busybox 2>/dev/null | grep -q "statically linked" && ! ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
  echo "build-test-image: /bin/busybox is not static; install busybox-static" >&2
  exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# --- kernel ---------------------------------------------------------------
# linux-image-amd64 is a metapackage; its first dependency names the real kernel.
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
  echo "build-test-image: cannot resolve linux-image-amd64 (run apt-get update)" >&2
  exit 1
fi
(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || {
  echo "build-test-image: apt-get download $KPKG failed" >&2
  exit 1
}
mkdir "$WORK/k"
dpkg-deb -x "$WORK"/"$KPKG"_*.deb "$WORK/k"
KVER=$(ls "$WORK/k/lib/modules" | head -n1)
MODDIR="$WORK/k/lib/modules/$KVER"

# --- initramfs root -------------------------------------------------------
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,root/.ssh,run,var/run,www,lib/modules,mnt/seed,mnt/data,mnt/keys,etc/dropbear,usr/lib/ssl}
cp /bin/busybox "$R/bin/busybox"

# Modules: the ones we name plus whatever each declares in its modinfo
# `depends=`, dependencies first. Modules in this kernel are uncompressed .ko,
# or .ko.xz on some builds; both are handled.
declare -A SEEN=()
ORDER=()
# File names may spell "_" as "-" (virtio-rng.ko holds module virtio_rng).
modpath() { local g=${1//_/[-_]}; find "$MODDIR" -name "$g.ko" -o -name "$g.ko.xz" | head -n1; }
moddeps() {
  local f=$1
  case "$f" in
    *.xz) xz -dc "$f" ;;
    *) cat "$f" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}
addmod() {
  local m=${1//-/_} f d
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  f=$(modpath "$m")
  if [ -z "$f" ]; then
    echo "build-test-image: module $m not found in $KVER" >&2
    exit 1
  fi
  for d in $(moddeps "$f"); do addmod "$d"; done
  ORDER+=("$m")
  case "$f" in
    *.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
}
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         failover net_failover virtio_net virtio_blk cdrom isofs virtio_rng button evdev \
         virtio_console ext4 crc32c_generic; do
  addmod "$m"
done
printf '%s\n' "${ORDER[@]}" >"$R/lib/modules/order"

# Dynamically linked programs with their libraries, found by ldd.
copybin() {
  local src=$1 dst=$2 lib
  cp "$src" "$R$dst"
  for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
  done
}
copybin "$(command -v dropbear || echo /usr/sbin/dropbear)" /sbin/dropbear
copybin "$(command -v openssl)" /bin/openssl
copybin "$(command -v qemu-ga || echo /usr/sbin/qemu-ga)" /sbin/qemu-ga
[ -f /usr/lib/ssl/openssl.cnf ] && cp -L /usr/lib/ssl/openssl.cnf "$R/usr/lib/ssl/openssl.cnf"

cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo 'root:x:0:' >"$R/etc/group"
printf '/bin/sh\n' >"$R/etc/shells"

cat >"$R/bin/save-hostkeys" <<'EOF'
#!/bin/busybox sh
# save-hostkeys DIR: keeps this instance's SSH host keys on the disk mounted at DIR (see init).
iid=$(cat /run/instance-id)
[ -n "$iid" ] && [ -d "$1" ] || { echo "usage: save-hostkeys DIR (needs an instance-id)" >&2; exit 2; }
mkdir -p "$1/.capsul-hostkeys/$iid" && cp /etc/dropbear/dropbear_*_host_key "$1/.capsul-hostkeys/$iid/" && sync
EOF
chmod +x "$R/bin/save-hostkeys"

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
# capsul test image init: everything runs from the initramfs.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
mdev -s 2>/dev/null

# cidata seed: the first virtio disk that mounts as iso9660 with meta-data on it.
host=capsul
for d in /dev/vd[a-z]; do
  [ -b "$d" ] || continue
  if mount -t iso9660 -o ro "$d" /mnt/seed 2>/dev/null; then
    if [ -f /mnt/seed/meta-data ]; then
      h=$(sed -n 's/^local-hostname: *"\{0,1\}\([a-z0-9-]*\)"\{0,1\} *$/\1/p' /mnt/seed/meta-data)
      [ -n "$h" ] && host=$h
      sed -n 's/^instance-id: *"\{0,1\}\([A-Za-z0-9-]*\)"\{0,1\} *$/\1/p' /mnt/seed/meta-data >/run/instance-id
      sed -n 's/^ *- *"\(\(ssh\|ecdsa\|sk\)-[^"]*\)" *$/\1/p' /mnt/seed/user-data >/root/.ssh/authorized_keys
      echo "capsul-test-image: seed $d hostname=$host keys=$(wc -l </root/.ssh/authorized_keys)"
      break
    fi
    umount /mnt/seed
  fi
done
hostname "$host"
echo "$host" >/etc/hostname
chmod 700 /root /root/.ssh
chmod 600 /root/.ssh/authorized_keys 2>/dev/null

# SSH host keys are kept on the disk per cloud-init instance, as a cloud image
# keeps them in its /etc/ssh until cloud-init sees a new instance-id: the same
# instance (a restart, an import that keeps the id) answers with the same keys,
# a new one with new keys. save-hostkeys DIR (the disk mounted at DIR) keeps the
# current ones; a blank disk has none, and dropbear makes new ones (-R).
iid=$(cat /run/instance-id 2>/dev/null)
for d in /dev/vd[a-z]; do
  [ -b "$d" ] || continue
  grep -q "^$d " /proc/mounts && continue # the seed
  mount -t ext4 -o ro "$d" /mnt/keys 2>/dev/null || continue
  if [ -n "$iid" ] && [ -d "/mnt/keys/.capsul-hostkeys/$iid" ]; then
    cp /mnt/keys/.capsul-hostkeys/"$iid"/* /etc/dropbear/ && echo "capsul-test-image: host keys of instance $iid"
  fi
  umount /mnt/keys
  break
done

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# acpid turns the ACPI power button (QMP system_powerdown) into a clean
# power-off; started before sshd so a VM that answers ssh also powers down.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\npoweroff -f\n' >/etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -d >/dev/null 2>&1 &

echo "$host" >/www/index.html
/sbin/dropbear -R -E -p 22 2>/tmp/dropbear.log
httpd -p 80 -h /www
(
  cd /www
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$host" -keyout /tmp/tls.key -out /tmp/tls.crt >/dev/null 2>&1
  while :; do openssl s_server -quiet -accept 443 -cert /tmp/tls.crt -key /tmp/tls.key -WWW >/dev/null 2>&1; sleep 1; done
) &
# The guest agent (fsfreeze for consistent backups) on its virtio-serial port,
# found by name: the port's number depends on the VM's devices. Started after
# the servers above, so they come up as soon as before it was added.
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  qemu-ga -d -m virtio-serial -p "/dev/${p##*/}" -f /run/qemu-ga.pid -t /run -l /tmp/qemu-ga.log
  echo "capsul-test-image: qemu-ga on /dev/${p##*/}"
done
echo "capsul-test-image: ready hostname=$host"
# PID 1 must not exit.
while :; do sleep 3600; done
EOF
chmod +x "$R/init"

(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -6) >"$WORK/initrd"
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/kernel"
echo "console=ttyS0 panic=-1 quiet" >"$WORK/cmdline"
for f in kernel initrd cmdline; do mv "$WORK/$f" "$OUT/$f"; done
(cd "$OUT" && sha256sum kernel initrd cmdline >SHA256SUMS)
echo "build-test-image: $OUT (kernel $KVER, modules: ${ORDER[*]})" >&2
