// File-system behaviour options, with virtiofsd's names and meanings. The daemon's
// option parser fills this; the passthrough core reads it.
import type { XattrMap } from './xattr-map.js';
import type { IdRule } from './id-map.js';

export type CachePolicy = 'never' | 'metadata' | 'auto' | 'always';

/** --migration-*: how the state is represented (source) and what a failure does (destination). */
export interface MigrationOptions {
  mode: 'find-paths' | 'file-handles';
  onError: 'abort' | 'guest-error';
  verifyHandles: boolean;
  confirmPaths: boolean;
}

export interface FsOptions {
  /** --cache: how long the client may cache attributes, entries and data. */
  cache: CachePolicy;
  /** --writeback: let the client cache writes (FUSE_WRITEBACK_CACHE). */
  writeback: boolean;
  /** --xattr: serve extended attributes (otherwise ENOSYS/EOPNOTSUPP as virtiofsd). */
  xattr: boolean;
  /** --xattrmap: how xattr names are translated between guest and host (null: unchanged). */
  xattrmap: XattrMap | null;
  /** --security-label: offer FUSE_SECURITY_CTX and store the label a creating request carries. */
  securityLabel: boolean;
  /** --readonly: every modifying request gets EROFS. */
  readonly: boolean;
  /** --announce-submounts (default) / --no-announce-submounts: mark submount roots with FUSE_ATTR_SUBMOUNT. */
  announceSubmounts: boolean;
  /** --allow-mmap: offer DIRECT_IO_ALLOW_MMAP (shared mmap of direct-I/O files, i.e. under cache never/metadata). */
  allowMmap: boolean;
  /** --translate-uid / --translate-gid rules, in argument order (id-map.ts). */
  translateUid: readonly IdRule[];
  translateGid: readonly IdRule[];
  /** --no-readdirplus: do not offer READDIRPLUS. */
  readdirplus: boolean;
  /** --allow-direct-io: honour the client's O_DIRECT instead of stripping it. */
  allowDirectIo: boolean;
  /** --preserve-noatime: pass the guest's O_NOATIME on (virtiofsd strips it by default). */
  preserveNoatime: boolean;
  /** --inode-file-handles: keep a file handle per inode instead of an O_PATH fd. */
  inodeFileHandles: 'never' | 'prefer' | 'mandatory';
  /** --posix-acl: offer POSIX_ACL, DONT_MASK and SETXATTR_EXT (implies xattr). */
  posixAcl: boolean;
  /** --killpriv-v2: offer HANDLE_KILLPRIV_V2 (the server clears setuid/setgid). */
  killprivV2: boolean;
  /** RLIMIT_NOFILE the daemon runs under (0: unknown); the fd budget is derived from it. */
  fdLimit: number;
  /** Live migration (vhost-user DEVICE_STATE). */
  migration: MigrationOptions;
}

export const DEFAULT_FS_OPTIONS: FsOptions = {
  cache: 'auto',
  writeback: false,
  xattr: false,
  xattrmap: null,
  securityLabel: false,
  readonly: false,
  announceSubmounts: true,
  allowMmap: false,
  translateUid: [],
  translateGid: [],
  readdirplus: true,
  allowDirectIo: false,
  preserveNoatime: false,
  inodeFileHandles: 'never',
  posixAcl: false,
  killprivV2: false,
  fdLimit: 0,
  migration: { mode: 'find-paths', onError: 'abort', verifyHandles: false, confirmPaths: false },
};
