// Mounting and unmounting a local FUSE file system served by this process: open
// /dev/fuse, mount(2) it at the mountpoint with the fd in the mount data, and hand the fd
// to the request loop. Everything that can be checked is checked before mount(2) so a
// bad invocation fails with one clear line and nothing mounted. The permission model is
// the one the virtiofs guest driver always uses: the kernel client checks permissions
// (default_permissions) and the server runs creations with the caller's uid/gid.
import fs from 'node:fs';
import path from 'node:path';
import { constants as osConstants } from 'node:os';
import { SysError } from '../sys/libc.js';
import { mount, umount2, MNT_DETACH, MS_NODEV, MS_NOSUID, MS_RDONLY, UMOUNT_NOFOLLOW } from '../sys/mount-calls.js';

const { ENOENT, ENOTDIR, EBUSY, EPERM, ENOTCONN } = osConstants.errno;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

export const FUSE_DEVICE = '/dev/fuse';

export interface MountFuseOptions {
  /** Directory to mount on; must exist, be a directory and have nothing mounted on it. */
  mountpoint: string;
  /** Shown as the mount source in /proc/mounts (e.g. the shared dir). */
  sourceName: string;
  /** Let users other than the mounting one use the mount (allow_other). Default true. */
  allowOther?: boolean;
  /** Let the kernel check permissions from the attributes (default_permissions). Default true. */
  defaultPermissions?: boolean;
  /** Subtype in "fuse.<subtype>". Default "vfs". */
  subtype?: string;
  /** MS_NOSUID / MS_NODEV / MS_RDONLY on the mount. Defaults: true, true, false. */
  nosuid?: boolean;
  nodev?: boolean;
  readOnly?: boolean;
  /** Largest READ the kernel may send (max_read=); omitted when undefined. */
  maxRead?: number;
  /** Override the device path (tests). */
  devicePath?: string;
}

/** A mount refused before or by mount(2): a SysError whose message says what to do. */
export class FuseMountError extends SysError {
  constructor(syscall: string, errno: number, target: string, hint: string) {
    super(syscall, errno, target);
    this.name = 'FuseMountError';
    this.message = `${this.message}: ${hint}`;
  }
}

/** Undo the octal escapes (\040 space, \011 tab, \012 newline, \134 backslash) of mountinfo. */
function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points of this process's mount namespace, from /proc/self/mountinfo. */
export function mountPoints(): string[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length > 4) out.push(unescapeMountinfo(fields[4]));
  }
  return out;
}

/**
 * `dir` with its parent's symlinks resolved, without touching `dir` itself: a stat of a
 * FUSE mountpoint whose server has stopped would wait for an answer forever.
 */
function resolveWithoutTouching(dir: string): string {
  const abs = path.resolve(dir);
  try {
    return path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    return abs;
  }
}

/**
 * True when something is mounted exactly at `dir`. Never stats `dir` itself, so a
 * symlink as the last component is not followed (its parents are resolved).
 */
export function isMountPoint(dir: string): boolean {
  return mountPoints().includes(resolveWithoutTouching(dir));
}

function checkMountpoint(mountpoint: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(mountpoint);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FuseMountError('mount', ENOENT, mountpoint, 'mountpoint does not exist');
    if (code === 'ENOTCONN') {
      throw new FuseMountError('mount', ENOTCONN, mountpoint,
        `a dead FUSE mount is still there; run "umount -l ${mountpoint}" first`);
    }
    throw new FuseMountError('mount', osConstants.errno[code as keyof typeof osConstants.errno] ?? EPERM,
      mountpoint, 'cannot stat the mountpoint');
  }
  if (!st.isDirectory()) throw new FuseMountError('mount', ENOTDIR, mountpoint, 'mountpoint is not a directory');
  const real = resolveWithoutTouching(fs.realpathSync(mountpoint));
  if (mountPoints().includes(real)) {
    throw new FuseMountError('mount', EBUSY, mountpoint, 'something is already mounted there');
  }
  return real;
}

/**
 * Open /dev/fuse and mount it at opts.mountpoint. Returns the device fd (close-on-exec)
 * that the request loop reads; the kernel sends INIT on it right away.
 */
export function mountFuse(opts: MountFuseOptions): number {
  if (typeof process.geteuid === 'function' && process.geteuid() !== 0) {
    throw new FuseMountError('mount', EPERM, opts.mountpoint, 'mounting a FUSE file system needs root');
  }
  const target = checkMountpoint(opts.mountpoint);
  const device = opts.devicePath ?? FUSE_DEVICE;
  let fd: number;
  try {
    // libuv opens with O_CLOEXEC always.
    fd = fs.openSync(device, fs.constants.O_RDWR);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const errno = Math.abs(e.errno ?? ENOENT);
    const hint = e.code === 'ENOENT' ? 'no FUSE device (modprobe fuse, or give the container /dev/fuse)' : 'cannot open the FUSE device';
    throw new FuseMountError('open', errno, device, hint);
  }
  const rootMode = (S_IFDIR & S_IFMT).toString(8);
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const data = [`fd=${fd}`, `rootmode=${rootMode}`, `user_id=${uid}`, `group_id=${gid}`];
  if (opts.allowOther ?? true) data.push('allow_other');
  if (opts.defaultPermissions ?? true) data.push('default_permissions');
  if (opts.maxRead !== undefined) data.push(`max_read=${opts.maxRead}`);
  let flags = 0;
  if (opts.nosuid ?? true) flags |= MS_NOSUID;
  if (opts.nodev ?? true) flags |= MS_NODEV;
  if (opts.readOnly ?? false) flags |= MS_RDONLY;
  try {
    mount(opts.sourceName, target, `fuse.${opts.subtype ?? 'vfs'}`, flags, data.join(','));
  } catch (err) {
    fs.closeSync(fd);
    if (err instanceof SysError) {
      throw new FuseMountError('mount', err.errno, opts.mountpoint, 'the kernel refused the FUSE mount');
    }
    throw err;
  }
  return fd;
}

/**
 * Detach the mount at `mountpoint` (MNT_DETACH: files still open keep being served until
 * closed, then the kernel ends the connection and the loop reads ENODEV).
 */
export function unmountFuse(mountpoint: string): void {
  umount2(resolveWithoutTouching(mountpoint), MNT_DETACH | UMOUNT_NOFOLLOW);
}

/**
 * Unmount when mounted; returns whether something was unmounted. Never throws for "not
 * mounted", and never stats the mountpoint (its server may already be gone).
 */
export function unmountIfMounted(mountpoint: string): boolean {
  if (!isMountPoint(mountpoint)) return false;
  try {
    umount2(resolveWithoutTouching(mountpoint), MNT_DETACH | UMOUNT_NOFOLLOW);
    return true;
  } catch (err) {
    if (err instanceof SysError && (err.errno === osConstants.errno.EINVAL || err.errno === ENOENT)) return false;
    throw err;
  }
}
