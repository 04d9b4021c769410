// How vfs-launch starts the daemon. The namespaces must exist before Node starts (a
// multi-threaded process cannot unshare a user namespace, and unshare(CLONE_NEWNS) moves
// one thread only; DESIGN.md), so namespace mode goes through util-linux unshare. Inside
// it a tiny sh is pid 1 and waits for the daemon: unshare 2.38 loses the signal when its
// child is killed, sh reports it as 128+N. setpriv then narrows the bounding set and sets
// no_new_privs before Node's first thread exists, so the threads Node starts on its own
// (V8 platform, libuv pool) never hold more than the kept set plus what the sandbox stage
// needs; the daemon drops the rest on its main and device threads. The process tree is
// vfs-launch -> setpriv(pdeathsig)=unshare -> sh -> setpriv=node (namespace) or
// vfs-launch -> setpriv=node (chroot, none).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DaemonConfig } from '../daemon/options.js';
import { resolveCapabilities } from '../sandbox/capabilities.js';
import type { IdMap } from './idmap.js';
import { unshareMapArg } from './idmap.js';
import { isRoot } from './validate.js';

export interface DaemonCommand {
  file: string;
  args: string[];
  env: Record<string, string>;
}

export interface CommandInputs {
  config: DaemonConfig;
  daemonArgs: readonly string[];
  uidMap?: IdMap;
  gidMap?: IdMap;
  /** Override the daemon entry script (tests). */
  daemonEntry?: string;
}

/** The pid-1 waiter inside the pid namespace: run the daemon, exit with its status. */
const INIT_SCRIPT = '"$@"; s=$?; exit $s';

/**
 * The daemon's entry and the node arguments to run it: dist/daemon/main.js next to a built
 * launcher, src/daemon/main.ts through tsx when the launcher itself runs from source.
 */
export function daemonNodeArgs(entryOverride?: string): string[] {
  const here = fileURLToPath(import.meta.url);
  const fromSource = here.endsWith('.ts');
  const entry = entryOverride ?? path.join(path.dirname(here), '..', 'daemon', fromSource ? 'main.ts' : 'main.js');
  const resolved = path.resolve(entry);
  if (!resolved.endsWith('.ts')) return [resolved];
  // The absolute loader URL keeps working whatever the daemon's cwd is.
  return ['--import', import.meta.resolve('tsx'), resolved];
}

/** Capabilities the daemon's process may hold at exec: the kept set plus what setup needs. */
export function execBoundingSet(config: DaemonConfig): string[] {
  const caps = new Set(resolveCapabilities(config.modcaps));
  // Emptying the bounding set afterwards (PR_CAPBSET_DROP) needs CAP_SETPCAP.
  caps.add('setpcap');
  if (config.sandbox === 'namespace') caps.add('sys_admin');
  if (config.sandbox === 'chroot') caps.add('sys_chroot');
  return [...caps];
}

function unshareArgs(inputs: CommandInputs): string[] {
  const args = ['--mount', '--pid', '--net', '--ipc', '--uts', '--fork', '--kill-child', '--propagation', 'slave'];
  if (inputs.uidMap !== undefined || inputs.gidMap !== undefined) {
    args.push('--user');
    if (inputs.uidMap !== undefined) args.push(`--map-users=${unshareMapArg(inputs.uidMap)}`);
    if (inputs.gidMap !== undefined) args.push(`--map-groups=${unshareMapArg(inputs.gidMap)}`);
    // With only one of the two maps given, map the caller to root for the other.
    if (inputs.uidMap === undefined) args.push('--map-user=0');
    if (inputs.gidMap === undefined) args.push('--map-group=0');
  } else if (!isRoot()) {
    args.push('--user', '--map-root-user');
  }
  return args;
}

/** The full command line that starts the daemon for this plan. */
export function daemonCommand(inputs: CommandInputs): DaemonCommand {
  const env = { UV_USE_IO_URING: '0' };
  const node = [process.execPath, ...daemonNodeArgs(inputs.daemonEntry), ...inputs.daemonArgs];
  const mode = inputs.config.sandbox;
  // Unprivileged outside a user namespace there is nothing to bound (and no CAP_SETPCAP).
  const privileged = isRoot() || mode === 'namespace';
  const setpriv = privileged
    ? ['setpriv', `--bounding-set=-all,${execBoundingSet(inputs.config).map((c) => `+${c}`).join(',')}`, '--no-new-privs', '--']
    : ['setpriv', '--no-new-privs', '--'];
  // If the launcher dies without forwarding anything (SIGKILL), its child gets a signal too:
  // unshare is killed, and --kill-child takes the whole namespace with it; a direct daemon
  // gets SIGTERM and stops cleanly.
  if (mode === 'namespace') {
    return { file: 'setpriv', args: ['--pdeathsig', 'KILL', '--', 'unshare', ...unshareArgs(inputs), '--', '/bin/sh', '-c', INIT_SCRIPT, 'vfs-init', ...setpriv, ...node], env };
  }
  return { file: setpriv[0], args: ['--pdeathsig', 'TERM', ...setpriv.slice(1), ...node], env };
}

/** Children of a process (needs CONFIG_PROC_CHILDREN, which Debian kernels have). */
function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter((s) => s !== '').map(Number);
  } catch {
    return [];
  }
}

/**
 * The daemon's pid as seen from here: the spawned process itself (chroot/none, setpriv
 * execs node), or the spawned process's grandchild (unshare -> sh -> node) in namespace mode.
 */
export function findDaemonPid(spawnedPid: number, mode: DaemonConfig['sandbox']): number | undefined {
  if (mode !== 'namespace') return spawnedPid;
  for (const init of childrenOf(spawnedPid)) {
    const daemon = childrenOf(init)[0];
    if (daemon !== undefined) return daemon;
  }
  return undefined;
}
