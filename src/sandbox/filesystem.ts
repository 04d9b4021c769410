// The file-system half of the sandbox, run by the daemon's main thread before any request is
// served: make the shared directory the only file system the daemon can name. Namespace mode
// (we are already in fresh mount/pid/... namespaces, created by unshare before Node started)
// pivots into a bind mount of the shared dir and detaches the old root; chroot mode chroots
// (root only, host namespaces); none mode only opens the shared dir. In every mode the
// /proc/self/fd directory is opened first (O_PATH) because the file server reopens inodes
// through it and it is unreachable afterwards. Only namespace mode can confine that fd (a
// bind mount of just the fd directory); in chroot mode ".." from it leads out of the chroot,
// which is why chroot mode does not contain a daemon that runs an attacker's code.
import fs from 'node:fs';
import { logger } from '../log.js';
import { MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_SLAVE, chroot, mount, pivotRoot, umount2 } from '../sys/mount-calls.js';
import { SandboxError, sandboxStep as step } from './errors.js';

const log = logger('sandbox');

export type SandboxMode = 'namespace' | 'chroot' | 'none';

export interface SandboxPlan {
  mode: SandboxMode;
  /** The directory to serve (absolute or relative to the cwd; resolved here). */
  sharedDir: string;
  /** Capability edits, virtiofsd syntax (used by dropPrivileges). */
  modcaps?: string;
  /** RLIMIT_NOFILE (used by dropPrivileges). */
  rlimitNofile?: number;
}

export interface SandboxResult {
  /** O_PATH|O_DIRECTORY fd of the shared dir (which is "/" after namespace/chroot). */
  rootFd: number;
  /** O_PATH fd of /proc/self/fd, opened before the sandbox closed the rest of the host. */
  procSelfFd: number;
}

// O_PATH is missing from fs.constants; its value is the same on x86_64 and aarch64.
const O_PATH = 0o10000000;
const { O_DIRECTORY, O_NOFOLLOW, O_RDONLY } = fs.constants;

/** open(2) through libuv (always O_CLOEXEC). */
function openPath(path: string, extra = 0): number {
  return fs.openSync(path, O_PATH | O_DIRECTORY | O_RDONLY | extra);
}

function openProcSelfFd(): number {
  return step('open /proc/self/fd', () => openPath('/proc/self/fd', O_NOFOLLOW));
}

function resolveSharedDir(dir: string): string {
  return step(`resolve shared dir ${dir}`, () => {
    const real = fs.realpathSync(dir);
    if (!fs.statSync(real).isDirectory()) throw new SandboxError(`resolve shared dir ${dir}`, 20 /* ENOTDIR */, `${dir} is not a directory`);
    return real;
  });
}

function mountFreshProc(): void {
  try {
    step('mount proc on /proc', () => mount('proc', '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC));
  } catch (err) {
    // In a user namespace the kernel refuses a new proc when the existing one has parts
    // hidden by over-mounts (container runtimes mask /proc/kcore etc.). The old proc is
    // still correct for /proc/self (the process is visible in the parent pid namespace),
    // and it is detached with the old root anyway.
    if (err instanceof SandboxError && err.code === 'EPERM') {
      log.warn('could not mount a fresh proc (EPERM: /proc is partly masked, as in containers); using the existing /proc for /proc/self/fd');
      return;
    }
    throw err;
  }
}

// Per-mount flags not exported by mount-calls (linux/mount.h).
const MS_NOATIME = 0x400;
const MS_NODIRATIME = 0x800;
const MS_RELATIME = 0x200000;
const MS_STRICTATIME = 0x1000000;
const MOUNT_OPTION_FLAGS: Record<string, number> = {
  ro: MS_RDONLY, nosuid: MS_NOSUID, nodev: MS_NODEV, noexec: MS_NOEXEC,
  noatime: MS_NOATIME, nodiratime: MS_NODIRATIME, relatime: MS_RELATIME, strictatime: MS_STRICTATIME,
};

function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points at or under `dir` in our namespace, with their per-mount flags. */
function mountsUnder(dir: string): { mountPoint: string; flags: number }[] {
  const out: { mountPoint: string; flags: number }[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 6) continue;
    const mp = unescapeMountinfo(f[4]);
    if (mp !== dir && !mp.startsWith(dir.endsWith('/') ? dir : `${dir}/`)) continue;
    let flags = 0;
    for (const opt of f[5].split(',')) flags |= MOUNT_OPTION_FLAGS[opt] ?? 0;
    out.push({ mountPoint: mp, flags });
  }
  return out;
}

/**
 * The file server never opens device nodes or executes files on the host (a guest opens
 * its device nodes in its own kernel), so the share is remounted nodev+nosuid in our
 * namespace: a compromised daemon that mknods a disk's device node cannot open it.
 * Existing flags are kept (the kernel refuses to drop locked ones in a user namespace).
 */
function hardenShareMounts(sharedDir: string): void {
  for (const m of mountsUnder(sharedDir)) {
    step(`remount ${m.mountPoint} nodev,nosuid`, () => mount(null, m.mountPoint, null, MS_REMOUNT | MS_BIND | m.flags | MS_NODEV | MS_NOSUID));
  }
}

function enterNamespace(sharedDir: string): SandboxResult {
  step('mount / MS_SLAVE|MS_REC', () => mount(null, '/', null, MS_SLAVE | MS_REC));
  mountFreshProc();
  const pivot = sharedDir !== '/';
  if (pivot) {
    step(`bind-mount ${sharedDir} on itself`, () => mount(sharedDir, sharedDir, null, MS_BIND | MS_REC));
    hardenShareMounts(sharedDir);
  }
  // Bind our fd directory over /proc and keep that: once the old root is detached, ".." at
  // the root of this detached mount stays there, so the kept fd reaches our fds only, not
  // the rest of procfs (/proc/sys is writable by uid 0 whatever its capabilities).
  step('bind-mount /proc/self/fd on /proc', () => mount('/proc/self/fd', '/proc', null, MS_BIND));
  const procSelfFd = step('open /proc (our fd directory) O_PATH', () => openPath('/proc', O_NOFOLLOW));
  if (pivot) {
    step(`chdir ${sharedDir}`, () => process.chdir(sharedDir));
    step('pivot_root . .', () => pivotRoot('.', '.'));
    step('umount2 old root MNT_DETACH', () => umount2('.', MNT_DETACH));
  } else {
    log.debug('shared dir is /, no pivot_root');
  }
  step('chdir /', () => process.chdir('/'));
  const rootFd = step('open / O_PATH', () => openPath('/'));
  return { rootFd, procSelfFd };
}

function enterChroot(sharedDir: string): SandboxResult {
  if (process.geteuid?.() !== 0) throw new SandboxError('chroot', 1 /* EPERM */, '--sandbox chroot needs root; use --sandbox namespace when unprivileged');
  const procSelfFd = openProcSelfFd();
  step(`chroot ${sharedDir}`, () => chroot(sharedDir));
  step('chdir /', () => process.chdir('/'));
  const rootFd = step('open / O_PATH', () => openPath('/'));
  return { rootFd, procSelfFd };
}

function enterNone(sharedDir: string): SandboxResult {
  log.warn('--sandbox none: nothing isolates the daemon from the host; a compromised daemon has all of its user\'s access');
  const procSelfFd = openProcSelfFd();
  const rootFd = step(`open ${sharedDir} O_PATH`, () => openPath(sharedDir));
  return { rootFd, procSelfFd };
}

/**
 * Isolate the file system view of this process and return the two fds the file server
 * needs. Must run on the main thread before any request is served. Throws SandboxError
 * (step + errno) on any failure: the caller must exit non-zero.
 */
export function enterSandbox(plan: SandboxPlan): SandboxResult {
  const sharedDir = resolveSharedDir(plan.sharedDir);
  log.debug(`mode ${plan.mode}, shared dir ${sharedDir}`);
  switch (plan.mode) {
    case 'namespace': return enterNamespace(sharedDir);
    case 'chroot': return enterChroot(sharedDir);
    case 'none': return enterNone(sharedDir);
    default: throw new SandboxError('plan', 22 /* EINVAL */, `unknown sandbox mode '${String(plan.mode)}'`);
  }
}
