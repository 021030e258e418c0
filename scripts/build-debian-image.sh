#!/usr/bin/env bash
# Builds a real Debian 12 (bookworm) cloud image from Debian packages only, the
# way capsul's tests and a cog operator without internet access can:
#
#   OUT.qcow2   compressed qcow2, 2 GiB virtual (IMAGE_SIZE), one MBR partition
#               (ext4, label "capsul-root"), GRUB for BIOS boot (SeaBIOS, QEMU's
#               default firmware). Inside: the "important" package set of
#               bookworm plus linux-image-amd64, cloud-init (NoCloud datasource),
#               openssh-server, sudo, qemu-guest-agent, cloud-guest-utils
#               (growpart: the root partition grows to the VM's disk size on
#               first boot). Serial console on ttyS0 (the provisioner's
#               console.log). No SSH host keys, no machine-id, no passwords:
#               every VM gets its own on first boot, from cloud-init.
#               cloud-init's default user is "debian" (locked password,
#               passwordless sudo), as on Debian's own cloud images.
#
# Usage:  sudo scripts/build-debian-image.sh OUT.qcow2
# Env:    DEBIAN_MIRROR           default http://deb.debian.org/debian
#         DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#         IMAGE_SIZE              virtual disk size in MiB, default 2048
#         TMPDIR                  scratch space: ~1.2 GiB root tree + the raw disk
#                                 (sparse) + the qcow2 while it is written
# The mirrors are also the image's own apt sources.
#
# Needs root (mmdebstrap's root mode: files owned by root, device nodes) and
# mmdebstrap, e2fsprogs, fdisk (sfdisk), qemu-utils; as root it installs the
# missing ones with apt-get (scripts/debian-prereqs.sh). It needs no loop device,
# no udev, no systemd and no right to mount on the build host, so it works in a
# container (mmdebstrap mounts /proc and /sys in the chroot when it may and
# skips that otherwise; checked with CAP_SYS_ADMIN dropped):
# the ext4 file system is written from the root tree by `mkfs.ext4 -d` into a
# plain file, the partition table by sfdisk into a plain file, and GRUB is put in
# place the way grub-bios-setup would, by hand: the target's own grub-mkimage
# (run in the chroot) makes core.img, which goes right after the MBR (sector 1,
# the boot sector's default "kernel sector"; grub-mkimage already wrote the
# length of the rest into core.img's first sector), and the first 440 bytes of
# boot.img become the MBR's boot code, leaving the partition table alone.
# (grub-install needs the disk as a block device with partition nodes, which a
# container without udev does not get from `losetup -P`.)
#
# Time: 4–11 min (247–627 s measured) on a 2-core machine shared with other
# builds (load 12–20), most of it mmdebstrap downloading and installing the 244
# packages; the qcow2 is ~260 MB.
# Callers cache the output: test/helpers/debianimage.ts keys it by this script's
# hash and the environment above.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT.qcow2" >&2
  exit 2
fi
OUT=$1
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SIZE_MIB=${IMAGE_SIZE:-2048}
# The partition starts at 1 MiB (sector 2048): the gap before it holds GRUB's
# core.img (tens of KiB), as on any disk partitioned since ~2009.
PART_START_SECTORS=2048
LABEL=capsul-root

if ! [[ $SIZE_MIB =~ ^[0-9]+$ ]] || [ "$SIZE_MIB" -lt 1024 ]; then
  echo "build-debian-image: IMAGE_SIZE must be a number of MiB, at least 1024" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "build-debian-image: run as root (mmdebstrap root mode: root-owned files and device nodes)" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
"$here/debian-prereqs.sh" "build-debian-image" \
  mmdebstrap=mmdebstrap mkfs.ext4=e2fsprogs sfdisk=fdisk qemu-img=qemu-utils \
  /usr/share/keyrings/debian-archive-keyring.gpg=debian-archive-keyring

started=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/capsul-debian-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root

# One file system UUID per build, known before the packages are installed:
# the fstab written in the essential hook lets update-initramfs (run when
# linux-image is installed) add fsck.ext4 for the root file system.
FS_UUID=$(cat /proc/sys/kernel/random/uuid)
export CAPSUL_FS_UUID=$FS_UUID

# openssh-server generates host keys when installed; they are removed below so
# that no two VMs share them (cloud-init's ssh module makes new ones at boot).
# dbus: cloud-init sets the hostname with hostnamectl, which needs it.
# ifupdown + isc-dhcp-client (in "important"): cloud-init renders the NIC's
# DHCP config as /etc/network/interfaces.d/50-cloud-init.
mmdebstrap --mode=root --variant=important --format=directory \
  --include=linux-image-amd64,grub-pc-bin,cloud-init,cloud-guest-utils,openssh-server,sudo,qemu-guest-agent,dbus,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --essential-hook='printf "UUID=%s / ext4 errors=remount-ro 0 1\n" "$CAPSUL_FS_UUID" >"$1/etc/fstab"' \
  "$SUITE" "$R" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main"

# --- first-boot identity: nothing a VM should share with its siblings --------
rm -f "$R"/etc/ssh/ssh_host_*
: >"$R/etc/machine-id"
echo debian >"$R/etc/hostname"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
# mmdebstrap leaves the build host's resolver config; dhclient writes the VM's.
rm -f "$R/etc/resolv.conf"

# --- cloud-init: only look for a NoCloud seed (the provisioner's cidata disk) --
# Without this, ds-identify may probe for other clouds' metadata services first.
# Locale: cloud-init's default is en_US.UTF-8, which Debian's locale-gen does
# not build on request (it only reads /etc/locale.gen), so its locale module
# fails and `cloud-init status` says "error". C.UTF-8 is built into glibc 2.36.
cat >"$R/etc/cloud/cloud.cfg.d/90_capsul.cfg" <<'EOF'
# capsul: VMs get a NoCloud seed (a disk labelled "cidata"); nothing else to probe.
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
EOF
echo 'LANG=C.UTF-8' >"$R/etc/default/locale"

# --- GRUB (BIOS) -------------------------------------------------------------
# /vmlinuz and /initrd.img are the symlinks linux-base keeps pointing at the
# newest kernel, so a kernel upgrade inside the VM boots without update-grub
# (grub-pc, which would run it, is not installed: its postinst wants a disk).
for f in vmlinuz initrd.img; do
  if [ ! -e "$R/$f" ]; then
    echo "build-debian-image: /$f is missing in the image (linux-base did not link the kernel)" >&2
    exit 1
  fi
done
mkdir -p "$R/boot/grub/i386-pc"
cp "$R"/usr/lib/grub/i386-pc/*.mod "$R"/usr/lib/grub/i386-pc/*.lst "$R/boot/grub/i386-pc/"
cat >"$R/boot/grub/grub.cfg" <<EOF
# capsul image: written by scripts/build-debian-image.sh (no update-grub here).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'Debian GNU/Linux 12' {
  search --no-floppy --fs-uuid --set=root $FS_UUID
  linux /vmlinuz root=UUID=$FS_UUID ro console=tty0 console=ttyS0,115200n8
  initrd /initrd.img
}
EOF
# core.img finds its file system by UUID (not by BIOS disk number, which changes
# with the disks attached), then reads /boot/grub/grub.cfg and modules from it.
# Serial first, so that a failure here shows in the VM's console.log rather
# than on a VGA screen nobody sees.
cat >"$R/tmp/capsul-early.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root $FS_UUID
set prefix=(\$root)/boot/grub
EOF
chroot "$R" grub-mkimage -O i386-pc -o /tmp/capsul-core.img -c /tmp/capsul-early.cfg -p /boot/grub \
  biosdisk part_msdos ext2 search serial terminal
mv "$R/tmp/capsul-core.img" "$WORK/core.img"
cp "$R/usr/lib/grub/i386-pc/boot.img" "$WORK/boot.img"
rm -f "$R/tmp/capsul-early.cfg"
core_bytes=$(stat -c %s "$WORK/core.img")
if [ "$core_bytes" -gt $(( (PART_START_SECTORS - 1) * 512 )) ]; then
  echo "build-debian-image: core.img ($core_bytes bytes) does not fit before the partition" >&2
  exit 1
fi

# --- the disk ----------------------------------------------------------------
fs_mib=$(( SIZE_MIB - PART_START_SECTORS / 2048 ))
# metadata_csum_seed is an incompat feature GRUB 2.06 cannot read.
mkfs.ext4 -q -F -L "$LABEL" -U "$FS_UUID" -O ^metadata_csum_seed -d "$R" "$WORK/root.ext4" "${fs_mib}M"
truncate -s "${SIZE_MIB}M" "$WORK/disk.raw"
printf 'label: dos\nstart=%d, type=83, bootable\n' "$PART_START_SECTORS" \
  | sfdisk --quiet --no-reread --no-tell-kernel "$WORK/disk.raw" >/dev/null
dd if="$WORK/root.ext4" of="$WORK/disk.raw" bs=1M seek=$(( PART_START_SECTORS / 2048 )) conv=notrunc,sparse status=none
rm -f "$WORK/root.ext4"
packages=$(dpkg-query --admindir="$R/var/lib/dpkg" -W | wc -l)
# MBR boot code: bytes 0..439 of boot.img (440.. are the disk signature and the
# partition table sfdisk wrote). Like grub-bios-setup for a hard disk, replace
# the 2-byte jump at 0x66 with NOPs so that a BIOS passing a wrong boot drive
# in DL is corrected to 0x80.
dd if="$WORK/boot.img" of="$WORK/disk.raw" bs=440 count=1 conv=notrunc status=none
printf '\x90\x90' | dd of="$WORK/disk.raw" bs=1 seek=$((0x66)) conv=notrunc status=none
# core.img at sector 1: boot.img's default kernel sector (LBA 1, at 0x5c).
dd if="$WORK/core.img" of="$WORK/disk.raw" bs=512 seek=1 conv=notrunc status=none

mkdir -p "$(dirname "$OUT")"
qemu-img convert -c -O qcow2 "$WORK/disk.raw" "$OUT.tmp.$$"
mv "$OUT.tmp.$$" "$OUT"
echo "build-debian-image: $OUT ($(du -h "$OUT" | cut -f1) on disk, ${SIZE_MIB} MiB virtual, $packages packages, core.img $core_bytes bytes, fs $FS_UUID) in $(( $(date +%s) - started )) s" >&2
