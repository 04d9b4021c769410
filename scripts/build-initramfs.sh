#!/usr/bin/env bash
# Build the busybox initramfs the end-to-end tests and the demo boot under QEMU, from the host's
# own packages (busybox-static, linux-image-amd64): busybox and its applet links, the virtio and
# virtiofs modules of the installed Debian kernel (version found at run time, dependencies read
# from modules.dep, compressed modules unpacked), and an /init that mounts the virtio-fs share,
# runs a guest script between console markers and powers the guest off.
#
#   scripts/build-initramfs.sh --out FILE [--script GUEST.sh] [--kernel-version V] [--modules-root DIR]
#   scripts/build-initramfs.sh --base BASE.cpio.gz --script GUEST.sh --out FILE
#   scripts/build-initramfs.sh --print-kernel [--kernel-version V] [--modules-root DIR]   (prints the vmlinuz path)
#
# --modules-root DIR takes the kernel and its modules from another root instead of the host's /
# (DIR/boot/vmlinuz-V, DIR/lib/modules/V or DIR/usr/lib/modules/V), e.g. the Debian 13 kernel
# that scripts/setup-trixie-kernel.sh unpacks; without it the host's own kernel is used.
#
# The second form appends a small cpio member holding only /guest.sh to an already built base
# image (the kernel unpacks concatenated archives in order), so each boot costs one tiny archive.
# The guest protocol, read by test/e2e/guest.ts and scripts/demo.sh:
#   kernel command line: vfs.tag=TAG (default myfs) vfs.mount=/mnt vfs.opts=OPTS (mount -o)
#   console: "VFS-GUEST-BEGIN" ... script output ... "VFS-GUEST-END rc=N"; errors of /init itself
#   as "VFS-GUEST-ERROR <what>" lines.
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }

out="" script="" base="" kver="${VFS_E2E_KERNEL_VERSION:-}" print_kernel=0 mroot=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --script) script=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --kernel-version) kver=$2; shift 2 ;;
    --modules-root) mroot=${2%/}; shift 2 ;;
    --print-kernel) print_kernel=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done

command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"
command -v gzip >/dev/null || die "gzip not found"

# A newc archive of the current directory, owned by root, to stdout (gzip-compressed).
pack() { find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1; }

if [ -n "$base" ]; then
  [ -n "$out" ] && [ -n "$script" ] || die "--base needs --script and --out"
  [ -r "$base" ] || die "base image $base not readable"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  install -m 0755 "$script" "$stage/guest.sh"
  cp "$base" "$out.tmp"
  (cd "$stage" && pack) >>"$out.tmp"
  mv "$out.tmp" "$out"
  exit 0
fi

# Where the kernels and modules are: the host's, or those of --modules-root.
if [ -n "$mroot" ]; then
  [ -d "$mroot" ] || die "--modules-root $mroot is not a directory"
  bootdir="$mroot/boot" modbase="$mroot/lib/modules"
  [ -d "$modbase" ] || modbase="$mroot/usr/lib/modules"
  [ -d "$modbase" ] || die "--modules-root $mroot has no lib/modules or usr/lib/modules"
else
  bootdir=/boot modbase=/lib/modules
fi

# The kernel: a version under $modbase that has both a vmlinuz in $bootdir and virtiofs
# (as a module or built in); the newest wins.
pick_kernel() {
  local v best=""
  for d in "$modbase"/*/; do
    v=$(basename "$d")
    [ -r "$bootdir/vmlinuz-$v" ] || continue
    if compgen -G "$d/kernel/fs/fuse/virtiofs.ko*" >/dev/null || grep -q '/virtiofs.ko' "$d/modules.builtin" 2>/dev/null; then
      best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -1)
    fi
  done
  echo "$best"
}
[ -n "$kver" ] || kver=$(pick_kernel)
[ -n "$kver" ] || die "no kernel with virtiofs found in $modbase and $bootdir (apt-get install linux-image-amd64)"
moddir="$modbase/$kver"
[ -d "$moddir" ] || die "$moddir missing"
if [ "$print_kernel" = 1 ]; then
  [ -r "$bootdir/vmlinuz-$kver" ] || die "$bootdir/vmlinuz-$kver missing"
  echo "$bootdir/vmlinuz-$kver"
  exit 0
fi
[ -n "$out" ] || die "--out FILE is required"

busybox=""
for b in /bin/busybox /usr/bin/busybox /sbin/busybox; do
  if [ -x "$b" ]; then busybox=$b; break; fi
done
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
if file_out=$(command -v file >/dev/null && file -L "$busybox"); then
  case "$file_out" in *dynamically*) die "$busybox is dynamically linked; install busybox-static" ;; esac
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules,etc}

cp "$busybox" "$stage/bin/busybox"
# The other applet links are made by /init itself (busybox --install), which is faster than here.
ln -s busybox "$stage/bin/sh"

# Host tools the guest scripts use beyond busybox (ACLs and xattrs: the acl and attr packages),
# copied with the shared libraries they load so they run from the initramfs as on the host.
# A missing tool is an error: a guest test must not pass because its tool was not there.
guest_tools="setfacl getfacl setfattr getfattr"
for tool in $guest_tools; do
  bin=$(command -v "$tool") || die "$tool not found (apt-get install acl attr)"
  cp -L "$bin" "$stage/bin/$tool"
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    [ -e "$stage$lib" ] || cp -L "$lib" "$stage$lib"
  done < <(ldd "$bin" | grep -oE '/[^ ]+' | sort -u)
done

# Modules in load order: each requested module after its dependencies. modules.dep lists a
# module's dependencies with the ones loaded first at the end.
wanted="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs"
declare -A path_of=() done_mod=()
while IFS= read -r line; do
  mod=${line%%:*}
  name=${mod##*/}; name=${name%%.ko*}
  path_of[$name]=$mod
done <"$moddir/modules.dep"
order=()
resolve() {
  local name=$1 dep deps i
  [ -n "${done_mod[$name]:-}" ] && return 0
  done_mod[$name]=1
  if [ -z "${path_of[$name]:-}" ]; then
    name_alt=${name//_/-}
    if [ -n "${path_of[$name_alt]:-}" ]; then resolve "$name_alt"; return 0; fi
    grep -qE "/${name}\.ko" "$moddir/modules.builtin" 2>/dev/null && return 0
    die "module $name not found for kernel $kver"
  fi
  deps=$(grep -E "^${path_of[$name]}:" "$moddir/modules.dep" | cut -d: -f2)
  read -ra arr <<<"$deps"
  for ((i = ${#arr[@]} - 1; i >= 0; i--)); do
    dep=${arr[$i]##*/}; resolve "${dep%%.ko*}"
  done
  order+=("$name")
}
for m in $wanted; do resolve "$m"; done

: >"$stage/lib/modules/load-order"
for name in "${order[@]}"; do
  src="$moddir/${path_of[$name]}"
  dst="$stage/lib/modules/$name.ko"
  case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module format $src" ;;
  esac
  echo "$name" >>"$stage/lib/modules/load-order"
done

cat >"$stage/init" <<'INIT'
#!/bin/sh
# Guest /init: load the virtio-fs modules, mount the share, run /guest.sh between markers, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o size=75% tmpfs /tmp
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || echo "VFS-GUEST-ERROR insmod $m"
done
tag=myfs mnt=/mnt opts=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vfs.tag=*) tag=${arg#vfs.tag=} ;;
    vfs.mount=*) mnt=${arg#vfs.mount=} ;;
    vfs.opts=*) opts=${arg#vfs.opts=} ;;
  esac
done
mkdir -p "$mnt"
export VFS_MNT="$mnt" VFS_TAG="$tag"
if [ -n "$opts" ]; then set -- -o "$opts"; else set --; fi
if mount -t virtiofs "$@" "$tag" "$mnt"; then
  echo "VFS-GUEST-BEGIN"
  if [ -f /guest.sh ]; then sh /guest.sh; rc=$?; else ls -la "$mnt"; rc=$?; fi
  echo "VFS-GUEST-END rc=$rc"
  sync
  umount "$mnt" || echo "VFS-GUEST-ERROR umount"
else
  echo "VFS-GUEST-ERROR mount -t virtiofs $tag $mnt failed"
fi
poweroff -f
INIT
chmod 0755 "$stage/init"
if [ -n "$script" ]; then install -m 0755 "$script" "$stage/guest.sh"; fi

(cd "$stage" && pack) >"$out.tmp"
mv "$out.tmp" "$out"
echo "build-initramfs: $out (kernel $kver, modules: ${order[*]})" >&2
