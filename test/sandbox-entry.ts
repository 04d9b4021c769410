// A stand-in daemon for the sandbox tests: takes the daemon's sandbox options, runs
// enterSandbox + dropPrivileges exactly as the daemon's main thread does, prints one JSON
// line of what it sees from inside, then waits for SIGTERM so a test can inspect
// /proc/PID from outside. Started through vfs-launch (VFS_DAEMON_ENTRY) or directly;
// VFS_TEST_PROBE_CREATE=NAME makes it create a file in the share after the drop.
import fs from 'node:fs';
import { enterSandbox, dropPrivileges } from '../src/sandbox/index.js';
import type { SandboxMode } from '../src/sandbox/index.js';
import { setLogLevel } from '../src/log.js';
import { SECCOMP_FILTER_FLAG_TSYNC, seccompSetModeFilter } from '../src/sys/seccomp-calls.js';
import { libc } from '../src/sys/libc.js';

function arg(name: string): string | undefined {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) return argv[i + 1];
    if (argv[i].startsWith(`--${name}=`)) return argv[i].slice(name.length + 3);
  }
  return undefined;
}

setLogLevel(arg('log-level') === 'debug' ? 'debug' : 'warn');
const mode = (arg('sandbox') ?? 'namespace') as SandboxMode;
const sharedDir = arg('shared-dir') ?? '.';
const rlimit = arg('rlimit-nofile');
const { rootFd, procSelfFd } = enterSandbox({ mode, sharedDir });
dropPrivileges({ modcaps: arg('modcaps'), rlimitNofile: rlimit === undefined ? undefined : Number(rlimit) });

const root = mode === 'none' ? sharedDir : '/';
const probe = process.env.VFS_TEST_PROBE_CREATE;
if (probe !== undefined) fs.writeFileSync(`${root}/${probe}`, 'made inside\n');
// VFS_TEST_MKNOD=1: make a character device node (1,3: /dev/null) in the share with the
// kept CAP_MKNOD and try to open it: the share is mounted nodev in the sandbox.
let deviceOpen: string | undefined;
if (process.env.VFS_TEST_MKNOD === '1') {
  const mknod = libc.func('int mknod(const char *path, unsigned int mode, unsigned long dev)');
  const node = `${root}/null-dev`;
  if (mknod(node, 0o020666, (1 << 8) | 3) !== 0) deviceOpen = 'mknod failed';
  else {
    try {
      fs.closeSync(fs.openSync(node, 'r'));
      deviceOpen = 'opened';
    } catch (err) {
      deviceOpen = (err as NodeJS.ErrnoException).code;
    }
  }
}
const report = {
  deviceOpen,
  pid: process.pid,
  uid: process.getuid?.(),
  rootFd,
  procSelfFd,
  rootEntries: fs.readdirSync(root).sort(),
  cwd: process.cwd(),
  // From inside namespace/chroot the host's /etc is gone: an absolute symlink in the
  // share that points there resolves inside the share.
  hostEtcVisible: fs.existsSync('/etc/hostname'),
  absLinkReadable: (() => { try { fs.readFileSync(`${root}/abs-link`); return true; } catch { return false; } })(),
  entryOwners: Object.fromEntries(fs.readdirSync(root).map((n) => [n, fs.lstatSync(`${root}/${n}`).uid])),
};
process.stdout.write(JSON.stringify(report) + '\n');

// VFS_TEST_SECCOMP_KILL=1: a filter that kills the process on syslog(2) and allows the rest,
// then that call, so the launcher's report of a seccomp kill can be checked without
// depending on the project's policy.
if (process.env.VFS_TEST_SECCOMP_KILL === '1') {
  const SYS_SYSLOG = process.arch === 'arm64' ? 116 : 103;
  const insn = (code: number, jt: number, jf: number, k: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeUInt16LE(code, 0); b.writeUInt8(jt, 2); b.writeUInt8(jf, 3); b.writeUInt32LE(k >>> 0, 4);
    return b;
  };
  const program = Buffer.concat([
    insn(0x20, 0, 0, 0), // ld [nr]
    insn(0x15, 0, 1, SYS_SYSLOG), // jeq syslog
    insn(0x06, 0, 0, 0x80000000), // ret KILL_PROCESS
    insn(0x06, 0, 0, 0x7fff0000), // ret ALLOW
  ]);
  seccompSetModeFilter(program, SECCOMP_FILTER_FLAG_TSYNC);
  setTimeout(() => libc.func('long syscall(long nr, long a, long b, long c)')(SYS_SYSLOG, 10, 0, 0), 200);
}
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
setInterval(() => undefined, 1 << 30);
