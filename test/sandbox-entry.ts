// A stand-in daemon for the sandbox tests: takes the daemon's sandbox options, runs
// enterSandbox + dropPrivileges exactly as the daemon's main thread does, prints one JSON
// line of what it sees from inside, then waits for SIGTERM so a test can inspect
// /proc/PID from outside. Started through vfs-launch (VFS_DAEMON_ENTRY) or directly;
// VFS_TEST_PROBE_CREATE=NAME makes it create a file in the share after the drop.
import fs from 'node:fs';
import { enterSandbox, dropPrivileges } from '../src/sandbox/index.js';
import type { SandboxMode } from '../src/sandbox/index.js';
import { setLogLevel } from '../src/log.js';

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
const report = {
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
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
setInterval(() => undefined, 1 << 30);
