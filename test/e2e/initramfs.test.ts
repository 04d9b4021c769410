// The guest image the QEMU tests boot, checked without booting it: the archive holds busybox,
// an executable /init and the virtio-fs modules of the host's Debian kernel, listed in an order
// where every module comes after the modules it depends on (a wrong order fails in the guest
// with "unknown symbol", far from its cause).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, findKernel } from './guest.js';

const SCRIPT = path.join(REPO_ROOT, 'scripts/build-initramfs.sh');

function listArchive(file: string): string[] {
  const out = execFileSync('sh', ['-c', 'gzip -dc "$1" | cpio --quiet -it', 'sh', file], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.length > 0);
}

function extract(file: string, dir: string): void {
  execFileSync('sh', ['-c', 'cd "$2" && gzip -dc "$1" | cpio --quiet -idm', 'sh', file, dir]);
}

test('initramfs: busybox, /init, and the virtio-fs modules in dependency order for the installed kernel', (t) => {
  const kernel = findKernel();
  const version = path.basename(kernel).replace(/^vmlinuz-/, '');
  t.true(fs.existsSync(path.join('/lib/modules', version)));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-initramfs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const base = path.join(dir, 'base.cpio.gz');
  execFileSync('bash', [SCRIPT, '--out', base], { stdio: ['ignore', 'ignore', 'pipe'] });
  const entries = listArchive(base);
  for (const e of ['init', 'bin/busybox', 'bin/sh', 'lib/modules/load-order', 'lib/modules/virtiofs.ko', 'lib/modules/fuse.ko', 'lib/modules/virtio_pci.ko']) {
    t.true(entries.includes(e), `${e} missing from the archive`);
  }
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  extract(base, root);
  t.truthy(fs.statSync(path.join(root, 'init')).mode & 0o100);
  const order = fs.readFileSync(path.join(root, 'lib/modules/load-order'), 'utf8').trim().split('\n');
  t.deepEqual([...order].sort(), ['fuse', 'virtio', 'virtio_pci', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_ring', 'virtiofs']);
  // Each module's dependencies, as the kernel's modules.dep says, load before it.
  const dep = fs.readFileSync(path.join('/lib/modules', version, 'modules.dep'), 'utf8');
  const name = (p: string) => path.basename(p).replace(/\.ko.*$/, '');
  for (const line of dep.split('\n')) {
    const [mod, deps] = line.split(':');
    if (mod === undefined || deps === undefined || !order.includes(name(mod))) continue;
    for (const d of deps.trim().split(/\s+/).filter((x) => x.length > 0)) {
      t.true(order.indexOf(name(d)) < order.indexOf(name(mod)), `${name(d)} must load before ${name(mod)}`);
    }
  }
  // Modules are stored uncompressed (busybox insmod cannot read .ko.xz/.ko.zst): ELF magic.
  t.is(fs.readFileSync(path.join(root, 'lib/modules/virtiofs.ko')).subarray(0, 4).toString('latin1'), '\x7fELF');

  // A per-boot script is appended as a second archive member, leaving the base untouched.
  const script = path.join(dir, 'guest.sh');
  fs.writeFileSync(script, 'echo hi\n');
  const withScript = path.join(dir, 'initrd.cpio.gz');
  execFileSync('bash', [SCRIPT, '--base', base, '--script', script, '--out', withScript]);
  const baseBytes = fs.readFileSync(base);
  const full = fs.readFileSync(withScript);
  t.true(full.subarray(0, baseBytes.length).equals(baseBytes), 'the base image is a prefix');
  const member = path.join(dir, 'member.cpio.gz');
  fs.writeFileSync(member, full.subarray(baseBytes.length));
  t.deepEqual(listArchive(member), ['guest.sh']);
});
