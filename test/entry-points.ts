// How tests start our programs: the compiled dist/ files when they are at least as new as
// every source file (npm test builds first), else the sources through tsx. dist/ is what
// users run, and it matters under seccomp: run from source, tsx's loader thread keeps an
// esbuild service child (on a cold transform cache) whose exit makes libuv call wait4,
// which the policy refuses, so a sandboxed daemon can die of SIGSYS while stopping.
// VFS_TEST_FROM=dist|src forces one or the other.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function newestMtime(dir: string, ext: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.endsWith(ext)) newest = Math.max(newest, fs.statSync(path.join(e.parentPath, e.name)).mtimeMs);
  }
  return newest;
}

let fresh: boolean | undefined;

/** Whether dist/ is built and not older than src/. */
export function useDist(): boolean {
  const from = process.env.VFS_TEST_FROM ?? process.env.VFS_E2E_FROM;
  if (from === 'dist') return true;
  if (from === 'src') return false;
  if (from !== undefined) throw new Error(`VFS_TEST_FROM=${from}: use dist or src`);
  if (fresh === undefined) {
    const dist = path.join(REPO, 'dist');
    fresh = fs.existsSync(path.join(dist, 'launcher/main.js')) && fs.existsSync(path.join(dist, 'daemon/main.js'))
      && newestMtime(dist, '.js') >= newestMtime(path.join(REPO, 'src'), '.ts');
  }
  return fresh;
}

/** dist/daemon/main.cjs (the build's one-file bundle of the daemon, what vfs-launch runs) when not older than main.js. */
function distEntry(name: 'daemon' | 'launcher'): string {
  const esm = path.join(REPO, `dist/${name}/main.js`);
  const cjs = path.join(REPO, `dist/${name}/main.cjs`);
  if (name === 'daemon' && fs.existsSync(cjs) && fs.statSync(cjs).mtimeMs >= fs.statSync(esm).mtimeMs) return cjs;
  return esm;
}

function entry(name: 'daemon' | 'launcher'): string[] {
  return useDist()
    ? [process.execPath, distEntry(name)]
    : [process.execPath, '--import', 'tsx', path.join(REPO, `src/${name}/main.ts`)];
}

/** argv prefix that starts the daemon (src/daemon/main). */
export const daemonCommand = (): string[] => entry('daemon');

/** argv prefix that starts vfs-launch (src/launcher/main). */
export const launcherCommand = (): string[] => entry('launcher');
