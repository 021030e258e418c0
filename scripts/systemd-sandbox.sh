#!/usr/bin/env bash
# Boots systemd as PID 1 of a throwaway machine made of namespaces, so that capsul's
# units (deploy/*.service) run for real where the host's PID 1 is not systemd (CI,
# containers). test/systemd-run.test.ts drives it. Needs root, overlayfs and cgroup2.
#
# Nothing it does reaches the host, by construction:
#  - the root is an overlay: lower layer the host's / (read only through the overlay),
#    upper layer a tmpfs; every write (/etc, /usr/local, …) lands in the tmpfs and
#    disappears with it; /tmp, /var/tmp, /var/lib, /var/log, /run and /dev are fresh
#    tmpfs, /dev holds only nodes made here with mknod; /proc/sys and /sys are read-only;
#  - own pid, mount, network (loopback and a veth pair inside it), uts, ipc and cgroup
#    namespaces;
#  - systemd loads units only from /etc/capsul-sandbox-units, filled here with empty
#    targets, journald and the units under test: no distribution unit (tmpfiles --remove,
#    sysctl, udev, modules-load …) exists to be started;
#  - it refuses to exec systemd unless /, /tmp, /var/tmp and /dev are what it made.
# The one host-visible trace is a cgroup directory, removed by `stop`.
#
# Usage: systemd-sandbox.sh start STATE_DIR REPO [HOST_DIR:SANDBOX_DIR]...
#          boots; the repository is at its own path inside (read-only), `capsul` is
#          REPO/dist/cli/main.js (REPO also bound at /opt/capsul-repo) in /usr/local/bin, a `capsul` user and a `kvm` group
#          exist; each HOST_DIR is bind-mounted read-only at SANDBOX_DIR
#        systemd-sandbox.sh run STATE_DIR CMD...     runs CMD as root inside
#        systemd-sandbox.sh stop STATE_DIR           kills it all (SIGKILL to its PID 1)
set -euo pipefail
cmd=$1; S=$(realpath "$2"); shift 2

# Boot deadline: systemd reaches its target in well under a second here.
BOOT_POLLS=150      # x 0.2 s
CGROUP_NAME=capsul-sandbox-$(basename "$S")

cgroup_root() {
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then echo /sys/fs/cgroup
  elif [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then echo /sys/fs/cgroup/unified
  else echo "systemd-sandbox: no cgroup2 hierarchy mounted" >&2; exit 1; fi
}

case "$cmd" in
start)
  [ ! -e "$S/pid1" ] || { echo "systemd-sandbox: already running in $S" >&2; exit 1; }
  mkdir -p "$S"
  unshare --pid --fork --mount --net --uts --ipc --propagation private --kill-child "$0" stage1 "$S" "$@" > "$S/boot.log" 2>&1 &
  echo $! > "$S/unshare.pid"
  pid1=""
  for _ in $(seq $BOOT_POLLS); do
    pid1=$(pgrep -P "$(cat "$S/unshare.pid")" -x systemd || true)
    [ -n "$pid1" ] && break
    kill -0 "$(cat "$S/unshare.pid")" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$pid1" ] || { echo "systemd-sandbox: systemd did not start:" >&2; cat "$S/boot.log" >&2; exit 1; }
  echo "$pid1" > "$S/pid1"
  state=""
  for _ in $(seq $BOOT_POLLS); do
    state=$(nsenter -t "$pid1" -a systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
  done
  case "$state" in running|degraded) echo "$pid1" ;; *) echo "systemd-sandbox: systemd is '$state'" >&2; exit 1 ;; esac
  ;;
run)
  exec nsenter -t "$(cat "$S/pid1")" -a "$@"
  ;;
stop)
  # PID 1 of a pid namespace ignores SIGTERM; SIGKILL from outside ends it and, with
  # it, every process of the namespace (QEMU included).
  [ -e "$S/pid1" ] && kill -KILL "$(cat "$S/pid1")" 2>/dev/null || true
  if [ -e "$S/unshare.pid" ]; then
    while kill -0 "$(cat "$S/unshare.pid")" 2>/dev/null; do sleep 0.1; done
  fi
  cg="$(cgroup_root)/$CGROUP_NAME"
  # The killed processes leave their cgroups a moment after they are reaped.
  for _ in $(seq 50); do
    [ -d "$cg" ] || break
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || sleep 0.1
  done
  [ ! -d "$cg" ] || { echo "systemd-sandbox: could not remove $cg" >&2; exit 1; }
  rm -f "$S/pid1" "$S/unshare.pid"
  ;;
stage1)
  cg="$(cgroup_root)/$CGROUP_NAME"
  mkdir -p "$cg"
  echo $$ > "$cg/cgroup.procs"
  exec unshare --cgroup "$0" stage2 "$S" "$@"
  ;;
stage2)
  REPO=$(realpath "$1"); shift
  R=$S/root
  mkdir -p "$S/rw" "$R"
  mount -t tmpfs -o size=4g tmpfs "$S/rw"
  mkdir -p "$S/rw/upper" "$S/rw/work"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$S/rw/upper,workdir=$S/rw/work" "$R"
  [ "$(findmnt -n -o FSTYPE "$R")" = overlay ] || { echo "systemd-sandbox: no overlay root" >&2; exit 1; }
  mount -t proc proc "$R/proc"
  mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
  mount --bind /sys "$R/sys"; mount -o remount,bind,ro "$R/sys"
  mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
  mount -t tmpfs -o mode=755 tmpfs "$R/dev"
  mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5; mknod -m 666 "$R/dev/full" c 1 7
  mknod -m 666 "$R/dev/random" c 1 8; mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
  mkdir "$R/dev/net" "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs tmpfs "$R/dev/shm"
  for d in run tmp var/tmp var/lib var/log; do mount -t tmpfs tmpfs "$R/$d"; done
  # The repository at its own path, and at /opt/capsul-repo for the `capsul` on PATH: the units
  # have PrivateTmp=yes, so a clone under /tmp (as CI may make) is out of a service's sight.
  for p in "$REPO:$REPO" "$REPO:/opt/capsul-repo" "$@"; do
    mkdir -p "$R${p#*:}"; mount --bind "${p%%:*}" "$R${p#*:}"; mount -o remount,bind,ro "$R${p#*:}"
  done
  # The machine as README "Deploy" leaves it: a capsul user, /dev/kvm of group kvm, capsul on PATH.
  echo "kvm:x:991:" >> "$R/etc/group"
  echo "capsul:x:990:" >> "$R/etc/group"
  echo "capsul:x:990:990:capsul:/var/lib/capsul:/usr/sbin/nologin" >> "$R/etc/passwd"
  echo "capsul:!:20000::::::" >> "$R/etc/shadow"
  mknod -m 660 "$R/dev/kvm" c 10 232; chgrp 991 "$R/dev/kvm"
  mknod -m 666 "$R/dev/net/tun" c 10 200
  ln -sf /opt/capsul-repo/dist/cli/main.js "$R/usr/local/bin/capsul"
  U=$R/etc/capsul-sandbox-units
  rm -rf "$U"; mkdir -p "$U"
  for t in sysinit basic shutdown network-online multi-user sockets paths timers slices local-fs remote-fs network emergency rescue; do
    printf '[Unit]\nDescription=%s (empty in the sandbox)\n' "$t" > "$U/$t.target"
  done
  # dbus.socket: a real machine's sockets.target starts it.
  printf '[Unit]\nDescription=capsul sandbox\nWants=systemd-journald.service dbus.socket\n' > "$U/capsul-sandbox.target"
  cp /lib/systemd/system/systemd-journald.service /lib/systemd/system/systemd-journald.socket /lib/systemd/system/systemd-journald-dev-log.socket "$U/"
  # The system bus and capsul's own service manager (what `loginctl enable-linger capsul`
  # starts at boot): the cog puts each VM in a scope of that user manager, which asks
  # the system manager over D-Bus to move the VM's QEMU into its cgroup tree.
  cp /lib/systemd/system/dbus.service /lib/systemd/system/dbus.socket /lib/systemd/system/user@.service \
    /lib/systemd/system/user-runtime-dir@.service /lib/systemd/system/user.slice "$U/"
  cp -r /lib/systemd/system/user-.slice.d "$U/"
  # The user manager inherits SYSTEMD_UNIT_PATH: its own, as empty as the system's.
  UU=$R/etc/capsul-sandbox-user-units
  rm -rf "$UU"; mkdir -p "$UU" "$U/user@.service.d"
  for t in default basic sockets paths timers shutdown exit; do
    printf '[Unit]\nDescription=%s (empty in the sandbox)\n' "$t" > "$UU/$t.target"
  done
  cp /usr/lib/systemd/user/app.slice /usr/lib/systemd/user/background.slice /usr/lib/systemd/user/session.slice "$UU/" 2>/dev/null || true
  # XDG_RUNTIME_DIR: pam_systemd sets it on a real machine, through logind, which the sandbox lacks.
  printf '[Service]\nEnvironment=SYSTEMD_UNIT_PATH=/etc/capsul-sandbox-user-units XDG_RUNTIME_DIR=/run/user/%%i\n' > "$U/user@.service.d/sandbox.conf"
  cp "$REPO"/deploy/*.service "$U/"
  cd "$R"; mkdir -p oldroot; pivot_root . oldroot; umount -l /oldroot; rmdir /oldroot
  for m in /:overlay /tmp:tmpfs /var/tmp:tmpfs /dev:tmpfs /var/lib:tmpfs; do
    [ "$(findmnt -n -o FSTYPE "${m%%:*}")" = "${m#*:}" ] || { echo "systemd-sandbox: ${m%%:*} is not ${m#*:}; not booting" >&2; exit 1; }
  done
  ip link set lo up
  # A default route for pasta, which gives each VM its network through the interface
  # that route uses ("External interface not usable" without one): a veth pair with
  # both ends in this namespace and TEST-NET-2 addresses, so nothing can leave it.
  ip link add sbx0 type veth peer name sbx1
  ip addr add 198.51.100.1/24 dev sbx0; ip addr add 198.51.100.2/24 dev sbx1
  ip link set sbx0 up; ip link set sbx1 up
  ip route add default via 198.51.100.2 dev sbx0
  exec env -i container=capsul-sandbox SYSTEMD_UNIT_PATH=/etc/capsul-sandbox-units \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=capsul-sandbox.target --log-target=journal-or-kmsg --log-level=info
  ;;
*)
  echo "usage: $0 start|run|stop STATE_DIR …" >&2; exit 2 ;;
esac
