// The daemon's command line: virtiofsd's option names and meanings, so the daemon (and
// vfs-launch, which validates with this same parser before spawning anything) can stand
// in for virtiofsd under libvirt and scripts written for it. Every rejection is a
// UsageError whose message names the option and how to fix it.
import { MAX_QUEUE_THREADS } from '../vhost/queue-limits.js';
import type { CachePolicy, FsOptions } from '../fs/options.js';
import { DEFAULT_FS_OPTIONS } from '../fs/options.js';
import { XattrMapError, parseXattrMap } from '../fs/xattr-map.js';
import { IdMap, IdRuleError, parseIdRule, type IdRule } from '../fs/id-map.js';
import type { LogLevel } from '../log.js';
import { LOG_LEVELS } from '../log.js';

export type SandboxMode = 'namespace' | 'chroot' | 'none';
export type SeccompMode = 'kill' | 'log' | 'trap' | 'none';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface DaemonConfig {
  sharedDir: string;
  socketPath?: string;
  socketGroup?: string;
  /** An already-listening vhost-user socket inherited from the caller (libvirt). */
  listenFd?: number;
  /** A /dev/fuse fd mounted by the launcher in the host namespace. */
  fuseFd?: number;
  /** Mount a local FUSE file system here (the daemon mounts it itself; --sandbox none). */
  mountpoint?: string;
  tag?: string;
  fs: FsOptions;
  sandbox: SandboxMode;
  seccomp: SeccompMode;
  /** Extra policy files replacing the project's policies/*.json. */
  seccompPolicies: string[];
  logLevel: LogLevel | 'off';
  syslog: boolean;
  rlimitNofile?: number;
  modcaps?: string;
  uidMap?: string;
  gidMap?: string;
  threadPoolSize?: number;
  /** --queue-threads: request queues served on threads of their own (0: none). */
  queueThreads: number;
  /** What accepted compatibility options change or do not change (logged at start). */
  notes: string[];
  printCapabilities: boolean;
  /** Test-only: make one forbidden syscall after the sandbox is in place. */
  testForbiddenSyscall: boolean;
  /** vfs-launch only: an fd holding the seccomp filter it compiled (struct sock_filter array). */
  seccompBpfFd?: number;
  /** vfs-launch only: the fd of the socket it already bound and listens on at socketPath. */
  listeningFd?: number;
  /** vfs-launch only: its locked <socket>.pid fd, inherited; the daemon closes it at once. */
  pidFileFd?: number;
}

type Kind = 'flag' | 'string' | 'int';

interface OptionSpec {
  kind: Kind;
  help: string;
  values?: readonly string[];
  apply(cfg: DaemonConfig, value: string): void;
}

function enumOf<T extends string>(values: readonly T[], v: string): T {
  return values.find((x) => x === v) as T;
}

const CACHE: readonly CachePolicy[] = ['never', 'metadata', 'auto', 'always'];
const SANDBOX: readonly SandboxMode[] = ['namespace', 'chroot', 'none'];
const SECCOMP: readonly SeccompMode[] = ['kill', 'log', 'trap', 'none'];
const LEVELS: readonly (LogLevel | 'off')[] = [...LOG_LEVELS, 'off'];

const on = (set: (c: DaemonConfig) => void) => (c: DaemonConfig) => set(c);

/** Long options, virtiofsd spelling (underscores are accepted as dashes). */
const OPTIONS: Record<string, OptionSpec> = {
  'shared-dir': { kind: 'string', help: 'directory to share', apply: (c, v) => { c.sharedDir = v; } },
  'socket-path': { kind: 'string', help: 'vhost-user socket to listen on', apply: (c, v) => { c.socketPath = v; } },
  socket: { kind: 'string', help: 'alias of --socket-path', apply: (c, v) => { c.socketPath = v; } },
  'socket-group': { kind: 'string', help: 'group owning the socket', apply: (c, v) => { c.socketGroup = v; } },
  fd: { kind: 'int', help: 'inherited listening socket fd', apply: (c, v) => { c.listenFd = Number(v); } },
  'fuse-fd': { kind: 'int', help: 'inherited /dev/fuse fd', apply: (c, v) => { c.fuseFd = Number(v); } },
  mountpoint: { kind: 'string', help: 'serve a local FUSE mount here', apply: (c, v) => { c.mountpoint = v; } },
  tag: { kind: 'string', help: 'virtio-fs tag (offers the CONFIG protocol feature)', apply: (c, v) => { c.tag = v; } },
  cache: { kind: 'string', values: CACHE, help: 'never|metadata|auto|always', apply: (c, v) => { c.fs.cache = enumOf(CACHE, v); } },
  writeback: { kind: 'flag', help: 'enable writeback cache', apply: on((c) => { c.fs.writeback = true; }) },
  xattr: { kind: 'flag', help: 'serve extended attributes', apply: on((c) => { c.fs.xattr = true; }) },
  xattrmap: {
    kind: 'string', help: "xattr name translation rules, virtiofsd's :type:scope:key:prepend: (e.g. :map::user.virtiofs.:); implies --xattr",
    apply: (c, v) => {
      try {
        c.fs.xattrmap = parseXattrMap(v);
      } catch (err) {
        if (err instanceof XattrMapError) throw new UsageError(`--xattrmap: ${err.message}`);
        throw err;
      }
      c.notes.push(...c.fs.xattrmap.warnings);
    },
  },
  'security-label': {
    kind: 'flag', help: "store the guest's security label (FUSE_SECURITY_CTX) on each new file; implies --xattr",
    apply: on((c) => { c.fs.securityLabel = true; }),
  },
  readonly: { kind: 'flag', help: 'refuse every modification (EROFS)', apply: on((c) => { c.fs.readonly = true; }) },
  'announce-submounts': { kind: 'flag', help: 'tell the guest which directories are mount points (the default)', apply: on((c) => { c.fs.announceSubmounts = true; }) },
  'no-announce-submounts': { kind: 'flag', help: 'do not tell the guest which directories are mount points', apply: on((c) => { c.fs.announceSubmounts = false; }) },
  'allow-mmap': {
    kind: 'flag', help: 'with --cache never|metadata, let the guest mmap files shared (DIRECT_IO_ALLOW_MMAP)',
    apply: on((c) => { c.fs.allowMmap = true; }),
  },
  'translate-uid': {
    kind: 'string', help: 'translate uids: <type>:<source base>:<target base>:<count> (guest, host, squash-guest, squash-host, map; forbid-guest:<base>:<count>); repeatable',
    apply: (c, v) => { c.fs.translateUid = [...c.fs.translateUid, idRule('translate-uid', v)]; },
  },
  'translate-gid': {
    kind: 'string', help: 'translate gids, as --translate-uid; repeatable',
    apply: (c, v) => { c.fs.translateGid = [...c.fs.translateGid, idRule('translate-gid', v)]; },
  },
  'no-readdirplus': { kind: 'flag', help: 'do not offer READDIRPLUS', apply: on((c) => { c.fs.readdirplus = false; }) },
  'allow-direct-io': { kind: 'flag', help: "honour the guest's O_DIRECT", apply: on((c) => { c.fs.allowDirectIo = true; }) },
  sandbox: { kind: 'string', values: SANDBOX, help: 'namespace|chroot|none', apply: (c, v) => { c.sandbox = enumOf(SANDBOX, v); } },
  seccomp: { kind: 'string', values: SECCOMP, help: 'kill|log|trap|none', apply: (c, v) => { c.seccomp = enumOf(SECCOMP, v); } },
  'seccomp-policy': { kind: 'string', help: 'policy file (repeatable)', apply: (c, v) => { c.seccompPolicies.push(v); } },
  'log-level': { kind: 'string', values: LEVELS, help: 'error|warn|info|debug|trace|off', apply: (c, v) => { c.logLevel = enumOf(LEVELS, v); } },
  syslog: { kind: 'flag', help: 'log to syslog', apply: on((c) => { c.syslog = true; }) },
  'rlimit-nofile': { kind: 'int', help: 'RLIMIT_NOFILE to set', apply: (c, v) => { c.rlimitNofile = Number(v); } },
  modcaps: { kind: 'string', help: 'capability changes, e.g. +sys_admin:-mknod', apply: (c, v) => { c.modcaps = v; } },
  'uid-map': { kind: 'string', help: ':inner:outer:count:', apply: (c, v) => { c.uidMap = v; } },
  'gid-map': { kind: 'string', help: ':inner:outer:count:', apply: (c, v) => { c.gidMap = v; } },
  'preserve-noatime': { kind: 'flag', help: "keep the guest's O_NOATIME (stripped by default, as virtiofsd)", apply: on((c) => { c.fs.preserveNoatime = true; }) },
  'inode-file-handles': {
    kind: 'string', values: ['never', 'prefer', 'mandatory'],
    help: 'never: O_PATH fds (default); prefer: file handles where the file system has them; mandatory: file handles or fail',
    apply: (c, v) => { c.fs.inodeFileHandles = enumOf(['never', 'prefer', 'mandatory'] as const, v); },
  },
  'migration-mode': {
    kind: 'string', values: ['find-paths', 'file-handles'],
    help: 'find-paths: send each inode as a path (default); file-handles: send file handles (same file system on both sides, CAP_DAC_READ_SEARCH)',
    apply: (c, v) => { c.fs.migration.mode = enumOf(['find-paths', 'file-handles'] as const, v); },
  },
  'migration-on-error': {
    kind: 'string', values: ['abort', 'guest-error'],
    help: 'destination: abort: fail the migration when an inode cannot be found (default); guest-error: go on, the guest gets errors for it',
    apply: (c, v) => { c.fs.migration.onError = enumOf(['abort', 'guest-error'] as const, v); },
  },
  'migration-verify-handles': {
    kind: 'flag', help: 'find-paths: send file handles too, so the destination checks it opened the very same files',
    apply: on((c) => { c.fs.migration.verifyHandles = true; }),
  },
  'migration-confirm-paths': {
    kind: 'flag', help: 'find-paths: check every path at switch-over and correct it from /proc/self/fd',
    apply: on((c) => { c.fs.migration.confirmPaths = true; }),
  },
  // --[no-]killpriv-v2 and --[no-]posix-acl: the one given last wins, as virtiofsd's pairs do.
  'killpriv-v2': {
    kind: 'flag', help: 'offer HANDLE_KILLPRIV_V2: the server clears setuid/setgid on writes, truncations and O_TRUNC opens',
    apply: on((c) => { c.fs.killprivV2 = true; }),
  },
  'no-killpriv-v2': { kind: 'flag', help: 'do not offer HANDLE_KILLPRIV_V2 (the default)', apply: on((c) => { c.fs.killprivV2 = false; }) },
  'posix-acl': {
    kind: 'flag', help: 'POSIX ACLs: offer POSIX_ACL, DONT_MASK, SETXATTR_EXT (implies --xattr)',
    apply: on((c) => { c.fs.posixAcl = true; }),
  },
  'no-posix-acl': { kind: 'flag', help: 'no POSIX ACLs (the default)', apply: on((c) => { c.fs.posixAcl = false; }) },
  'queue-threads': {
    kind: 'int',
    help: `serve request queues 2..N+1 each on a thread of its own (0-${MAX_QUEUE_THREADS}, default 0: every queue on one thread)`,
    apply: (c, v) => {
      const n = Number(v);
      if (n > MAX_QUEUE_THREADS) throw new UsageError(`--queue-threads: ${n} is more than ${MAX_QUEUE_THREADS}; use 0 to ${MAX_QUEUE_THREADS}`);
      c.queueThreads = n;
    },
  },
  'thread-pool-size': { kind: 'int', help: 'accepted for compatibility; requests are served on one thread', apply: (c, v) => { c.threadPoolSize = Number(v); } },
  'print-capabilities': { kind: 'flag', help: 'print the vhost-user.json capabilities and exit', apply: on((c) => { c.printCapabilities = true; }) },
  'test-forbidden-syscall': { kind: 'flag', help: 'test hook: make a syscall the policy forbids', apply: on((c) => { c.testForbiddenSyscall = true; }) },
  'seccomp-bpf-fd': { kind: 'int', help: 'set by vfs-launch: fd of the filter it compiled', apply: (c, v) => { c.seccompBpfFd = Number(v); } },
  'listening-fd': { kind: 'int', help: 'set by vfs-launch: fd listening on --socket-path', apply: (c, v) => { c.listeningFd = Number(v); } },
  'pid-file-fd': { kind: 'int', help: 'set by vfs-launch: its locked <socket>.pid fd, closed by the daemon', apply: (c, v) => { c.pidFileFd = Number(v); } },
};

/** Options only vfs-launch passes: not in --help, refused from users by the launcher. */
export const INTERNAL_OPTIONS: readonly string[] = ['test-forbidden-syscall', 'seccomp-bpf-fd', 'listening-fd', 'pid-file-fd'];

/**
 * virtiofsd options vfs does not implement, each with what to do instead: a drop-in user
 * gets this rather than "unknown option".
 */
const NOT_SUPPORTED: Record<string, string> = {
};

/** Repeatable options: each occurrence adds to a list (the others must not change value). */
const REPEATABLE: ReadonlySet<string> = new Set(['seccomp-policy', 'translate-uid', 'translate-gid']);

function idRule(option: string, text: string): IdRule {
  try {
    return parseIdRule(text);
  } catch (err) {
    if (err instanceof IdRuleError) throw new UsageError(`--${option}: ${err.message}`);
    throw err;
  }
}

/** Rules of one direction must not overlap (checked by building the map once, as the daemon will). */
function checkIdRules(option: string, rules: readonly IdRule[]): void {
  if (rules.length === 0) return;
  try {
    new IdMap(rules);
  } catch (err) {
    if (err instanceof IdRuleError) throw new UsageError(`--${option}: ${err.message}; make the ranges disjoint`);
    throw err;
  }
}

function unknownOption(rawName: string): UsageError {
  const why = NOT_SUPPORTED[rawName.replace(/_/g, '-')];
  if (why !== undefined) return new UsageError(`--${rawName}: a virtiofsd option vfs does not support: ${why}`);
  return new UsageError(`--${rawName}: unknown option; run with --help for the list`);
}

/**
 * Splits a `-o` list into its items. A doubled comma is a literal comma inside an item:
 * libvirt escapes the source path that way (QEMU's convention), so `source=/a,,b` is `/a,b`.
 */
function splitLegacyList(list: string): string[] {
  const items: string[] = [];
  let cur = '';
  for (let i = 0; i < list.length; i++) {
    if (list[i] !== ',') { cur += list[i]; continue; }
    if (list[i + 1] === ',') { cur += ','; i++; continue; }
    items.push(cur);
    cur = '';
  }
  items.push(cur);
  return items.filter((item) => item !== '');
}

/** `-o cache=` values: virtiofsd's -o spelling `none` and our own names. */
const LEGACY_CACHE: Readonly<Record<string, CachePolicy>> = { none: 'never', never: 'never', metadata: 'metadata', auto: 'auto', always: 'always' };
/** virtiofsd's `-o loglevel=` values (its `err` is our `error`). */
const LEGACY_LOGLEVEL: Readonly<Record<string, string>> = { debug: 'debug', info: 'info', warn: 'warn', err: 'error' };

/** Why `-o posix_lock` / `-o flock` are refused: the guest would believe its locks are shared. */
const REMOTE_LOCKS_REFUSED = 'remote locks are not offered (vfs does not offer POSIX_LOCKS or FLOCK_LOCKS, so the guest kernel keeps its locks local to the guest, '
  + 'invisible to the host and to other guests); remove it (libvirt: <lock posix=\'off\' flock=\'off\'/> or no <lock> element), as virtiofsd also refuses it';

/**
 * Legacy `-o key[=value],...`: virtiofsd's C-era syntax, which libvirt up to 9.x passes
 * (`-o source=DIR[,cache=none|always][,sandbox=namespace|chroot][,xattr|no_xattr]
 * [,flock|no_flock][,posix_lock|no_posix_lock]`). Keys and values as the Rust virtiofsd takes them.
 */
function applyLegacy(cfg: DaemonConfig, list: string, seen: Map<string, string>, set: (name: string, v: string) => void): void {
  for (const item of splitLegacyList(list)) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const val = eq < 0 ? '' : item.slice(eq + 1);
    switch (key) {
      case 'source': set('shared-dir', val); break;
      case 'cache': {
        const policy = LEGACY_CACHE[val];
        if (policy === undefined) throw new UsageError(`-o cache=${val}: not one of none (= never), metadata, auto, always`);
        set('cache', policy);
        break;
      }
      case 'sandbox': set('sandbox', val); break;
      case 'xattr': set('xattr', ''); break;
      case 'no_xattr': seen.set('xattr', 'off'); cfg.fs.xattr = false; break;
      case 'writeback': set('writeback', ''); break;
      case 'no_writeback': cfg.fs.writeback = false; break;
      case 'announce_submounts': set('announce-submounts', ''); break;
      case 'readdirplus': cfg.fs.readdirplus = true; break;
      case 'no_readdirplus': set('no-readdirplus', ''); break;
      case 'allow_direct_io': set('allow-direct-io', ''); break;
      case 'no_allow_direct_io': cfg.fs.allowDirectIo = false; break;
      case 'killpriv_v2': set('killpriv-v2', ''); break;
      case 'no_killpriv_v2': set('no-killpriv-v2', ''); break;
      case 'posix_acl': set('posix-acl', ''); break;
      case 'no_posix_acl': set('no-posix-acl', ''); break;
      case 'xattrmap': set('xattrmap', val); break;
      case 'security_label': set('security-label', ''); break;
      case 'no_security_label': break;
      case 'modcaps': set('modcaps', val); break;
      case 'log_level': set('log-level', val); break;
      case 'loglevel': {
        const level = LEGACY_LOGLEVEL[val];
        if (level === undefined) throw new UsageError(`-o loglevel=${val}: not one of debug, info, warn, err`);
        set('log-level', level);
        break;
      }
      case 'debug': set('log-level', 'debug'); break;
      // Neither lock kind is offered to the guest, so turning them off changes nothing.
      case 'no_posix_lock': case 'no_flock': break;
      case 'posix_lock': case 'flock':
        throw new UsageError(`-o ${key}: ${REMOTE_LOCKS_REFUSED}`);
      default:
        throw new UsageError(`-o ${key}: unknown option; known: source=, cache=none|never|metadata|auto|always, sandbox=, xattr, no_xattr, no_flock, no_posix_lock, writeback, announce_submounts, no_readdirplus, allow_direct_io, [no_]killpriv_v2, [no_]posix_acl, xattrmap=, security_label, modcaps=, loglevel=, log_level=`);
    }
  }
}

export function defaultDaemonConfig(): DaemonConfig {
  return {
    sharedDir: '',
    fs: { ...DEFAULT_FS_OPTIONS, migration: { ...DEFAULT_FS_OPTIONS.migration } },
    sandbox: 'namespace',
    seccomp: 'kill',
    seccompPolicies: [],
    notes: [],
    logLevel: 'info',
    syslog: false,
    printCapabilities: false,
    testForbiddenSyscall: false,
    queueThreads: 0,
  };
}

/** Parse and validate daemon arguments. Throws UsageError naming the option and the fix. */
export function parseDaemonArgs(argv: readonly string[]): DaemonConfig {
  const cfg = defaultDaemonConfig();
  const seen = new Map<string, string>();

  const set = (rawName: string, value: string): void => {
    const name = rawName.replace(/_/g, '-');
    const spec = OPTIONS[name];
    if (spec === undefined) throw unknownOption(rawName);
    if (spec.kind === 'int' && !/^\d+$/.test(value)) {
      throw new UsageError(`--${name}: expects a non-negative integer, got '${value}'`);
    }
    if (spec.values !== undefined && !spec.values.includes(value)) {
      throw new UsageError(`--${name}: '${value}' is not one of ${spec.values.join('|')}`);
    }
    const prev = seen.get(name);
    if (prev !== undefined && prev !== value && !REPEATABLE.has(name)) {
      throw new UsageError(`--${name}: given twice with different values ('${prev}' and '${value}'); keep one`);
    }
    seen.set(name, value);
    spec.apply(cfg, value);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-o') {
      const list = argv[++i];
      if (list === undefined) throw new UsageError('-o: expects key=value[,key=value...]');
      applyLegacy(cfg, list, seen, set);
      continue;
    }
    if (arg.startsWith('-o') && arg.length > 2 && !arg.startsWith('--')) {
      applyLegacy(cfg, arg.slice(2), seen, set);
      continue;
    }
    if (arg === '-f' || arg === '--foreground') continue; // virtiofsd always runs in the foreground
    if (arg === '-d') { set('log-level', 'debug'); continue; }
    if (!arg.startsWith('--')) throw new UsageError(`'${arg}': unexpected argument; daemon options start with --`);
    const eq = arg.indexOf('=');
    const rawName = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const spec = OPTIONS[rawName.replace(/_/g, '-')];
    if (spec === undefined) throw unknownOption(rawName);
    if (spec.kind === 'flag') {
      if (eq >= 0) throw new UsageError(`--${rawName}: takes no value`);
      set(rawName, '');
      continue;
    }
    let value: string | undefined = eq < 0 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined || (eq < 0 && value.startsWith('--'))) {
      throw new UsageError(`--${rawName}: expects a value (${spec.help})`);
    }
    value = value.trim();
    set(rawName, value);
  }

  // As virtiofsd: a map, labels or ACLs need extended attributes, even after -o no_xattr.
  if (cfg.fs.xattrmap !== null || cfg.fs.securityLabel || cfg.fs.posixAcl) cfg.fs.xattr = true;
  if (cfg.printCapabilities) return cfg;
  checkIdRules('translate-uid', cfg.fs.translateUid);
  checkIdRules('translate-gid', cfg.fs.translateGid);
  if (seen.has('announce-submounts') && seen.has('no-announce-submounts')) {
    throw new UsageError('--announce-submounts and --no-announce-submounts contradict each other; keep one');
  }
  // As virtiofsd: the guest's ACLs name ids the daemon would not translate.
  if (cfg.fs.posixAcl && (cfg.fs.translateUid.length > 0 || cfg.fs.translateGid.length > 0)) {
    throw new UsageError('--posix-acl cannot be used with --translate-uid/--translate-gid (ACL entries would keep untranslated ids); drop one of them, or use vfs-launch --uid-map/--gid-map');
  }
  if (cfg.fs.allowMmap && (cfg.fs.cache === 'auto' || cfg.fs.cache === 'always')) {
    cfg.notes.push(`--allow-mmap: no effect with --cache=${cfg.fs.cache} (files are cached, shared mmap works without it); it matters with --cache=never|metadata`);
  }
  if (cfg.sharedDir === '') throw new UsageError('--shared-dir: required; give the directory to share');
  const transports = [cfg.socketPath, cfg.listenFd, cfg.fuseFd, cfg.mountpoint].filter((x) => x !== undefined).length;
  if (transports === 0) throw new UsageError('--socket-path: required; give the vhost-user socket path (or --fd N, or --mountpoint DIR)');
  if (transports > 1) throw new UsageError('--socket-path, --fd, --fuse-fd and --mountpoint are alternatives; give only one');
  if (cfg.listeningFd !== undefined && cfg.socketPath === undefined) throw new UsageError('--listening-fd: only with --socket-path (set by vfs-launch)');
  if (cfg.mountpoint !== undefined && cfg.sandbox !== 'none') {
    throw new UsageError('--mountpoint: the daemon can mount itself only with --sandbox none; use vfs-launch --mountpoint to mount from outside the sandbox');
  }
  return cfg;
}

export function daemonHelp(): string {
  const lines = Object.entries(OPTIONS)
    .filter(([name]) => !INTERNAL_OPTIONS.includes(name))
    .map(([name, s]) => `  --${name}${s.kind === 'flag' ? '' : ' VALUE'}`.padEnd(34) + s.help);
  return `Usage: vfs-daemon --shared-dir DIR (--socket-path PATH | --fd N | --mountpoint DIR) [options]\n${lines.join('\n')}\n`;
}
