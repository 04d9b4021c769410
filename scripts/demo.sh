#!/usr/bin/env bash
# The main job, shown end to end: share a demo directory with a virtual machine. Starts the
# vfs daemon on the directory through vfs-launch (namespace sandbox), boots a QEMU guest (TCG,
# no KVM needed) with the host's Debian kernel and a busybox initramfs, and lets the guest
# mount the share with virtio-fs, list and read it, and write a file back; then prints what
# the guest saw and the file it wrote, read on the host.
#
#   scripts/demo.sh [DEMO_DIR]     as root, after scripts/setup.sh (or npm ci && npm run build)
#
# DEMO_DIR defaults to a new directory under /tmp and is kept for a look afterwards.
# VFS_DEMO_SANDBOX=namespace|chroot|none picks the sandbox, VFS_DEMO_LAUNCHER_ARGS adds
# launcher options (e.g. "--seccomp log --log-level debug"); --reference runs the reference
# virtiofsd (scripts/fetch-virtiofsd.sh) instead of vfs, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

reference=0
if [ "${1:-}" = --reference ]; then reference=1; shift; fi
sandbox=${VFS_DEMO_SANDBOX:-namespace}
say() { printf 'demo: %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the namespace sandbox and QEMU's shared memory need it here)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run scripts/setup.sh (apt-get install qemu-system-x86)"
kernel=$(bash scripts/build-initramfs.sh --print-kernel) || die "no guest kernel: apt-get install linux-image-amd64"
if [ "$reference" = 0 ]; then
  [ -f dist/launcher/main.js ] || die "dist/launcher/main.js missing: run npm ci && npm run build first"
fi

demo=${1:-$(mktemp -d /tmp/vfs-demo-XXXXXX)}
mkdir -p "$demo"
work=$(mktemp -d /tmp/vfs-demo-run-XXXXXX)
sock="$work/vfs.sock"
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -TERM "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "demo directory: $demo"
cat >"$demo/README.txt" <<EOF
Hello from the host $(hostname).
This directory is served to a virtual machine by vfs over virtio-fs.
EOF
mkdir -p "$demo/photos" "$demo/notes"
printf 'buy milk\nship vfs\n' >"$demo/notes/todo.txt"
head -c 4096 /dev/urandom >"$demo/photos/cat.jpg"
ln -sfn notes/todo.txt "$demo/todo-link"
rm -f "$demo/from-guest.txt"
(cd "$demo" && find . -mindepth 1 | sort | sed 's/^/  host: /')
say "host md5sum photos/cat.jpg: $(md5sum "$demo/photos/cat.jpg" | cut -d' ' -f1)"

if [ "$reference" = 1 ]; then
  cmd=("$(bash scripts/fetch-virtiofsd.sh)" --shared-dir "$demo" --socket-path "$sock" --sandbox "$sandbox")
else
  read -ra extra <<<"${VFS_DEMO_LAUNCHER_ARGS:-}"
  cmd=(node dist/launcher/main.js --shared-dir "$demo" --sandbox "$sandbox" "${extra[@]}" -- --socket-path "$sock")
fi
say "starting: ${cmd[*]}"
UV_USE_IO_URING=0 "${cmd[@]}" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do
  [ -S "$sock" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; die "the daemon exited before listening"; }
  sleep 0.1
done
[ -S "$sock" ] || { cat "$work/daemon.log" >&2; die "the daemon did not create $sock"; }

cat >"$work/guest.sh" <<'EOF'
echo "kernel $(uname -r); mounted: $(grep virtiofs /proc/mounts)"
cd "$VFS_MNT"
echo "ls -lR of the share:"
ls -lR .
echo "cat README.txt:"
cat README.txt
echo "cat todo-link (a symlink to notes/todo.txt):"
cat todo-link
echo "md5sum photos/cat.jpg: $(md5sum photos/cat.jpg | cut -d' ' -f1)"
echo "Written by the guest ($(uname -r)) at boot time $(cut -d' ' -f1 /proc/uptime) s." > from-guest.txt
echo "wrote from-guest.txt"
EOF
bash scripts/build-initramfs.sh --out "$work/base.cpio.gz" 2>/dev/null
bash scripts/build-initramfs.sh --base "$work/base.cpio.gz" --script "$work/guest.sh" --out "$work/initrd.cpio.gz"

# While the guest runs, look at the serving daemon from outside: the process (a descendant of
# the one started above) whose root directory is the demo directory itself.
descendants() {
  local p=$1 c
  echo "$p"
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do descendants "$c"; done
}
inspect_sandbox() {
  local want p found=""
  want=$(stat -c '%d:%i' "$demo")
  # The sandbox is built in steps (root, then limits, capabilities, seccomp last): wait for the end.
  for _ in $(seq 600); do
    for p in $(descendants "$daemon_pid"); do
      if [ "$(stat -L -c '%d:%i' /proc/"$p"/root 2>/dev/null)" = "$want" ]; then found=$p; fi
    done
    if [ -n "$found" ] && grep -q '^Seccomp:[[:space:]]*2' /proc/"$found"/status 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ -z "$found" ]; then echo "no daemon process has $demo as its root"; return 0; fi
  p=$found
  echo "daemon pid $p: its / is $demo (/proc/$p/root)"
  grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/"$p"/status | tr -s '\t ' ' ' | paste -sd, | sed 's/,/, /g'
  echo "namespaces differing from the host's: $(for ns in mnt pid net ipc uts user; do [ "$(readlink /proc/"$p"/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] && printf '%s ' "$ns"; done)"
}
if [ "$sandbox" = none ]; then
  echo "--sandbox none: nothing isolates the daemon from the host" >"$work/sandbox.txt"
  inspect_pid=""
else
  inspect_sandbox >"$work/sandbox.txt" 2>&1 &
  inspect_pid=$!
fi

say "booting a QEMU guest (TCG, $kernel), virtio-fs tag 'myfs' on $sock"
start=$(date +%s)
set +e
timeout 300 qemu-system-x86_64 -nodefaults -no-user-config -accel tcg -m 512 \
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
  -chardev socket,id=vfs0,path="$sock" \
  -device vhost-user-fs-pci,queue-size=1024,chardev=vfs0,tag=myfs \
  -display none -serial stdio -no-reboot \
  -kernel "$kernel" -initrd "$work/initrd.cpio.gz" \
  -append "console=ttyS0 quiet panic=-1 no_timer_check vfs.tag=myfs" </dev/null 2>"$work/qemu.err" | tr -d '\r' >"$work/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))

if ! grep -q '^VFS-GUEST-BEGIN$' "$work/console.log"; then
  cat "$work/console.log" "$work/qemu.err" "$work/daemon.log" >&2
  die "the guest did not mount the share (qemu exit $qemu_rc)"
fi
say "what the guest saw (boot and run: ${elapsed} s):"
sed -n '/^VFS-GUEST-BEGIN$/,/^VFS-GUEST-END/p' "$work/console.log" | sed '1d;$d' | sed 's/^/  guest: /'
guest_rc=$(sed -n 's/^VFS-GUEST-END rc=//p' "$work/console.log")

say "the daemon, seen from the host while it served the guest:"
[ -z "$inspect_pid" ] || wait "$inspect_pid" 2>/dev/null || true
sed 's/^/  /' "$work/sandbox.txt"

daemon_rc=0
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$daemon_pid" 2>/dev/null; then
  say "the daemon is still running after QEMU exited; stopping it"
  kill -TERM "$daemon_pid"
fi
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""

say "on the host, $demo/from-guest.txt:"
if [ -f "$demo/from-guest.txt" ]; then
  sed 's/^/  host: /' "$demo/from-guest.txt"
else
  cat "$work/daemon.log" >&2
  die "the guest's file did not reach the host"
fi
say "daemon exit status $daemon_rc (log: $(wc -l <"$work/daemon.log") lines), guest script status ${guest_rc:-?}, QEMU status $qemu_rc"
if [ "$daemon_rc" != 0 ] || [ "${guest_rc:-1}" != 0 ] || [ "$qemu_rc" != 0 ]; then
  sed 's/^/  daemon: /' "$work/daemon.log" >&2
  exit 1
fi
say "done: the guest mounted $demo over virtio-fs, read it and wrote to it"
