// How vfs-launch becomes the daemon. The launcher validates everything in Node, then
// replaces itself (execve, same pid: the process libvirt started) with a tiny waiter, so
// what stays running for a VM is that waiter (dash, ~0.1 MB private) and the daemon:
//
//   namespace:   [vfs-launch =exec=> unshare --pid [--user ...] =exec=> sh (waiter)]
//                    -> unshare --mount --net --ipc --uts =exec=> setpriv =exec=> node (pid 1)
//   chroot/none: [vfs-launch =exec=> sh (waiter)] -> setpriv =exec=> node
//
// The namespaces must exist before Node starts (a multi-threaded process cannot unshare a
// user namespace, and unshare(CLONE_NEWNS) moves one thread only; DESIGN.md). The outer
// unshare does not fork: it leaves the waiter in the host's pid and mount namespaces (a
// waiter in the daemon's mount namespace would be pivoted into the share with it and exec
// the guest's files) with only its children in the new pid namespace, so the daemon itself
// is pid 1 there, with no sh between. util-linux unshare --fork is not used as the waiter:
// 2.38 blocks SIGTERM and SIGINT and never forwards them. The waiter forwards SIGTERM,
// SIGINT and SIGHUP to the daemon (the daemon handles all three, so pid 1 of the pid
// namespace receives them), waits for it, and exits 0 when it did; on any other end, or to
// undo a --mountpoint mount, it execs the epilogue (epilogue.ts, Node, started only then):
// it says how the daemon ended, names the system call of a seccomp kill from the kernel's
// audit record, removes the <socket>.pid file, and exits with the status. In namespace mode the waiter's children are
// born in the daemon's pid namespace: once that init is gone it can neither fork nor start
// a thread (clone(CLONE_THREAD) needs the children's pid namespace to be its own), so it
// uses builtins only and reaches the epilogue through nsenter -F --pid=/proc/self/ns/pid,
// which points its children back at its own pid namespace before exec'ing Node. That
// needs CAP_SYS_ADMIN over the host's pid namespace (root); in a user namespace the waiter
// prints the end itself, by number. setpriv narrows the bounding set and sets
// no_new_privs before Node's first thread exists (the threads Node starts on its own never
// hold more than the kept set plus what the sandbox stage needs) and sets the daemon's
// parent-death signal: a SIGKILL of the waiter takes the daemon with it.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DaemonConfig } from '../daemon/options.js';
import { resolveCapabilities } from '../sandbox/capabilities.js';
import type { IdMap } from './idmap.js';
import { unshareMapArg } from './idmap.js';
import { isRoot } from './validate.js';

/** What the launcher execs: `file` with `argv` (argv[0] included) and `env`. */
export interface ExecPlan {
  file: string;
  argv: string[];
  env: Record<string, string>;
  /** The daemon's command line (node and its arguments), as the waiter starts it. */
  daemon: string[];
}

export interface CommandInputs {
  config: DaemonConfig;
  daemonArgs: readonly string[];
  uidMap?: IdMap;
  gidMap?: IdMap;
  /** Override the daemon entry script (tests). */
  daemonEntry?: string;
  /** --mountpoint: the epilogue unmounts it after the daemon ends. */
  unmount?: string;
  /** The locked <socket>.pid (pid-file.ts): the epilogue removes it after the daemon ends. */
  pidFile?: string;
  /** Environment of the launcher, passed on (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
}

/**
 * V8 and Node flags of the daemon, chosen by measurement (bench/README.md, "Per-VM cost"):
 * none. --v8-pool-size=0 and --max-semi-space-size=1 left idle memory unchanged (11.4-11.8
 * MB private, 54.3-54.7 MB RSS for the VM) and saved 1-2 MB private under a QD16 GETATTR
 * load, which is already far under the 40 MB target, while the runs with them served fewer
 * requests per second; --jitless and --lite-mode save ~1 MB RSS at a large CPU cost.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = [];

/**
 * The waiter (sh -c, $0 = vfs-launch). $1: the epilogue command, shell-quoted; $2: 1 when
 * it must run even after a clean exit (an unmount to do); the rest: the daemon's command.
 * A signal before the daemon's pid is known is remembered and forwarded once it is; one the
 * daemon had no handler for yet (its first ~100 ms) is sent again once /proc shows its
 * handlers (SigCgt), since as pid 1 of a pid namespace it drops it otherwise. `wait` returns
 * early when a trapped signal arrives; the loop waits again while the daemon lives. A status
 * lost to that race (the daemon ended as the signal came) is fetched again.
 */
const WAITER_SCRIPT = [
  'e=$1; a=$2; shift 2; p=; t=',
  "trap 'p=TERM' TERM; trap 'p=INT' INT; trap 'p=HUP' HUP",
  '"$@" & d=$!',
  'fw() { t=1; p=$1; kill -"$p" "$d" 2>/dev/null; }',
  // True once the daemon's own stop handlers exist (or it is gone): until then a namespace
  // init drops the signal. SIGHUP's bit says so: Node catches SIGTERM and SIGINT from its
  // start (a handler that only re-raises, which an init ignores), and the daemon catches
  // SIGHUP last of the three (src/daemon/stop-signals.ts).
  'caught() { [ -r "/proc/$d/status" ] || return 0; while read -r k v; do case $k in',
  '  State:) [ "$v" = "${v#Z}" ] || return 0 ;; SigCgt:) [ $(( 0x$v & 1 )) -eq 1 ]; return ;; esac',
  '  done < "/proc/$d/status"; return 0; }',
  "trap 'fw TERM' TERM; trap 'fw INT' INT; trap 'fw HUP' HUP",
  '[ -n "$p" ] && fw "$p"',
  'while :; do',
  // A stop signal that came before the daemon's handlers existed was dropped: send it again
  // once they do (builtins only: a busy wait of at most the daemon's start-up).
  '  if [ -n "$p" ]; then until caught; do :; done; kill -"$p" "$d" 2>/dev/null; p=; fi',
  '  wait "$d"; s=$?; kill -0 "$d" 2>/dev/null || break',
  'done',
  'if [ -n "$t" ] && [ "$s" -gt 128 ]; then wait "$d"; r=$?; [ "$r" -ne 127 ] && s=$r; fi',
  '[ "$s" -eq 0 ] && [ "$a" != 1 ] && exit 0',
  '[ -n "$e" ] && eval "exec $e $s $d"',
  '[ "$s" -eq 0 ] && exit 0',
  'if [ "$s" -gt 128 ]; then printf "vfs-launch: daemon killed by signal %d\\n" $((s - 128)) >&2',
  'else printf "vfs-launch: daemon exited with status %d\\n" "$s" >&2; fi',
  'exit "$s"',
].join('\n');

/** Quote one word for sh. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

function fromSource(): boolean {
  return fileURLToPath(import.meta.url).endsWith('.ts');
}

/** node arguments that run one of our entry points (dist .js, or .ts through tsx from source). */
function entryArgs(dir: string, name: string, override?: string): string[] {
  const here = fileURLToPath(import.meta.url);
  const entry = override ?? path.join(path.dirname(here), '..', dir, fromSource() ? `${name}.ts` : `${name}.js`);
  const resolved = path.resolve(entry);
  if (!resolved.endsWith('.ts')) return [resolved];
  // The absolute loader URL keeps working whatever the daemon's cwd is.
  return ['--import', import.meta.resolve('tsx'), resolved];
}

/**
 * The built daemon: dist/daemon/main.cjs, the whole daemon bundled into one CommonJS file
 * by the build (esbuild), when it is there and not older than the tsc output beside it;
 * else dist/daemon/main.js. Measured (bench/README.md, "Per-VM cost"): the ~45 ES modules
 * of main.js cost 6 MB RSS and 0.6 MB private more than the one bundle, ESM's loader
 * included. undefined when running from source.
 */
export function builtDaemonEntry(): string | undefined {
  if (fromSource()) return undefined;
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'daemon');
  const esm = path.resolve(dir, 'main.js');
  const cjs = path.resolve(dir, 'main.cjs');
  try {
    if (fs.statSync(cjs).mtimeMs >= fs.statSync(esm).mtimeMs) return cjs;
  } catch {
    // no bundle: the module graph
  }
  return esm;
}

/** The daemon's entry and the node arguments to run it (flags first; VFS_DAEMON_NODE_FLAGS, space-separated, replaces them to measure others). */
export function daemonNodeArgs(entryOverride?: string, env: Readonly<Record<string, string | undefined>> = process.env): string[] {
  const override = env.VFS_DAEMON_NODE_FLAGS;
  const flags = override === undefined ? DAEMON_NODE_FLAGS : override.split(' ').filter((f) => f !== '');
  return [...flags, ...entryArgs('daemon', 'main', entryOverride ?? builtDaemonEntry())];
}

/** Capabilities the daemon's process may hold at exec: the kept set plus what setup needs. */
export function execBoundingSet(config: DaemonConfig): string[] {
  const caps = new Set(resolveCapabilities(config.modcaps));
  // Emptying the bounding set afterwards (PR_CAPBSET_DROP) needs CAP_SETPCAP.
  caps.add('setpcap');
  // The daemon adds CAP_DAC_READ_SEARCH for file handles (daemon/main.ts): it must survive
  // the bounding set to be kept at all.
  if (config.fs.inodeFileHandles !== 'never' || config.fs.migration.mode === 'file-handles') caps.add('dac_read_search');
  if (config.sandbox === 'namespace') caps.add('sys_admin');
  if (config.sandbox === 'chroot') caps.add('sys_chroot');
  return [...caps];
}

/** The outer unshare: the pid namespace (children only) and, unprivileged, the user namespace. */
function outerUnshareArgs(inputs: CommandInputs): string[] {
  const args = ['--pid'];
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

/** The daemon's own namespaces, made by its first process (pid 1 of the new pid namespace). */
export const INNER_UNSHARE_ARGS: readonly string[] = ['--mount', '--net', '--ipc', '--uts', '--propagation', 'slave'];

/** Absolute path of a program on PATH (execve does no search). */
export function which(name: string, envPath = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): string {
  for (const dir of envPath.split(':')) {
    if (dir === '') continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  throw new Error(`${name} not found on PATH (${envPath}); install util-linux`);
}

/** The epilogue's command line, without the status and pid the waiter appends; [] when it cannot run. */
function epilogueCommand(inputs: CommandInputs, userNamespace: boolean): string[] {
  const cfg = inputs.config;
  const args = [process.execPath, ...entryArgs('launcher', 'epilogue'), '--sandbox', cfg.sandbox, '--seccomp', cfg.seccomp];
  if (inputs.unmount !== undefined) args.push('--unmount', inputs.unmount);
  if (inputs.pidFile !== undefined) args.push('--remove-pid-file', inputs.pidFile);
  if (cfg.sandbox !== 'namespace') return args;
  if (userNamespace) return [];
  return ['nsenter', '-F', '--pid=/proc/self/ns/pid', '--', ...args];
}

/** The full exec plan for this launch. */
export function daemonCommand(inputs: CommandInputs): ExecPlan {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(inputs.env ?? process.env)) if (v !== undefined) env[k] = v;
  env.UV_USE_IO_URING = '0';
  const node = [process.execPath, ...daemonNodeArgs(inputs.daemonEntry, inputs.env), ...inputs.daemonArgs];
  const mode = inputs.config.sandbox;
  // Unprivileged outside a user namespace there is nothing to bound (and no CAP_SETPCAP).
  const privileged = isRoot() || mode === 'namespace';
  // A namespace init ignores a SIGTERM it has no handler for yet; SIGKILL always lands.
  const pdeath = ['--pdeathsig', mode === 'namespace' ? 'KILL' : 'TERM'];
  const setpriv = privileged
    ? ['setpriv', ...pdeath, `--bounding-set=-all,${execBoundingSet(inputs.config).map((c) => `+${c}`).join(',')}`, '--no-new-privs', '--']
    : ['setpriv', ...pdeath, '--no-new-privs', '--'];
  const daemon = mode === 'namespace' ? ['unshare', ...INNER_UNSHARE_ARGS, '--', ...setpriv, ...node] : [...setpriv, ...node];
  const sh = '/bin/sh';
  const outer = outerUnshareArgs(inputs);
  const epilogue = epilogueCommand(inputs, outer.includes('--user'));
  const always = inputs.unmount !== undefined || inputs.pidFile !== undefined;
  const waiter = ['-c', WAITER_SCRIPT, 'vfs-launch', epilogue.map(shellQuote).join(' '), always ? '1' : '0', ...daemon];
  if (mode === 'namespace') {
    return { file: which('unshare', env.PATH), argv: ['unshare', ...outer, '--', sh, ...waiter], env, daemon };
  }
  return { file: sh, argv: ['vfs-launch', ...waiter], env, daemon };
}
