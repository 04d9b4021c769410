// Messages between the daemon's main thread and its device worker, declared once.
import type { FsOptions } from '../fs/options.js';
import type { LogLevel } from '../log.js';

export type TransportSpec =
  | { kind: 'vhost'; listenFd: number; tag?: string }
  | { kind: 'fuse'; devFd: number; maxWrite: number };

export type FromMain =
  | { type: 'drop-privileges'; capabilities: readonly string[]; logLevel: LogLevel | 'off'; syslogFd?: number }
  | { type: 'serve'; rootFd: number; procSelfFd: number; fs: FsOptions; transport: TransportSpec; stopFd: number };

export type ToMain =
  | { type: 'ready' }
  | { type: 'privileges-dropped' }
  | { type: 'exit'; code: number }
  | { type: 'failed'; message: string };
