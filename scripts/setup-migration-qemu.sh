#!/usr/bin/env bash
# Builds, once, a Debian 13 (trixie) root in /tmp holding a QEMU that can migrate vhost-user-fs
# with the backend's internal state (QEMU >= 9.0; Debian 12's 7.2 cannot). The migration test
# (test/e2e/qemu-migration.test.ts) runs that QEMU through chroot. Nothing here is committed:
# the root lives in /tmp and is reused while it is there (a ready marker is written last, so an
# interrupted build is thrown away and redone, never half-used).
set -euo pipefail

root="${VFS_TRIXIE_ROOT:-/tmp/vfs-trixie-qemu}"
mirror="${VFS_TRIXIE_MIRROR:-http://deb.debian.org/debian}"

if [ -f "$root/.vfs-ready" ] && [ -x "$root/usr/bin/qemu-system-x86_64" ]; then
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "setup-migration-qemu: installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# Build beside the final place and rename at the end: a second set-up running meanwhile, or a
# killed one, never leaves a root that looks ready.
work="$root.build.$$"
trap 'rm -rf --one-file-system "$work"' EXIT
rm -rf --one-file-system "$work"
echo "setup-migration-qemu: debootstrapping trixie with qemu-system-x86 into $root (takes minutes)"
debootstrap --variant=minbase --include=qemu-system-x86 trixie "$work" "$mirror" >"$work.log" 2>&1 || {
  tail -n 30 "$work.log" >&2
  echo "setup-migration-qemu: debootstrap failed (full log: $work.log)" >&2
  exit 1
}
rm -f "$work.log"
# The apt caches are the bulk of the root and never used again.
rm -rf "$work/var/cache/apt/archives/"*.deb
chroot "$work" qemu-system-x86_64 --version >/dev/null
touch "$work/.vfs-ready"
rm -rf --one-file-system "$root"
mv "$work" "$root"
trap - EXIT
chroot "$root" qemu-system-x86_64 --version | head -n 1
