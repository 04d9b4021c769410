// Everything vfs-launch checks against the machine before it creates or spawns anything:
// the shared dir, the socket's directory, an inherited fd, the FUSE mountpoint, privileges
// each mode needs, user-namespace support, capability names, the open-file limit and the
// seccomp policy. Each failure is one UsageError naming the option and the fix (exit 2).
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../daemon/options.js';
import { CapabilityError, resolveCapabilities } from '../sandbox/capabilities.js';
import type { LaunchPlan } from './args.js';
import type { IdMap } from './idmap.js';

/** sun_path is 108 bytes including the terminating NUL. */
const UNIX_PATH_MAX = 107;

function statOrUndefined(p: string): fs.Stats | undefined {
  try {
    return fs.statSync(p);
  } catch {
    return undefined;
  }
}

function readSysctl(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function onPath(program: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    try {
      fs.accessSync(path.join(dir, program), fs.constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

export function isRoot(): boolean {
  return process.geteuid?.() === 0;
}

function checkSharedDir(dir: string): void {
  const st = statOrUndefined(dir);
  if (st === undefined) throw new UsageError(`--shared-dir: '${dir}' does not exist; create it or give an existing directory`);
  if (!st.isDirectory()) throw new UsageError(`--shared-dir: '${dir}' is not a directory; give a directory`);
}

function checkSocketPath(p: string): void {
  if (Buffer.byteLength(path.resolve(p)) > UNIX_PATH_MAX) {
    throw new UsageError(`--socket-path: '${p}' is longer than the ${UNIX_PATH_MAX} bytes a unix socket path may have; use a shorter path`);
  }
  const dir = path.dirname(path.resolve(p));
  const st = statOrUndefined(dir);
  if (st === undefined) throw new UsageError(`--socket-path: directory '${dir}' does not exist; create it first`);
  if (!st.isDirectory()) throw new UsageError(`--socket-path: '${dir}' is not a directory; put the socket in a directory`);
  const existing = statOrUndefined(p);
  if (existing !== undefined && !existing.isSocket()) {
    throw new UsageError(`--socket-path: '${p}' exists and is not a socket; remove it or choose another path`);
  }
}

function checkInheritedFd(fd: number): void {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    throw new UsageError(`--fd: ${fd} is not an open file descriptor; pass the fd of a listening unix socket the caller opened`);
  }
  if (!st.isSocket()) throw new UsageError(`--fd: ${fd} is not a socket; pass the fd of a listening unix socket`);
}

function checkMountpoint(dir: string): void {
  const st = statOrUndefined(dir);
  if (st === undefined) throw new UsageError(`--mountpoint: '${dir}' does not exist; create the directory first`);
  if (!st.isDirectory()) throw new UsageError(`--mountpoint: '${dir}' is not a directory; give a directory to mount on`);
  if (!isRoot()) throw new UsageError('--mountpoint: mounting a FUSE file system needs root; run vfs-launch as root');
  if (statOrUndefined('/dev/fuse') === undefined) {
    throw new UsageError('--mountpoint: /dev/fuse is missing; load the fuse module (modprobe fuse) or give the container the device');
  }
}

/** Can this (unprivileged) user create a user namespace? undefined when yes, else why not. */
export function userNamespaceBlocker(): string | undefined {
  const max = readSysctl('/proc/sys/user/max_user_namespaces');
  if (max === '0') return 'user.max_user_namespaces is 0; set it above 0 (sysctl -w user.max_user_namespaces=15000)';
  if (readSysctl('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
    return 'kernel.unprivileged_userns_clone is 0; enable it (sysctl -w kernel.unprivileged_userns_clone=1) or run as root';
  }
  if (readSysctl('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    return 'AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1); allow them for node or run as root';
  }
  return undefined;
}

function checkSandbox(plan: LaunchPlan): void {
  const mode = plan.config.sandbox;
  if (mode === 'chroot' && !isRoot()) {
    throw new UsageError('--sandbox chroot: needs root; run as root or use --sandbox namespace (a user namespace) when unprivileged');
  }
  if (mode !== 'namespace') return;
  if (!onPath('unshare')) throw new UsageError('--sandbox namespace: util-linux unshare is not on PATH; install util-linux');
  const needsUserNs = !isRoot() || plan.uidMap !== undefined || plan.gidMap !== undefined;
  if (needsUserNs && !isRoot()) {
    const why = userNamespaceBlocker();
    if (why !== undefined) throw new UsageError(`--sandbox namespace: unprivileged user namespaces are not available: ${why}`);
  }
  if (plan.uidMap !== undefined && !onPath('newuidmap')) {
    throw new UsageError('--uid-map: needs newuidmap; install the uidmap package (apt-get install uidmap)');
  }
  if (plan.gidMap !== undefined && !onPath('newgidmap')) {
    throw new UsageError('--gid-map: needs newgidmap; install the uidmap package (apt-get install uidmap)');
  }
  if (plan.uidMap !== undefined) checkMapAllowed('--uid-map', plan.uidMap);
  if (plan.gidMap !== undefined) checkMapAllowed('--gid-map', plan.gidMap);
}

/** Ranges /etc/subuid (or subgid) grants the calling user, by name or number. */
function subordinateRanges(file: string, ownId: number, ownName: string | undefined): { start: number; count: number }[] {
  const text = readSysctl(file) ?? '';
  const out: { start: number; count: number }[] = [];
  for (const line of text.split('\n')) {
    const [who, start, count] = line.split(':');
    if (who === undefined || start === undefined || count === undefined) continue;
    if (who === String(ownId) || (ownName !== undefined && who === ownName)) out.push({ start: Number(start), count: Number(count) });
  }
  return out;
}

function userName(uid: number): string | undefined {
  for (const line of (readSysctl('/etc/passwd') ?? '').split('\n')) {
    const f = line.split(':');
    if (f.length > 2 && Number(f[2]) === uid) return f[0];
  }
  return undefined;
}

/** newuidmap/newgidmap map the caller's own id freely; other ids need a subordinate range. */
function checkMapAllowed(option: '--uid-map' | '--gid-map', map: IdMap): void {
  const uid = process.geteuid?.() ?? 0;
  const own = option === '--uid-map' ? uid : (process.getegid?.() ?? 0);
  if (map.count === 1 && map.outer === own) return;
  const file = option === '--uid-map' ? '/etc/subuid' : '/etc/subgid';
  const name = userName(uid);
  const ranges = subordinateRanges(file, uid, name);
  const end = map.outer + map.count;
  if (ranges.some((r) => map.outer >= r.start && end <= r.start + r.count)) return;
  const who = name ?? String(uid);
  const tool = option === '--uid-map' ? '--add-subuids' : '--add-subgids';
  throw new UsageError(`${option}: ${file} grants ${who} no range covering ${map.outer}-${end - 1}; add one (usermod ${tool} ${map.outer}-${end - 1} ${who}) or map only your own id (:0:${own}:1:)`);
}

function checkRlimit(n: number | undefined): void {
  if (n === undefined || n === 0) return;
  const nrOpen = Number(readSysctl('/proc/sys/fs/nr_open') ?? '1048576');
  if (n > nrOpen) throw new UsageError(`--rlimit-nofile: ${n} is above fs.nr_open (${nrOpen}); give at most ${nrOpen}, or 0 to leave the limit unchanged`);
}

/** Check the plan against the machine. Throws UsageError; touches nothing. */
export function validatePlan(plan: LaunchPlan): void {
  const cfg = plan.config;
  checkSharedDir(cfg.sharedDir);
  if (cfg.socketPath !== undefined) checkSocketPath(cfg.socketPath);
  if (cfg.listenFd !== undefined) checkInheritedFd(cfg.listenFd);
  if (plan.mountpoint !== undefined) checkMountpoint(plan.mountpoint);
  checkSandbox(plan);
  try {
    resolveCapabilities(cfg.modcaps);
  } catch (err) {
    if (err instanceof CapabilityError) throw new UsageError(err.message);
    throw err;
  }
  checkRlimit(cfg.rlimitNofile);
}
