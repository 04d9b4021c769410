// vfs-launch's command line: `vfs-launch [launcher options] -- [daemon options]`, or the
// virtiofsd form with everything before `--` (what libvirt and existing scripts pass).
// Launcher-only options (--uid-map, --gid-map, --mountpoint) are taken out; everything
// else is a daemon option and goes through the daemon's own parser (src/daemon/options.ts),
// so both programs refuse exactly the same things with the same messages. Pure: no file
// system access here (see validate.ts).
import type { DaemonConfig } from '../daemon/options.js';
import { UsageError, defaultDaemonConfig, parseDaemonArgs } from '../daemon/options.js';
import type { IdMap } from './idmap.js';
import { parseIdMap } from './idmap.js';

export { UsageError } from '../daemon/options.js';

/** Placeholder --fuse-fd value while parsing; run.ts puts the real fd number in. */
export const FUSE_FD_IN_DAEMON = 3;

export interface LaunchPlan {
  /** The daemon's argv (validated by parseDaemonArgs), without the program name. */
  daemonArgs: string[];
  config: DaemonConfig;
  uidMap?: IdMap;
  gidMap?: IdMap;
  /** A local FUSE mount the launcher makes (host mount namespace) and hands over as --fuse-fd. */
  mountpoint?: string;
  printCapabilities: boolean;
  help: boolean;
  version: boolean;
  /** The seccomp filter compiled while validating, handed to the daemon (run.ts). */
  seccompProgram?: Buffer;
}

const LAUNCHER_VALUE_OPTIONS = ['uid-map', 'gid-map', 'mountpoint'] as const;
type LauncherValueOption = (typeof LAUNCHER_VALUE_OPTIONS)[number];

function launcherOptionName(arg: string): LauncherValueOption | undefined {
  if (!arg.startsWith('--')) return undefined;
  const eq = arg.indexOf('=');
  const name = (eq < 0 ? arg.slice(2) : arg.slice(2, eq)).replace(/_/g, '-');
  return LAUNCHER_VALUE_OPTIONS.find((o) => o === name);
}

/** Parse vfs-launch's argv (without node and script). Throws UsageError. */
export function parseLaunchArgs(argv: readonly string[]): LaunchPlan {
  const dashdash = argv.indexOf('--');
  const before = dashdash < 0 ? [...argv] : argv.slice(0, dashdash);
  const after = dashdash < 0 ? [] : argv.slice(dashdash + 1);

  const values = new Map<LauncherValueOption, string>();
  const rest: string[] = [];
  let help = false;
  let version = false;
  for (let i = 0; i < before.length; i++) {
    const arg = before[i];
    if (arg === '--help' || arg === '-h') { help = true; continue; }
    if (arg === '--version' || arg === '-V') { version = true; continue; }
    const name = launcherOptionName(arg);
    if (name === undefined) { rest.push(arg); continue; }
    const eq = arg.indexOf('=');
    const value = eq >= 0 ? arg.slice(eq + 1) : before[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--'))) {
      throw new UsageError(`--${name}: expects a value (${name === 'mountpoint' ? 'a directory to mount on' : ':inner:outer:count:'})`);
    }
    const prev = values.get(name);
    if (prev !== undefined && prev !== value) {
      throw new UsageError(`--${name}: given twice with different values ('${prev}' and '${value}'); keep one`);
    }
    values.set(name, value);
  }
  const plan: LaunchPlan = { daemonArgs: [], config: defaultDaemonConfig(), printCapabilities: false, help, version };
  if (help || version) return plan;

  const map = (name: 'uid-map' | 'gid-map'): IdMap | undefined => {
    const text = values.get(name);
    if (text === undefined) return undefined;
    const m = parseIdMap(text);
    if (m === undefined) {
      throw new UsageError(`--${name}: '${text}' does not parse; expected :inner:outer:count: with count >= 1 (e.g. :0:100000:65536:)`);
    }
    return m;
  };
  plan.uidMap = map('uid-map');
  plan.gidMap = map('gid-map');
  plan.mountpoint = values.get('mountpoint');

  const daemonArgs = [...rest, ...after];
  if (plan.mountpoint !== undefined) daemonArgs.push('--fuse-fd', String(FUSE_FD_IN_DAEMON));
  const first = parseDaemonArgs(daemonArgs);
  if (first.printCapabilities) {
    plan.printCapabilities = true;
    plan.config = first;
    return plan;
  }
  // Say the sandbox settings explicitly (same values: never a conflict), so `ps` shows them.
  daemonArgs.push('--sandbox', first.sandbox, '--seccomp', first.seccomp);
  plan.config = parseDaemonArgs(daemonArgs);
  for (const [name, v] of [['seccomp-bpf-fd', plan.config.seccompBpfFd], ['listening-fd', plan.config.listeningFd], ['pid-file-fd', plan.config.pidFileFd]] as const) {
    if (v !== undefined) throw new UsageError(`--${name}: set by vfs-launch itself; remove it`);
  }
  plan.daemonArgs = daemonArgs;
  if (plan.config.sandbox !== 'namespace' && (plan.uidMap !== undefined || plan.gidMap !== undefined)) {
    throw new UsageError(`--uid-map/--gid-map: only meaningful with --sandbox namespace (got --sandbox ${plan.config.sandbox}); drop the map or use namespace`);
  }
  return plan;
}

export function launcherHelp(daemonHelp: string): string {
  return [
    'Usage: vfs-launch [launcher options] -- [daemon options]',
    '       vfs-launch --shared-dir DIR --socket-path PATH [options]   (virtiofsd form)',
    '       vfs-launch policy <check|compile|dump|explain|diff|record> ...',
    '',
    'Launcher options:',
    '  --shared-dir DIR           directory to share (also a daemon option)',
    '  --sandbox MODE             namespace (default) | chroot (root only) | none',
    '  --seccomp MODE             kill (default) | log | trap | none',
    '  --uid-map :in:out:count:   map host uids into the user namespace (needs newuidmap)',
    '  --gid-map :in:out:count:   map host gids into the user namespace (needs newgidmap)',
    '  --modcaps +cap:-cap        change the kept capability set (e.g. +sys_admin:-mknod)',
    '  --rlimit-nofile N          RLIMIT_NOFILE for the daemon (0: leave unchanged)',
    '  --log-level LEVEL          error | warn | info | debug | trace | off',
    '  --mountpoint DIR           serve a local FUSE mount at DIR instead of a vhost-user socket',
    '  --print-capabilities       print the vhost-user.json capabilities and exit',
    '',
    'Daemon options (also accepted before --):',
    daemonHelp,
  ].join('\n');
}
