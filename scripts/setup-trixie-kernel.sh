#!/usr/bin/env bash
# Unpacks, once, the Debian 13 (trixie) kernel (linux-image-amd64, 6.12) into a folder in /tmp,
# for the guest test that needs a Linux that drives several virtio-fs request queues (6.11+;
# the host's Debian 12 kernel 6.1 uses one): test/e2e/qemu-queue-threads.test.ts boots it with
# an initramfs from scripts/build-initramfs.sh --modules-root. The package is fetched with the
# apt of the trixie root that scripts/setup-migration-qemu.sh debootstraps (built first when
# missing) and unpacked with dpkg-deb -x, not installed: no initramfs-tools, no boot hooks. The
# package carries no modules.dep (its postinst makes one), so depmod runs here. A ready marker
# is written last and the folder is renamed into place, so an interrupted run is redone.
#
#   scripts/setup-trixie-kernel.sh            (prints nothing when already there)
#   scripts/setup-trixie-kernel.sh --print    (prints the unpacked root, setting it up if needed)
set -euo pipefail
cd "$(dirname "$0")/.."

root="${VFS_TRIXIE_ROOT:-/tmp/vfs-trixie-qemu}"
out="${VFS_TRIXIE_KERNEL:-/tmp/vfs-trixie-kernel}"
print=0
[ "${1:-}" = "--print" ] && print=1

done_msg() { if [ "$print" = 1 ]; then echo "$out"; fi; }

if [ -f "$out/.vfs-ready" ]; then done_msg; exit 0; fi

[ -f "$root/.vfs-ready" ] || bash scripts/setup-migration-qemu.sh >&2
command -v dpkg-deb >/dev/null || { echo "setup-trixie-kernel: dpkg-deb not found" >&2; exit 1; }
command -v depmod >/dev/null || { echo "setup-trixie-kernel: depmod not found (apt-get install kmod)" >&2; exit 1; }

# apt inside the root, with /dev and /proc, in a private mount namespace (nothing to unmount).
in_root() {
  unshare --mount --propagation private sh -c \
    "mount --rbind /dev '$root/dev' && mount -t proc proc '$root/proc' && exec chroot '$root' sh -c \"\$0\"" "$1"
}

dl="/tmp/vfs-kernel-dl.$$"
work="$out.build.$$"
trap 'rm -rf --one-file-system "$root$dl" "$work"' EXIT
mkdir -p "$root$dl"
# The meta-package names the versioned image; the root's package lists may be older than the
# mirror (a point release removed that version), so a failed download refreshes them once.
fetch() {
  local pkg
  pkg=$(in_root "apt-cache depends linux-image-amd64" | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
  [ -n "$pkg" ] || { echo "setup-trixie-kernel: linux-image-amd64 names no image in $root" >&2; return 1; }
  echo "setup-trixie-kernel: fetching $pkg" >&2
  in_root "cd '$dl' && apt-get download -qq '$pkg'" >/dev/null 2>&1
}
fetch || { in_root "apt-get update -qq" >&2 && fetch; } || { echo "setup-trixie-kernel: cannot download the trixie kernel" >&2; exit 1; }

deb=$(ls "$root$dl"/linux-image-*.deb)
rm -rf --one-file-system "$work"
dpkg-deb -x "$deb" "$work"
# Debian 13 ships modules under /usr/lib/modules (merged /usr).
moddir=$(ls -d "$work"/usr/lib/modules/*/ 2>/dev/null | head -n 1)
[ -n "$moddir" ] || { echo "setup-trixie-kernel: no modules directory in $deb" >&2; exit 1; }
kver=$(basename "$moddir")
[ -r "$work/boot/vmlinuz-$kver" ] || { echo "setup-trixie-kernel: no vmlinuz-$kver in $deb" >&2; exit 1; }
depmod -b "$work/usr" "$kver"
echo "$kver" >"$work/.vfs-kernel-version"
touch "$work/.vfs-ready"
rm -rf --one-file-system "$out"
mv "$work" "$out"
echo "setup-trixie-kernel: kernel $kver in $out" >&2
done_msg
