// End to end under the real libvirt (Debian 12's 9.0): libvirt starts vfs-launch as the
// virtiofsd of a domain (`<binary path=.../dist/launcher/main.js>`), with the arguments it
// really builds (`--fd=N -o source=...,cache=...,... [--thread-pool-size=N]`), and a TCG guest
// (the busybox initramfs of scripts/build-initramfs.sh) mounts the share and reads and writes
// it; the host checks the results on the real directory and in libvirt's fs0 log.
//
// CI machines run no services, so the test starts its own libvirtd and virtlogd and stops
// them at the end. They run in a private mount namespace where the test's own directories
// are bound over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
// /var/cache/libvirt, so nothing of the host's libvirt state is read or changed: qemu.conf
// runs QEMU as root with no security driver, cgroups or device namespace (a container has
// none to give), and /etc/passwd and /etc/group gain, in that namespace only, the
// libvirt-qemu account the QEMU driver looks up at start (libvirt-daemon-system would create
// it on the host). The only trace on the host is the empty mount-point directories.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BEGIN_MARKER, END_MARKER, ERROR_MARKER, REPO_ROOT, buildBaseInitramfs, findKernel, findQemu, keyed } from './guest.js';
import { useDist } from '../entry-points.js';

const LAUNCHER_BIN = path.join(REPO_ROOT, 'dist/launcher/main.js');
const BUILD_INITRAMFS = path.join(REPO_ROOT, 'scripts/build-initramfs.sh');
const PATH_ENV = `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`;

/** Host directories libvirt's paths live under, each covered by a private bind mount. */
const PRIVATE_DIRS: ReadonlyArray<[host: string, own: string]> = [
  ['/etc/libvirt', 'etc'],
  ['/run/libvirt', 'run'],
  ['/var/lib/libvirt', 'lib'],
  ['/var/log/libvirt', 'log'],
  ['/var/cache/libvirt', 'cache'],
];

const QEMU_CONF = `# Written by test/e2e/libvirt.test.ts for its private libvirtd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
`;

function onPath(cmd: string): string {
  for (const dir of PATH_ENV.split(':')) {
    const p = path.join(dir, cmd);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${cmd} not found: apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients (scripts/setup.sh does)`);
}

function alive(pid: number): boolean {
  try {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A libvirtd + virtlogd pair of our own, in a private mount namespace. */
class PrivateLibvirt {
  readonly root: string;
  readonly uri: string;
  private libvirtd?: ChildProcess;
  private libvirtdExit?: Promise<void>;
  private output = '';

  constructor() {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-libvirt-'));
    this.uri = `qemu:///system?socket=${this.root}/run/libvirt-sock`;
    for (const [, own] of PRIVATE_DIRS) fs.mkdirSync(path.join(this.root, own));
    fs.writeFileSync(path.join(this.root, 'etc/qemu.conf'), QEMU_CONF);
    fs.writeFileSync(path.join(this.root, 'etc/libvirtd.conf'), `unix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\nlog_outputs = "3:file:${this.root}/libvirtd.log"\n`);
    fs.writeFileSync(path.join(this.root, 'etc/virtlogd.conf'), `log_outputs = "3:file:${this.root}/virtlogd.log"\n`);
    const passwd = fs.readFileSync('/etc/passwd', 'utf8');
    const group = fs.readFileSync('/etc/group', 'utf8');
    fs.writeFileSync(path.join(this.root, 'passwd'), /^libvirt-qemu:/m.test(passwd) ? passwd : `${passwd.trimEnd()}\nlibvirt-qemu:x:64055:64055:libvirt (test only):/var/lib/libvirt:/usr/sbin/nologin\n`);
    fs.writeFileSync(path.join(this.root, 'group'), /^libvirt-qemu:/m.test(group) ? group : `${group.trimEnd()}\nlibvirt-qemu:x:64055:\n`);
  }

  log(file: 'libvirtd.log' | 'virtlogd.log'): string {
    try {
      return fs.readFileSync(path.join(this.root, file), 'utf8');
    } catch {
      return '';
    }
  }

  /** A file libvirt wrote under /var/log/libvirt (in its namespace). */
  libvirtLog(rel: string): string {
    return fs.readFileSync(path.join(this.root, 'log', rel), 'utf8');
  }

  async start(): Promise<void> {
    const libvirtd = onPath('libvirtd');
    const virtlogd = onPath('virtlogd');
    for (const [host] of PRIVATE_DIRS) fs.mkdirSync(host, { recursive: true });
    const binds = [...PRIVATE_DIRS.map(([host, own]) => `mount --bind "$1/${own}" ${host}`), 'mount --bind "$1/passwd" /etc/passwd', 'mount --bind "$1/group" /etc/group'];
    const script = [
      'set -e',
      ...binds,
      `${virtlogd} -d -f "$1/etc/virtlogd.conf" -p "$1/virtlogd.pid"`,
      `exec ${libvirtd} -f "$1/etc/libvirtd.conf" -p "$1/libvirtd.pid"`,
    ].join('\n');
    const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'libvirt-ns', this.root], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Only what libvirt needs: no NODE_OPTIONS or test-runner variables reach vfs-launch.
      env: { PATH: PATH_ENV, LC_ALL: 'C', HOME: '/root' },
    });
    this.libvirtd = child;
    child.stdout.on('data', (b: Buffer) => { this.output += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { this.output += b.toString(); });
    this.libvirtdExit = new Promise((resolve) => child.once('exit', () => resolve()));
    process.once('exit', () => this.killAll());
    let exited = false;
    void this.libvirtdExit.then(() => { exited = true; });
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) throw new Error(`libvirtd exited at start:\n${this.output}\n${this.log('libvirtd.log').slice(-3000)}`);
      if (this.virsh(['version']).status === 0) return;
      if (Date.now() > deadline) throw new Error(`libvirtd did not answer within 30 s:\n${this.output}\n${this.log('libvirtd.log').slice(-3000)}`);
      await sleep(200);
    }
  }

  virsh(args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync('virsh', ['-q', '-c', this.uri, ...args], { encoding: 'utf8', env: { PATH: PATH_ENV, LC_ALL: 'C' }, timeout: 60_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  private virtlogdPid(): number | undefined {
    try {
      return Number(fs.readFileSync(path.join(this.root, 'virtlogd.pid'), 'utf8').trim()) || undefined;
    } catch {
      return undefined;
    }
  }

  private killAll(): void {
    const pids = [this.libvirtd?.pid, this.virtlogdPid()].filter((p): p is number => p !== undefined && alive(p));
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  async stop(): Promise<void> {
    if (this.libvirtd !== undefined && this.libvirtd.exitCode === null) {
      for (const name of this.virsh(['list', '--name']).stdout.split('\n').map((s) => s.trim()).filter(Boolean)) this.virsh(['destroy', name]);
      this.libvirtd.kill('SIGTERM');
      const stopped = await Promise.race([this.libvirtdExit?.then(() => true), sleep(15_000).then(() => false)]);
      if (stopped !== true) this.libvirtd.kill('SIGKILL');
    }
    const vl = this.virtlogdPid();
    if (vl !== undefined && alive(vl)) {
      process.kill(vl, 'SIGTERM');
      for (let i = 0; i < 50 && alive(vl); i++) await sleep(100);
      if (alive(vl)) process.kill(vl, 'SIGKILL');
    }
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

interface DomainCase {
  name: string;
  /** Attributes and children of `<binary>`. */
  binaryAttrs: string;
  binaryChildren: string;
  /** What libvirt must have put on vfs-launch's command line (after the binary path). */
  expectArgs: RegExp;
  /** What the guest reads from a file the host rewrote while it had it cached. */
  cache: 'never' | 'always' | 'auto';
}

// libvirt 9.0 accepts <cache mode='none'|'always'/> or none at all (its default passes no
// cache= and vfs uses auto); 'auto', 'metadata' and 'never' are refused at define time.
const CASES: DomainCase[] = [
  {
    // The filesystem of docs/threat-model.md's libvirt example, as written there.
    name: 'cache-default', binaryAttrs: " xattr='on'", binaryChildren: "<sandbox mode='namespace'/>",
    expectArgs: /^--fd=\d+ -o source=[^ ]*,sandbox=namespace,xattr$/, cache: 'auto',
  },
  {
    name: 'cache-none', binaryAttrs: " xattr='off'", binaryChildren: "<cache mode='none'/>",
    expectArgs: /^--fd=\d+ -o source=[^ ]*,cache=none,no_xattr$/, cache: 'never',
  },
  {
    name: 'cache-always', binaryAttrs: '', binaryChildren: "<cache mode='always'/><sandbox mode='chroot'/>",
    expectArgs: /^--fd=\d+ -o source=[^ ]*,cache=always,sandbox=chroot$/, cache: 'always',
  },
  {
    name: 'locks-off', binaryAttrs: '', binaryChildren: "<lock posix='off' flock='off'/><thread_pool size='2'/>",
    expectArgs: /^--fd=\d+ -o source=[^ ]*,no_flock,no_posix_lock --thread-pool-size=2$/, cache: 'auto',
  },
];

function guestScript(name: string): string {
  return String.raw`
cd "$VFS_MNT" || exit 90
echo "HOST $(cat host.txt)"
echo "PROBE1 $(cat probe.txt)"
echo "written by the ${name} guest" > guest.txt
mkdir gdir && echo inner > gdir/f && mv gdir/f gdir/g && rm -f gone.txt
echo "GDIR $(cat gdir/g) $(ls gdir | tr '\n' ',')"
echo SYNC_GUEST_READY
n=0
while [ ! -e from-host.txt ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
echo "FROM_HOST $(cat from-host.txt 2>&1)"
echo "PROBE2 $(cat probe.txt)"
sleep 1.5
echo "PROBE3 $(cat probe.txt)"
echo DONE
`;
}

function domainXml(o: { name: string; kernel: string; initrd: string; consoleFile: string; share: string; c: DomainCase }): string {
  return `<domain type='qemu'>
  <name>${o.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>${o.kernel}</kernel>
    <initrd>${o.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 no_timer_check vfs.tag=share</cmdline>
  </os>
  <features><acpi/></features>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary path='${LAUNCHER_BIN}'${o.c.binaryAttrs}>${o.c.binaryChildren}</binary>
      <source dir='${o.share}'/>
      <target dir='share'/>
    </filesystem>
    <serial type='file'><source path='${o.consoleFile}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

function readOr(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** The console's lines, markers and ANSI noise handled as guest.ts does for a QEMU it runs itself. */
function consoleLines(text: string): string[] {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g, '').replace(/\r/g, '').split('\n');
}

function libvirtSetup(t: ExecutionContext): void {
  // Missing parts fail the test with what to install, never skip it.
  findQemu();
  onPath('libvirtd');
  onPath('virtlogd');
  onPath('virsh');
  t.true(useDist(), 'dist/ is older than src/: run npm run build (libvirt starts dist/launcher/main.js)');
  try {
    fs.accessSync(LAUNCHER_BIN, fs.constants.X_OK);
  } catch {
    t.fail(`${LAUNCHER_BIN} is not executable (libvirt refuses it): npm run build makes it so`);
  }
  t.regex(fs.readFileSync(LAUNCHER_BIN, 'utf8').split('\n')[0], /^#!\/usr\/bin\/env node$/);
}

test.serial('libvirt 9.0 starts vfs-launch as the virtiofsd of TCG domains: cache default/none/always, locks off; the guests read and write the share', async (t) => {
  t.timeout(600_000);
  const started = Date.now();
  libvirtSetup(t);
  const kernel = findKernel();
  const base = buildBaseInitramfs();
  const lv = new PrivateLibvirt();
  t.teardown(() => lv.stop());
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-libvirt-e2e-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  await lv.start();
  const vr = lv.virsh(['version']);
  t.regex(vr.stdout, /libvirt 9\.0\.\d/, 'this test is about libvirt 9.0 (Debian 12)');
  t.log(`libvirtd up after ${Date.now() - started} ms (${vr.stdout.split('\n').find((l) => l.startsWith('Using library')) ?? '?'})`);

  // libvirt 9.0 refuses the cache modes it does not know at define time.
  for (const mode of ['auto', 'metadata', 'never']) {
    const xml = path.join(work, `refused-${mode}.xml`);
    fs.writeFileSync(xml, domainXml({ name: `vfs-refused-${mode}`, kernel, initrd: base, consoleFile: path.join(work, 'x.txt'), share: work, c: { ...CASES[0], binaryChildren: `<cache mode='${mode}'/>` } }));
    const r = lv.virsh(['define', xml]);
    t.not(r.status, 0, `libvirt accepted <cache mode='${mode}'/>`);
    t.regex(r.stderr, new RegExp(`Invalid value for attribute 'mode' in element 'cache': '${mode}'`));
  }

  for (const c of CASES) {
    const caseStart = Date.now();
    const dir = path.join(work, c.name);
    const share = path.join(dir, 'share');
    fs.mkdirSync(share, { recursive: true });
    fs.writeFileSync(path.join(share, 'host.txt'), 'written by the host\n');
    fs.writeFileSync(path.join(share, 'probe.txt'), 'v1\n');
    fs.writeFileSync(path.join(share, 'gone.txt'), 'removed by the guest\n');
    const scriptFile = path.join(dir, 'guest.sh');
    fs.writeFileSync(scriptFile, guestScript(c.name));
    const initrd = path.join(dir, 'initrd.cpio.gz');
    execFileSync('bash', [BUILD_INITRAMFS, '--base', base, '--script', scriptFile, '--out', initrd], { stdio: ['ignore', 'ignore', 'pipe'] });
    const consoleFile = path.join(dir, 'console.txt');
    const name = `vfs-e2e-${c.name}`;
    const xml = path.join(dir, 'domain.xml');
    fs.writeFileSync(xml, domainXml({ name, kernel, initrd, consoleFile, share, c }));

    const cr = lv.virsh(['create', xml]);
    t.is(cr.status, 0, `virsh create ${c.name}: ${cr.stderr}\n${lv.log('libvirtd.log').slice(-2000)}`);
    if (cr.status !== 0) continue;

    // The guest powers off when its script ends; the transient domain then disappears.
    // Meanwhile the host acts once the guest says so on its (file) console.
    let hostActed = false;
    let whileMounted = '';
    const deadline = Date.now() + 180_000;
    while (lv.virsh(['domstate', name]).status === 0 && Date.now() < deadline) {
      if (!hostActed && consoleLines(readOr(consoleFile)).includes('SYNC_GUEST_READY')) {
        hostActed = true;
        whileMounted = readOr(path.join(share, 'guest.txt'));
        fs.writeFileSync(path.join(share, 'probe.txt'), 'v2 rewritten by the host\n');
        fs.writeFileSync(path.join(share, 'from-host.txt'), 'written by the host while mounted\n');
      }
      await sleep(100);
    }
    if (Date.now() >= deadline) lv.virsh(['destroy', name]);
    const lines = consoleLines(readOr(consoleFile));
    const b = lines.indexOf(BEGIN_MARKER);
    const e = lines.findIndex((l) => l.startsWith(`${END_MARKER} rc=`));
    const consoleTail = lines.slice(-30).join('\n');
    t.true(b >= 0 && e > b, `${c.name}: the guest did not run its script:\n${consoleTail}`);
    t.deepEqual(lines.filter((l) => l.startsWith(ERROR_MARKER)), [], `${c.name}: guest /init errors`);
    const k = keyed(lines.slice(b + 1, e));
    t.is(lines[e], `${END_MARKER} rc=0`, `${c.name}:\n${consoleTail}`);
    t.is(k.get('DONE'), '', `${c.name}: script did not finish:\n${consoleTail}`);

    // What the guest saw and did, checked on the host.
    t.is(k.get('HOST'), 'written by the host', c.name);
    t.is(k.get('PROBE1'), 'v1', c.name);
    t.is(k.get('GDIR'), 'inner g,', c.name);
    t.is(k.get('FROM_HOST'), 'written by the host while mounted', c.name);
    t.true(hostActed, `${c.name}: the guest never said SYNC_GUEST_READY`);
    t.is(whileMounted, `written by the ${c.name} guest\n`, `${c.name}: guest.txt on the host while mounted`);
    t.is(fs.readFileSync(path.join(share, 'guest.txt'), 'utf8'), `written by the ${c.name} guest\n`);
    t.is(fs.readFileSync(path.join(share, 'gdir/g'), 'utf8'), 'inner\n');
    t.false(fs.existsSync(path.join(share, 'gdir/f')));
    t.false(fs.existsSync(path.join(share, 'gone.txt')));
    // The cache policy libvirt asked for is the one served: never shows the host's rewrite at
    // once, always keeps what the guest had cached, auto shows it once the 1 s timeout passed.
    if (c.cache === 'never') t.is(k.get('PROBE2'), 'v2 rewritten by the host', `${c.name}: cache=none must be never`);
    if (c.cache === 'always') t.deepEqual([k.get('PROBE2'), k.get('PROBE3')], ['v1', 'v1'], `${c.name}: cache=always keeps the guest's cache`);
    if (c.cache !== 'always') t.is(k.get('PROBE3'), 'v2 rewritten by the host', `${c.name}: after the attribute timeout`);

    // libvirt's record of the command line, and our daemon's lines in its fs0 log.
    const domainLog = lv.libvirtLog(`qemu/${name}.log`);
    const cmdLine = domainLog.split('\n').find((l) => l.startsWith(`${LAUNCHER_BIN} `)) ?? '';
    t.regex(cmdLine.slice(LAUNCHER_BIN.length + 1), c.expectArgs, `${c.name}: libvirt's command line (domain log):\n${domainLog.slice(0, 2000)}`);
    const fsLog = lv.libvirtLog(`qemu/${name}-fs0-virtiofsd.log`);
    t.regex(fsLog, /INFO vhost: frontend connected, serving requests/, `${c.name} fs0 log:\n${fsLog}`);
    t.regex(fsLog, /INFO vhost: frontend disconnected; shutting down/, `${c.name} fs0 log:\n${fsLog}`);
    t.notRegex(fsLog, /ERROR|SIGSYS|seccomp: killed/, `${c.name} fs0 log:\n${fsLog}`);
    t.log(`${c.name}: ${cmdLine.slice(LAUNCHER_BIN.length + 1)}; domain ran ${Date.now() - caseStart} ms; fs0 log ${fsLog.trim().split('\n').length} lines`);
  }

  // <lock posix='on' flock='on'/> asks for remote locks, which vfs does not offer: vfs-launch
  // refuses at once (as virtiofsd does), libvirt fails the start, and the fs0 log says why.
  {
    const c: DomainCase = { name: 'locks-on', binaryAttrs: '', binaryChildren: "<lock posix='on' flock='on'/>", expectArgs: /,flock,posix_lock$/, cache: 'auto' };
    const dir = path.join(work, c.name);
    fs.mkdirSync(path.join(dir, 'share'), { recursive: true });
    const name = `vfs-e2e-${c.name}`;
    const xml = path.join(dir, 'domain.xml');
    fs.writeFileSync(xml, domainXml({ name, kernel, initrd: base, consoleFile: path.join(dir, 'console.txt'), share: path.join(dir, 'share'), c }));
    const cr = lv.virsh(['create', xml]);
    t.not(cr.status, 0, 'a domain asking for remote locks started');
    const fsLog = lv.libvirtLog(`qemu/${name}-fs0-virtiofsd.log`);
    t.regex(fsLog, /^vfs-launch: -o flock: remote locks are not offered .*<lock posix='off' flock='off'\/>/m, fsLog);
    t.is(lv.virsh(['domstate', name]).status === 0, false, 'the refused domain is gone');
    t.log(`locks-on: virsh create failed as expected; fs0 log: ${fsLog.trim()}`);
  }
  t.log(`total ${Date.now() - started} ms`);
});
