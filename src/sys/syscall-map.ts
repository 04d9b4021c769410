// Which system calls each binding of src/sys (and each node:fs call the daemon makes
// itself) issues on x86_64 and aarch64, and whether the daemon can reach it after its
// seccomp filter is installed. This table is what `vfs-launch policy coverage` and
// test/policy-coverage.test.ts check policies/ against: a serving-phase binding whose
// syscall the policy does not allow is a guest-triggered SIGSYS waiting to happen.
// The test also checks the table is complete: every function a src/sys module exports
// has an entry, and every src/sys import (and fs.*Sync call) of a module that runs after
// the filter names a serving-phase entry. glibc 2.36 (Debian 12) decides the syscall a
// libc function issues; where it differs by arch (poll -> ppoll, epoll_wait ->
// epoll_pwait, renameat2 with flags 0 -> renameat on x86_64) the entry says so.

/** 'serving': may run after the filter is installed. 'setup': only before (launcher, sandbox stage, tests). */
export type BindingPhase = 'setup' | 'serving';

/** One syscall a binding issues; `args` are the fixed arguments it always passes (undefined: varies). */
export interface SyscallUse {
  readonly name: string;
  readonly args?: readonly (bigint | undefined)[];
}

export interface BindingEntry {
  /** src/sys module (file name without .ts) or 'node:fs'. */
  readonly module: string;
  /** Exported function or class name (for node:fs: the fs function). */
  readonly binding: string;
  readonly phase: BindingPhase;
  readonly x86_64: readonly SyscallUse[];
  readonly aarch64: readonly SyscallUse[];
  /** Why, where it is not obvious from the names. */
  readonly note?: string;
}

type Calls = string | readonly (string | SyscallUse)[];

function uses(c: Calls): SyscallUse[] {
  const list = typeof c === 'string' ? [c] : c;
  return list.map((u) => (typeof u === 'string' ? { name: u } : u));
}

const entries: BindingEntry[] = [];

/** A binding that issues the same syscalls on both arches. */
function bind(module: string, binding: string, phase: BindingPhase, calls: Calls, note?: string): void {
  entries.push({ module, binding, phase, x86_64: uses(calls), aarch64: uses(calls), note });
}

/** A binding whose syscalls differ between x86_64 and aarch64. */
function bindArch(module: string, binding: string, phase: BindingPhase, x86: Calls, arm: Calls, note?: string): void {
  entries.push({ module, binding, phase, x86_64: uses(x86), aarch64: uses(arm), note });
}

const F_GETFL = 3n;
const F_SETFL = 4n;

// cred-calls: raw per-thread syscalls (glibc's wrappers would broadcast to every thread).
bind('cred-calls', 'setresuidThread', 'serving', 'setresuid');
bind('cred-calls', 'setresgidThread', 'serving', 'setresgid');
bind('cred-calls', 'clearGroupsThread', 'serving', 'setgroups');
bind('cred-calls', 'setgroupsThread', 'serving', 'setgroups');
bind('cred-calls', 'setUmask', 'serving', 'umask');
bind('cred-calls', 'unshareFsThread', 'setup', [{ name: 'unshare', args: [0x200n] }], 'CLONE_FS only, before the filter (the serving thread\'s own umask, for --posix-acl)');

// event-calls
bind('event-calls', 'eventfd', 'setup', 'eventfd2', 'the stop eventfd is made before the sandbox; kick/call eventfds come from the frontend');
bind('event-calls', 'closeFd', 'serving', 'close');
bind('event-calls', 'eventfdWrite', 'serving', 'write');
bind('event-calls', 'eventfdRead', 'serving', 'read');
bind('event-calls', 'pipeCloexec', 'setup', 'pipe2');
bindArch('event-calls', 'Epoll', 'serving', ['epoll_create1', 'epoll_ctl', 'epoll_wait'], ['epoll_create1', 'epoll_ctl', 'epoll_pwait'],
  'glibc implements epoll_wait with epoll_pwait where the kernel has no epoll_wait (aarch64)');

// file-calls: the passthrough core's *at calls.
bind('file-calls', 'openat', 'serving', 'openat');
bind('file-calls', 'close', 'serving', 'close');
bind('file-calls', 'statx', 'serving', 'statx');
bind('file-calls', 'mkdirat', 'serving', 'mkdirat');
bind('file-calls', 'mknodat', 'serving', 'mknodat');
bind('file-calls', 'symlinkat', 'serving', 'symlinkat');
bind('file-calls', 'readlinkat', 'serving', 'readlinkat');
bind('file-calls', 'linkat', 'serving', 'linkat');
bind('file-calls', 'unlinkat', 'serving', 'unlinkat');
bindArch('file-calls', 'renameat2', 'serving', ['renameat2', 'renameat'], ['renameat2'],
  'glibc 2.36 issues renameat for flags 0 where the kernel has renameat (x86_64)');
bind('file-calls', 'fchownat', 'serving', 'fchownat');
bind('file-calls', 'fchown', 'serving', 'fchown');
bind('file-calls', 'fchmodat', 'serving', 'fchmodat');
bind('file-calls', 'fchmod', 'serving', 'fchmod');
bind('file-calls', 'utimensat', 'serving', 'utimensat');
bind('file-calls', 'futimens', 'serving', 'utimensat', 'glibc: futimens(fd) is utimensat(fd, NULL, ...)');
bind('file-calls', 'ftruncate', 'serving', 'ftruncate');
bind('file-calls', 'fallocate', 'serving', 'fallocate');
bind('file-calls', 'lseek', 'serving', 'lseek');
bind('file-calls', 'copyFileRange', 'serving', 'copy_file_range');
bind('file-calls', 'getdents64', 'serving', 'getdents64');
bind('file-calls', 'preadvAddr', 'serving', 'preadv', 'vhost READ into guest memory by host address (glibc preadv: the preadv syscall)');
bind('file-calls', 'pwritevAddr', 'serving', 'pwritev', 'vhost WRITE from guest memory by host address (glibc pwritev: the pwritev syscall)');
bind('file-calls', 'fsync', 'serving', ['fsync', 'fdatasync']);
bind('file-calls', 'syncfs', 'serving', 'syncfs');
bind('file-calls', 'fstatfs', 'serving', 'fstatfs');
bind('file-calls', 'dup', 'serving', 'dup');
bind('file-calls', 'fgetxattr', 'serving', 'fgetxattr');
bind('file-calls', 'fsetxattr', 'serving', 'fsetxattr');
bind('file-calls', 'flistxattr', 'serving', 'flistxattr');
bind('file-calls', 'fremovexattr', 'serving', 'fremovexattr');
bind('file-calls', 'getxattrAt', 'serving', 'getxattrat');
bind('file-calls', 'setxattrAt', 'serving', 'setxattrat');
bind('file-calls', 'listxattrAt', 'serving', 'listxattrat');
bind('file-calls', 'removexattrAt', 'serving', 'removexattrat');
bind('file-calls', 'nameToHandleAt', 'serving', 'name_to_handle_at');
bind('file-calls', 'openByHandleAt', 'serving', 'open_by_handle_at');

// fuse-dev-calls: the /dev/fuse loop.
bind('fuse-dev-calls', 'readInto', 'serving', 'read');
bind('fuse-dev-calls', 'writeFrom', 'serving', 'write');
bind('fuse-dev-calls', 'setNonBlocking', 'serving', [{ name: 'fcntl', args: [undefined, F_GETFL] }, { name: 'fcntl', args: [undefined, F_SETFL] }]);

// libc: helpers without a syscall of their own.
for (const b of ['errnoName', 'lastErrno', 'check', 'checkBig', 'errnoOf']) bind('libc', b, 'serving', []);

// memory-calls: guest memory.
bind('memory-calls', 'mmapFd', 'serving', 'mmap');
bind('memory-calls', 'munmap', 'serving', 'munmap');
bind('memory-calls', 'viewBuffer', 'serving', [], 'koffi.view over mapped memory: no syscall');
bind('memory-calls', 'memfdCreate', 'setup', 'memfd_create', 'the test frontend');
bind('memory-calls', 'ftruncate', 'setup', 'ftruncate', 'the test frontend sizes its memfd');
bind('memory-calls', 'sealShrink', 'serving', [{ name: 'fcntl', args: [undefined, 1034n] }, { name: 'fcntl', args: [undefined, 1033n] }],
  'F_GET_SEALS, then F_ADD_SEALS(F_SEAL_SHRINK), on each guest memory fd before it is mapped');

// sigbus-guard: installed by the device worker before the filter; later calls return the cached guard.
bind('sigbus-guard', 'sigbusGuard', 'serving', ['rt_sigaction', 'mmap', 'mprotect', 'rt_sigreturn'],
  'install: sigaction query and install, data and code pages, mprotect(PROT_READ|PROT_EXEC); the machine-code handler itself: mmap(MAP_FIXED|MAP_ANONYMOUS) over the faulting page, rt_sigaction(SIGBUS, SIG_DFL) for a fault outside guest memory, rt_sigreturn');
bind('sigbus-guard', 'lastGuardError', 'serving', []);

// mount-calls: the sandbox stage and the launcher's FUSE mount.
bind('mount-calls', 'mount', 'setup', 'mount');
bind('mount-calls', 'umount2', 'setup', 'umount2');
bind('mount-calls', 'pivotRoot', 'setup', 'pivot_root');
bind('mount-calls', 'chroot', 'setup', 'chroot');
bind('mount-calls', 'chdir', 'setup', 'chdir');
bind('mount-calls', 'fchdir', 'setup', 'fchdir');

// exec-calls: vfs-launch replacing itself with the daemon's start-up chain (never in the daemon).
bind('exec-calls', 'execve', 'setup', 'execve');
bind('exec-calls', 'keepAcrossExec', 'setup', 'fcntl', 'F_GETFD then F_SETFD on the fds handed to the daemon');
bind('lock-calls', 'flock', 'setup', 'flock', "vfs-launch locks <socket>.pid before binding the socket");
bindArch('exec-calls', 'dupTo', 'setup', 'dup2', 'dup3', 'aarch64 has no dup2: glibc issues dup3 with flags 0');

// process-calls: privileges, before the filter.
bind('process-calls', 'prctl', 'setup', 'prctl');
bind('process-calls', 'gettid', 'setup', 'gettid');
bind('process-calls', 'capget', 'setup', 'capget');
bind('process-calls', 'capset', 'setup', 'capset');
bind('process-calls', 'capBoundingHas', 'setup', 'prctl');
bind('process-calls', 'capBoundingDrop', 'setup', 'prctl');
bind('process-calls', 'ambientClearAll', 'setup', 'prctl');
bind('process-calls', 'setNoNewPrivs', 'setup', 'prctl');
bind('process-calls', 'getNoNewPrivs', 'setup', 'prctl');
bind('process-calls', 'getrlimit', 'setup', 'prlimit64');
bind('process-calls', 'setrlimit', 'setup', 'prlimit64');

// seccomp-calls: installing the filter is the last setup step.
bind('seccomp-calls', 'setNoNewPrivs', 'setup', 'prctl');
bind('seccomp-calls', 'getNoNewPrivs', 'setup', 'prctl');
bind('seccomp-calls', 'getSeccompMode', 'setup', 'prctl');
bind('seccomp-calls', 'seccompSetModeFilter', 'setup', 'seccomp');
bind('seccomp-calls', 'seccompActionAvailable', 'setup', 'seccomp');

// socket-calls: the vhost-user connection.
bind('socket-calls', 'closeFd', 'serving', 'close');
bind('socket-calls', 'shutdownSocket', 'setup', 'shutdown', 'the test frontend');
bind('socket-calls', 'recvMsg', 'serving', 'recvmsg');
bind('socket-calls', 'sendMsg', 'serving', 'sendmsg');
bind('socket-calls', 'sendAll', 'serving', 'sendmsg');
bindArch('socket-calls', 'pollIn', 'serving', 'poll', 'ppoll', 'aarch64 has no poll syscall; glibc issues ppoll');
bindArch('socket-calls', 'pollFd', 'serving', 'poll', 'ppoll', 'aarch64 has no poll syscall; glibc issues ppoll');
bind('socket-calls', 'groupId', 'setup', ['openat', 'read', 'close'], 'getgrnam reads /etc/group (--socket-group)');
bind('socket-calls', 'listenUnix', 'setup', ['socket', 'bind', 'listen', 'fchownat', 'fchmodat', 'renameat']);
bind('socket-calls', 'acceptConnection', 'serving', 'accept4', 'a new frontend after a disconnect');
bind('socket-calls', 'connectUnix', 'setup', ['socket', 'connect'], 'the test frontend');

// syslog-calls: --syslog.
bind('syslog-calls', 'connectSyslog', 'setup', ['socket', 'connect'], 'connected to /dev/log before the sandbox');
bindArch('syslog-calls', 'sendSyslog', 'serving',
  [{ name: 'sendto', args: [undefined, undefined, undefined, undefined, 0n, 0n] }, 'poll'],
  [{ name: 'sendto', args: [undefined, undefined, undefined, undefined, 0n, 0n] }, 'ppoll'],
  'glibc send() is sendto(fd, buf, len, flags, NULL, 0); poll (ppoll on aarch64) only if the socket says EAGAIN');

// log-calls: every log line, written by the thread that logs it (src/log.ts), on either thread.
bind('log-calls', 'writeFully', 'serving', 'write', 'and waitWritable after EAGAIN');
bindArch('log-calls', 'waitWritable', 'serving', 'poll', 'ppoll', 'a full non-blocking stderr pipe; aarch64 has no poll syscall');
bindArch('log-calls', 'writeText', 'serving', ['write', 'poll'], ['write', 'ppoll'], 'writeFully of the encoded line');

// node:fs calls made by modules that run after the filter (libuv 1.46 in Node 20).
bind('node:fs', 'readvSync', 'serving', ['preadv', 'pread64'], 'libuv: one buffer at a position -> pread64, several -> preadv');
bind('node:fs', 'writevSync', 'serving', ['pwritev', 'pwrite64'], 'libuv: as readvSync');
bind('node:fs', 'readSync', 'serving', ['read'], 'migration state pipe (vhost/state-transfer.ts): position null -> read');
bind('node:fs', 'writeSync', 'serving', ['write'], 'migration state pipe (vhost/state-transfer.ts): position undefined -> write');
bind('node:fs', 'fstatSync', 'serving', ['statx'], 'libuv uv_fs_fstat tries statx(fd, "", AT_EMPTY_PATH) first (guest memory region fds)');

export const SYSCALL_MAP: readonly BindingEntry[] = entries;

/**
 * Modules (paths under src/, without extension) that run after the filter is installed:
 * everything they import from src/sys must be a serving-phase binding. src/daemon/main.ts
 * and worker.ts straddle the filter and are checked by review, not by this list.
 */
export const SERVING_MODULES: readonly string[] = [
  'fs/*', 'vhost/*', 'fuse-dev/fuse-loop', 'log', 'daemon/serve',
];

export function bindingEntry(module: string, binding: string): BindingEntry | undefined {
  return entries.find((e) => e.module === module && e.binding === binding);
}
