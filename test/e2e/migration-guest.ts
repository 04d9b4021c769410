// Live migration of a running guest between two QEMUs, each with its own vfs daemon on the
// same shared directory. Debian 12's QEMU 7.2 cannot migrate vhost-user-fs, so both QEMUs are
// the Debian 13 one that scripts/setup-migration-qemu.sh debootstraps into /tmp, run through
// chroot in a private mount namespace (with /dev and /proc); the guest's kernel, initramfs
// and every socket live in a work directory inside that root. The source boots the busybox
// guest (guest.ts's initramfs), the destination waits with -incoming; the host drives the
// migration over QMP. After switch-over the console is the destination's.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { REPO_ROOT, BEGIN_MARKER, END_MARKER, buildBaseInitramfs, findKernel, qemuArgs } from './guest.js';

export const TRIXIE_ROOT = process.env.VFS_TRIXIE_ROOT ?? '/tmp/vfs-trixie-qemu';

/** Make sure the trixie QEMU root exists (builds it the first time: minutes). */
export function trixieQemu(): string {
  if (!fs.existsSync(path.join(TRIXIE_ROOT, '.vfs-ready'))) {
    execFileSync('bash', [path.join(REPO_ROOT, 'scripts/setup-migration-qemu.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
  }
  return execFileSync('chroot', [TRIXIE_ROOT, 'qemu-system-x86_64', '--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
}

/** A work directory inside the root: `host` as we see it, `inner` as QEMU does. */
export function workDir(name: string): { host: string; inner: string } {
  const inner = `/work/${name}-${process.pid}`;
  const host = path.join(TRIXIE_ROOT, inner);
  fs.rmSync(host, { recursive: true, force: true });
  fs.mkdirSync(host, { recursive: true });
  return { host, inner };
}

/** The guest's kernel and an initramfs running `script`, copied into the work dir. */
export function guestImages(work: { host: string; inner: string }, script: string): { kernel: string; initrd: string } {
  const base = buildBaseInitramfs();
  const scriptFile = path.join(work.host, 'guest.sh');
  fs.writeFileSync(scriptFile, script);
  execFileSync('bash', [path.join(REPO_ROOT, 'scripts/build-initramfs.sh'), '--base', base, '--script', scriptFile, '--out', path.join(work.host, 'initrd.gz')], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.copyFileSync(findKernel(), path.join(work.host, 'vmlinuz'));
  return { kernel: `${work.inner}/vmlinuz`, initrd: `${work.inner}/initrd.gz` };
}

export interface Qemu {
  child: ChildProcess;
  lines: string[];
  stderr(): string;
  /** Resolves with the first console line matching `re`. */
  waitLine(re: RegExp, ms: number): Promise<string>;
  exited: Promise<number | null>;
  qmp(cmd: string, args?: Record<string, unknown>): Promise<Record<string, unknown>>;
  kill(): void;
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Start one QEMU of the root: `name` names its QMP socket in the work dir. */
export async function startQemu(work: { host: string; inner: string }, name: string, o: {
  socket: string; kernel: string; initrd: string; incoming?: string; memMiB?: number;
}): Promise<Qemu> {
  const args = qemuArgs({
    socketPath: o.socket, kernel: o.kernel, initrd: o.initrd, memMiB: o.memMiB ?? 256, queueSize: 1024, tag: 'myfs',
    append: 'console=ttyS0 quiet panic=-1 no_timer_check vfs.tag=myfs',
  });
  args.push('-qmp', `unix:${work.inner}/${name}.qmp,server=on,wait=off`);
  if (o.incoming !== undefined) args.push('-incoming', o.incoming);
  const inner = ['qemu-system-x86_64', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const sh = `set -e; mount --rbind /dev ${TRIXIE_ROOT}/dev; mount -t proc proc ${TRIXIE_ROOT}/proc; exec chroot ${TRIXIE_ROOT} ${inner}`;
  const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', sh], { stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  let pending = '';
  let err = '';
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    pending += chunk.replace(ANSI, '').replace(/\r/g, '');
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      lines.push(line);
      for (const w of [...waiters]) if (w.re.test(line)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line); }
    }
  });
  child.stderr?.on('data', (s: string) => { err += s; });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => {
    process.removeListener('exit', killOnExit);
    resolve(code);
  }));
  const qmpPath = path.join(work.host, `${name}.qmp`);
  const deadline = Date.now() + 20_000;
  while (!fs.existsSync(qmpPath)) {
    if (Date.now() > deadline) throw new Error(`${name}: no QMP socket: ${err}`);
    await sleep(50);
  }
  const conn = net.createConnection(qmpPath);
  let buf = '';
  const replies: Record<string, unknown>[] = [];
  const replyWaiters: ((r: Record<string, unknown>) => void)[] = [];
  conn.setEncoding('utf8');
  conn.on('data', (s: string) => {
    buf += s;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      if ('return' in msg || 'error' in msg) {
        const w = replyWaiters.shift();
        if (w !== undefined) w(msg);
        else replies.push(msg);
      }
    }
  });
  conn.on('error', () => undefined);
  const qmp = (cmd: string, a?: Record<string, unknown>) => new Promise<Record<string, unknown>>((resolve) => {
    replyWaiters.push(resolve);
    conn.write(JSON.stringify(a === undefined ? { execute: cmd } : { execute: cmd, arguments: a }) + '\n');
  });
  await qmp('qmp_capabilities');
  return {
    child, lines, exited, qmp,
    stderr: () => err,
    waitLine(re, ms) {
      const seen = lines.find((l) => re.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no console line ${re} in ${ms} ms\n${lines.slice(-30).join('\n')}\n--- stderr ---\n${err}`)), ms);
        waiters.push({ re, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      });
    },
    kill() {
      conn.destroy();
      child.kill('SIGKILL');
    },
  };
}

/** Migrate `src` to the URI its peer listens on; resolves with the final query-migrate. */
export async function migrate(src: Qemu, uri: string, timeoutMs = 120_000): Promise<{ status: string; info: Record<string, unknown> }> {
  await src.qmp('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
  const r = await src.qmp('migrate', { uri });
  if ('error' in r) throw new Error(`migrate: ${JSON.stringify(r.error)}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const q = await src.qmp('query-migrate');
    const info = (q.return ?? {}) as Record<string, unknown>;
    const status = String(info.status);
    if (status === 'completed' || status === 'failed' || status === 'cancelled') return { status, info };
    if (Date.now() > deadline) throw new Error(`migration still ${status} after ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** The script's lines between the markers, from whichever consoles printed them. */
export function scriptLines(...consoles: string[][]): { lines: string[]; rc: number | undefined } {
  const all = consoles.flat();
  const b = all.indexOf(BEGIN_MARKER);
  const e = all.findIndex((l) => l.startsWith(`${END_MARKER} rc=`));
  return { lines: all.slice(b + 1, e < 0 ? undefined : e), rc: e < 0 ? undefined : Number(all[e]?.slice(`${END_MARKER} rc=`.length)) };
}
