#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine (as root): the Debian packages the daemon,
# the tests and the QEMU demo need (only those missing), then npm packages and the build.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# libvirt-daemon (libvirtd, virtlogd), libvirt-daemon-driver-qemu and libvirt-clients (virsh):
# the smallest set that runs a libvirt-managed guest with vfs-launch as its virtiofsd
# (test/e2e/libvirt.test.ts starts its own libvirtd; libvirt-daemon-system is not needed).
for pkg in util-linux uidmap passwd qemu-system-x86 linux-image-amd64 busybox-static cpio attr acl strace fuse3 python3 bubblewrap \
           libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients; do
  have "$pkg" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian 13 QEMU the live-migration test needs (Debian 12's 7.2 cannot migrate
# vhost-user-fs): a debootstrapped root in /tmp, built once, reused while present.
bash scripts/setup-migration-qemu.sh
# The Debian 13 kernel (6.12) for the guest that drives several request queues
# (test/e2e/qemu-queue-threads.test.ts): unpacked from trixie's package into /tmp, once.
bash scripts/setup-trixie-kernel.sh

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run build
