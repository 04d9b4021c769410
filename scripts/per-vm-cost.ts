// Per-VM cost as an operator sees it: start a backend the way libvirt does (one process,
// the one we spawn), time exec -> socket listening, then sum Private_Clean+Private_Dirty
// and Rss from /proc/PID/smaps_rollup over every process in the tree below (and
// including) that process: idle after INIT with a connected frontend (test/frontend), and
// under a QD16 GETATTR load driven by the C frontend vufs (a second run: the daemon serves
// one frontend and ends when it leaves).
//
//   npx tsx scripts/per-vm-cost.ts [--backend vfs|virtiofsd] [--sandbox namespace|chroot|none]
//     [--runs N] [--vufs PATH] [--load-seconds S] [--launcher dist/launcher/main.js of another checkout]
//     [-- extra launcher args]
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VirtioFsFrontend } from '../test/frontend/virtio-fs.js';
import { FuseClient } from '../test/frontend/fuse-client.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface Args { backend: 'vfs' | 'virtiofsd'; sandbox: string; runs: number; vufs: string; loadSeconds: number; extra: string[]; launcher: string }

function parseArgs(argv: string[]): Args {
  const a: Args = { backend: 'vfs', sandbox: 'namespace', runs: 3, vufs: '/tmp/vufs/vufs', loadSeconds: 5, extra: [], launcher: path.join(REPO, 'dist/launcher/main.js') };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === '--') { a.extra = argv.slice(i + 1); break; }
    const next = (): string => argv[++i] ?? '';
    if (v === '--backend') a.backend = next() as Args['backend'];
    else if (v === '--sandbox') a.sandbox = next();
    else if (v === '--runs') a.runs = Number(next());
    else if (v === '--vufs') a.vufs = next();
    else if (v === '--load-seconds') a.loadSeconds = Number(next());
    else if (v === '--launcher') a.launcher = next();
    else throw new Error(`unknown argument ${v}`);
  }
  return a;
}

function virtiofsd(): string {
  return execFileSync(path.join(REPO, 'scripts/fetch-virtiofsd.sh'), { encoding: 'utf8' }).trim().split('\n').pop() ?? '';
}

/** argv of the process libvirt would start. */
function backendArgv(a: Args, share: string, sock: string): string[] {
  if (a.backend === 'virtiofsd') return [virtiofsd(), '--shared-dir', share, '--socket-path', sock, '--sandbox', a.sandbox === 'chroot' ? 'chroot' : a.sandbox, '--log-level', 'error'];
  return [process.execPath, a.launcher, '--shared-dir', share, '--sandbox', a.sandbox, ...a.extra, '--', '--socket-path', sock, '--log-level', 'error'];
}

function children(pid: number): number[] {
  const out: number[] = [];
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      out.push(...fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter((s) => s !== '').map(Number));
    } catch { /* gone */ }
  }
  return out;
}

function tree(root: number): number[] {
  const all = [root];
  for (let i = 0; i < all.length; i++) {
    try { all.push(...children(all[i])); } catch { /* gone */ }
  }
  return all;
}

interface Mem { procs: number; privateKiB: number; rssKiB: number; names: string[] }

function memOf(root: number): Mem {
  const m: Mem = { procs: 0, privateKiB: 0, rssKiB: 0, names: [] };
  for (const pid of tree(root)) {
    let text: string;
    try { text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'); } catch { continue; }
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
    m.procs++;
    m.privateKiB += field('Private_Clean') + field('Private_Dirty');
    m.rssKiB += field('Rss');
    try { m.names.push(fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()); } catch { /* gone */ }
  }
  return m;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function makeShare(): string {
  const share = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-cost-share-'));
  fs.writeFileSync(path.join(share, 'small'), 'x');
  return share;
}

async function start(a: Args, share: string, sock: string): Promise<{ proc: ChildProcess; startMs: number; t0: bigint }> {
  const argv = backendArgv(a, share, sock);
  const t0 = process.hrtime.bigint();
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'inherit', 'inherit'] });
  let exited = false;
  proc.on('exit', () => { exited = true; });
  const deadline = Date.now() + 20000;
  // Polling a stat costs the child a little CPU on 2 cores; the socket exists after bind(),
  // listen() follows in the same function.
  while (!fs.existsSync(sock)) {
    if (exited || Date.now() > deadline) throw new Error(`${a.backend} did not listen`);
    await sleep(1);
  }
  return { proc, startMs: Number(process.hrtime.bigint() - t0) / 1e6, t0 };
}

async function stop(proc: ChildProcess): Promise<number | string> {
  if (proc.exitCode !== null) return proc.exitCode;
  return new Promise((resolve) => {
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    proc.once('exit', (code, sig) => { clearTimeout(t); resolve(code ?? sig ?? '?'); });
    proc.kill('SIGTERM');
  });
}

async function idleRun(a: Args): Promise<{ startMs: number; initMs: number; idle: Mem; exit: number | string }> {
  const share = makeShare();
  const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-cost-sock-')), 'v.sock');
  const { proc, startMs, t0 } = await start(a, share, sock);
  // Connect at once, as a VMM started right after the socket appears would: the handshake
  // and INIT are answered once the daemon serves.
  const fe = VirtioFsFrontend.open({ socketPath: sock, queueSize: 256, regions: [{ gpa: 0, size: 64 << 20 }], timeoutMs: 10000 });
  const c = new FuseClient(fe);
  c.doInit();
  const initMs = Number(process.hrtime.bigint() - t0) / 1e6;
  c.getattr(1n);
  await sleep(1000);
  const idle = memOf(proc.pid as number);
  const exit = await stop(proc);
  fe.close();
  return { startMs, initMs, idle, exit };
}

async function loadRun(a: Args): Promise<{ loaded: Mem; opsLine: string }> {
  const share = makeShare();
  const argv = backendArgv(a, share, '{sock}').map((s) => (s === share ? '{dir}' : s));
  const cmd = 'exec ' + argv.map((s) => (s.includes('{') ? s : `'${s}'`)).join(' ');
  const vufs = spawn(a.vufs, ['bench', '--backend', cmd, '--dir', share, '-w', 'getattr', '-q', '16', '-t', String(a.loadSeconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  vufs.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const done = new Promise<void>((r) => vufs.once('exit', () => r()));
  const loaded: Mem = { procs: 0, privateKiB: 0, rssKiB: 0, names: [] };
  let finished = false;
  void done.then(() => { finished = true; });
  // Sample through the run (the backend is vufs's child: sh execs it), keep the maximum.
  await sleep(1500);
  while (!finished) {
    const kids = children(vufs.pid as number);
    let sum: Mem = { procs: 0, privateKiB: 0, rssKiB: 0, names: [] };
    for (const k of kids) {
      const m = memOf(k);
      sum = { procs: sum.procs + m.procs, privateKiB: sum.privateKiB + m.privateKiB, rssKiB: sum.rssKiB + m.rssKiB, names: [...sum.names, ...m.names] };
    }
    if (sum.privateKiB > loaded.privateKiB) Object.assign(loaded, sum);
    await sleep(500);
  }
  const line = out.split('\n').find((l) => /getattr/.test(l) && /ops/.test(l)) ?? out.trim().split('\n').slice(-3).join(' | ');
  return { loaded, opsLine: line };
}

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const mb = (kib: number): string => (kib / 1024).toFixed(1);

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const starts: number[] = [];
  const inits: number[] = [];
  const idles: Mem[] = [];
  for (let i = 0; i < a.runs; i++) {
    const r = await idleRun(a);
    starts.push(r.startMs);
    inits.push(r.initMs);
    idles.push(r.idle);
    console.log(`run ${i + 1}: start->listening ${r.startMs.toFixed(0)} ms, ->INIT answered ${r.initMs.toFixed(0)} ms; idle ${r.idle.procs} procs (${r.idle.names.join(',')}), private ${mb(r.idle.privateKiB)} MB, RSS ${mb(r.idle.rssKiB)} MB; exit after SIGTERM: ${r.exit}`);
  }
  const l = await loadRun(a);
  console.log(`QD16 getattr: ${l.loaded.procs} procs (${l.loaded.names.join(',')}), private ${mb(l.loaded.privateKiB)} MB, RSS ${mb(l.loaded.rssKiB)} MB; vufs: ${l.opsLine.trim()}`);
  console.log(`SUMMARY ${a.backend} ${a.sandbox}: start->listening ${median(starts).toFixed(0)} ms, ->INIT ${median(inits).toFixed(0)} ms (medians of ${a.runs}), idle private ${mb(median(idles.map((m) => m.privateKiB)))} MB RSS ${mb(median(idles.map((m) => m.rssKiB)))} MB, loaded private ${mb(l.loaded.privateKiB)} MB RSS ${mb(l.loaded.rssKiB)} MB`);
}

await main();
