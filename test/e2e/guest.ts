// Boots a throw-away QEMU guest (TCG: these machines have no KVM) whose virtio-fs device talks
// to a vhost-user-fs backend on a unix socket, runs a shell script inside it against the
// mounted share and hands back what the script printed. The guest is the host's own Debian
// kernel with a busybox initramfs built by scripts/build-initramfs.sh; the /init there prints
// the script's output between VFS-GUEST-BEGIN and VFS-GUEST-END markers on ttyS0.
// Missing QEMU, kernel or busybox is an error, never a reason to skip: the e2e tests must fail.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BUILD_INITRAMFS = path.join(REPO_ROOT, 'scripts/build-initramfs.sh');

export const BEGIN_MARKER = 'VFS-GUEST-BEGIN';
export const END_MARKER = 'VFS-GUEST-END';
export const ERROR_MARKER = 'VFS-GUEST-ERROR';

export interface BootOptions {
  /** The backend's vhost-user socket (must already be listening). */
  socketPath: string;
  /** Shell script run by the guest's busybox sh with the share mounted at $VFS_MNT (/mnt). */
  script: string;
  memMiB?: number;
  queueSize?: number;
  tag?: string;
  /** `mount -o` options for the virtiofs mount. */
  mountOptions?: string;
  /** Extra kernel command-line parameters (e.g. `lsm=selinux`). */
  kernelArgs?: string;
  timeoutMs?: number;
  /** Called for each console line as it arrives (the guest can wait for the host to act). */
  onLine?: (line: string) => void;
  /**
   * Settles when the backend has exited. A backend that dies while the guest runs leaves the
   * guest's requests unanswered forever, so QEMU is then killed and the boot fails at once.
   */
  backendExited?: Promise<unknown>;
  /** The backend's output, added to a failure's message. */
  backendOutput?: () => string;
  /**
   * Boot the kernel (and take its modules) from this root instead of the host's, as
   * scripts/build-initramfs.sh --modules-root (e.g. trixieKernel()'s Debian 13 6.12).
   */
  kernelRoot?: string;
  /** vCPUs (QEMU -smp); 1 when not given. */
  cpus?: number;
  /** The device's request queues (vhost-user-fs-pci num-request-queues); 1 when not given. */
  requestQueues?: number;
}

export interface GuestResult {
  /** Lines the script printed, between the markers. */
  lines: string[];
  /** The script's exit status. */
  rc: number;
  /** The whole console, for diagnostics. */
  console: string;
  /** From QEMU's start to the BEGIN marker (share mounted). */
  bootMs: number;
  /** From QEMU's start to its exit. */
  totalMs: number;
  qemuExit: number | null;
}

export class GuestError extends Error {
  constructor(message: string, readonly console: string, readonly stderr: string, readonly backend = '') {
    super(`${message}\n--- guest console (tail) ---\n${tail(console)}\n--- qemu stderr ---\n${tail(stderr)}\n--- backend output (tail) ---\n${tail(backend)}`);
    this.name = 'GuestError';
  }
}

function tail(s: string, n = 40): string {
  return s.split('\n').slice(-n).join('\n');
}

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** The QEMU binary; throws with the package to install when it is missing. */
export function findQemu(): string {
  const q = onPath('qemu-system-x86_64');
  if (q === undefined) throw new Error('qemu-system-x86_64 not found: apt-get install qemu-system-x86');
  return q;
}

/** The host's Debian kernel whose modules go into the initramfs (or the one under `root`). */
export function findKernel(root?: string): string {
  try {
    return execFileSync('bash', [BUILD_INITRAMFS, '--print-kernel', ...rootArgs(root)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr ?? String(e);
    throw new Error(`no guest kernel: ${stderr.trim()}`, { cause: e });
  }
}

let workDir: string | undefined;
const baseImages = new Map<string, string>();

function rootArgs(root: string | undefined): string[] {
  return root === undefined ? [] : ['--modules-root', root];
}

/**
 * The Debian 13 kernel (6.12: drives several request queues, which 6.1 does not) unpacked by
 * scripts/setup-trixie-kernel.sh, set up on first use; returns its root for `kernelRoot`.
 */
export function trixieKernel(): string {
  return execFileSync('bash', [path.join(REPO_ROOT, 'scripts/setup-trixie-kernel.sh'), '--print'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
}

function scratch(): string {
  if (workDir === undefined) {
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-guest-'));
    const dir = workDir;
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return workDir;
}

/** The initramfs without a guest script, built once per process (and kernel root). */
export function buildBaseInitramfs(root?: string): string {
  const key = root ?? '';
  let image = baseImages.get(key);
  if (image === undefined) {
    image = path.join(scratch(), `base-${baseImages.size}.cpio.gz`);
    execFileSync('bash', [BUILD_INITRAMFS, '--out', image, ...rootArgs(root)], { stdio: ['ignore', 'ignore', 'pipe'] });
    baseImages.set(key, image);
  }
  return image;
}

let bootCount = 0;

function imageWithScript(script: string, root?: string): string {
  const base = buildBaseInitramfs(root);
  const n = ++bootCount;
  const scriptFile = path.join(scratch(), `guest-${n}.sh`);
  const out = path.join(scratch(), `initrd-${n}.cpio.gz`);
  fs.writeFileSync(scriptFile, script);
  execFileSync('bash', [BUILD_INITRAMFS, '--base', base, '--script', scriptFile, '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  return out;
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g;

export function qemuArgs(o: {
  socketPath: string; kernel: string; initrd: string; memMiB: number; queueSize: number; tag: string; append: string;
  cpus?: number; requestQueues?: number;
}): string[] {
  const queues = o.requestQueues === undefined ? '' : `,num-request-queues=${o.requestQueues}`;
  return [
    '-nodefaults', '-no-user-config',
    '-accel', 'tcg',
    '-smp', String(o.cpus ?? 1),
    '-m', String(o.memMiB),
    // vhost-user needs the guest's RAM in a shareable memfd the backend can map.
    '-object', `memory-backend-memfd,id=mem,size=${o.memMiB}M,share=on`,
    '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=vfs0,path=${o.socketPath}`,
    '-device', `vhost-user-fs-pci,queue-size=${o.queueSize},chardev=vfs0,tag=${o.tag}${queues}`,
    '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', o.kernel, '-initrd', o.initrd,
    '-append', o.append,
  ];
}

/** Boots the guest, runs `script`, resolves when QEMU has exited. */
export async function bootGuest(opts: BootOptions): Promise<GuestResult> {
  const memMiB = opts.memMiB ?? 512;
  const queueSize = opts.queueSize ?? 1024;
  const tag = opts.tag ?? 'myfs';
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const qemu = findQemu();
  const kernel = findKernel(opts.kernelRoot);
  const initrd = imageWithScript(opts.script, opts.kernelRoot);
  // no_timer_check: on a loaded host a TCG guest can hang for minutes in the IO-APIC timer check
  // (seen in CI: the console stopped at "MP-BIOS bug: 8254 timer not connected to IO-APIC").
  let append = `console=ttyS0 quiet panic=-1 no_timer_check vfs.tag=${tag}`;
  if (opts.mountOptions !== undefined) append += ` vfs.opts=${opts.mountOptions}`;
  if (opts.kernelArgs !== undefined) append += ` ${opts.kernelArgs}`;
  const args = qemuArgs({ socketPath: opts.socketPath, kernel, initrd, memMiB, queueSize, tag, append, cpus: opts.cpus, requestQueues: opts.requestQueues });

  const start = Date.now();
  const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // A test process that dies (ava timeout) must not leave a TCG guest burning a core.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let consoleText = '';
  let stderr = '';
  let pending = '';
  let bootMs = -1;
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    pending += chunk.replace(ANSI, '').replace(/\r/g, '');
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      consoleText += line + '\n';
      if (bootMs < 0 && line === BEGIN_MARKER) bootMs = Date.now() - start;
      opts.onLine?.(line);
    }
  });
  child.stderr.on('data', (chunk: string) => { stderr += chunk; });

  let timedOut = false;
  let backendDied = false;
  let qemuDone = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  void opts.backendExited?.then(() => {
    // A normal backend exits only after QEMU has gone; give QEMU a moment to notice too.
    setTimeout(() => {
      if (qemuDone) return;
      backendDied = true;
      child.kill('SIGKILL');
    }, 3000).unref();
  });
  const exitCode = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  }).finally(() => {
    qemuDone = true;
    clearTimeout(timer);
    process.removeListener('exit', killOnExit);
  });
  consoleText += pending;
  const totalMs = Date.now() - start;

  const backendText = opts.backendOutput?.() ?? '';
  if (backendDied) throw new GuestError('the backend exited while the guest was running', consoleText, stderr, backendText);
  if (timedOut) throw new GuestError(`guest timed out after ${timeoutMs} ms`, consoleText, stderr, backendText);
  const all = consoleText.split('\n');
  const errors = all.filter((l) => l.startsWith(ERROR_MARKER));
  const b = all.indexOf(BEGIN_MARKER);
  const e = all.findIndex((l) => l.startsWith(`${END_MARKER} rc=`));
  if (b < 0 || e < b) {
    throw new GuestError(`guest did not run the script (qemu exit ${exitCode}; ${errors.join('; ') || 'no markers'})`, consoleText, stderr, backendText);
  }
  if (errors.length > 0) throw new GuestError(`guest /init reported: ${errors.join('; ')}`, consoleText, stderr, backendText);
  return {
    lines: all.slice(b + 1, e),
    rc: Number(all[e].slice(`${END_MARKER} rc=`.length)),
    console: consoleText,
    bootMs,
    totalMs,
    qemuExit: exitCode,
  };
}

/** `KEY value...` lines printed by a guest script, as a map (last one wins). */
export function keyed(lines: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of lines) {
    const sp = l.indexOf(' ');
    if (sp > 0) m.set(l.slice(0, sp), l.slice(sp + 1));
    else if (l.length > 0) m.set(l, '');
  }
  return m;
}
