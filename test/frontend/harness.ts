// Shared set-up for the vhost integration tests: a fresh shared directory (inside a parent
// that holds a marker file the daemon must never reach), a daemon serving it, and a started
// virtio-fs device with FUSE INIT done. The backend under test is our daemon unless
// VFS_TEST_BACKEND=virtiofsd (to check a test against the reference implementation).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startDaemon, waitExit, type BackendKind, type Daemon } from './daemons.js';
import { VirtioFsFrontend, type FrontendOptions } from './virtio-fs.js';
import { FuseClient } from './fuse-client.js';

export const BACKEND: BackendKind = process.env.VFS_TEST_BACKEND === 'virtiofsd' ? 'virtiofsd' : 'vfs';
export const MARKER = 'outside-marker';

export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface Env {
  parent: string;
  shared: string;
  d: Daemon;
}

export async function withDaemon(t: Teardown, extraArgs: string[] = [], populate?: (shared: string) => void): Promise<Env> {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fe-'));
  const shared = path.join(parent, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(parent, MARKER), 'must stay unreachable\n');
  populate?.(shared);
  const d = await startDaemon(BACKEND, { sharedDir: shared, extraArgs });
  t.teardown(async () => {
    await d.stop();
    fs.rmSync(parent, { recursive: true, force: true });
    fs.rmSync(path.dirname(d.socketPath), { recursive: true, force: true });
  });
  return { parent, shared, d };
}

export function openFs(env: Env, t: Teardown, opts: Partial<FrontendOptions> = {}): { fe: VirtioFsFrontend; c: FuseClient } {
  const fe = VirtioFsFrontend.open({ socketPath: env.d.socketPath, ...opts });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  c.doInit();
  return { fe, c };
}

/** Signs of a crash in the daemon's log: an uncaught JS exception or a native abort. */
export function crashSigns(log: string): string[] {
  const pats = [/Uncaught/i, /^\s+at .+\(.+:\d+:\d+\)$/m, /(TypeError|RangeError|ReferenceError|ERR_[A-Z_]+)/, /Aborted|Segmentation fault|FATAL ERROR|panicked/];
  return pats.filter((p) => p.test(log)).map((p) => String(p));
}

/** After a connection-fatal case: the daemon exits 0 (it may take a moment). */
export async function exitedCleanly(d: Daemon, ms = 5000): Promise<number | undefined> {
  return waitExit(d, ms);
}

export function alive(d: Daemon): boolean {
  return d.exitCode === undefined;
}
