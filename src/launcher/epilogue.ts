#!/usr/bin/env node
// vfs-launch's last step, exec'd by the waiter (spawn.ts) in the launcher's pid once the
// daemon has ended in any way but a clean exit, or when a --mountpoint mount must be
// undone: it unmounts, says how the daemon ended (naming the system call of a seccomp kill
// from the kernel's audit record, which only the host side can read), and exits with the
// launcher's status. It runs only then, so a serving VM pays nothing for it. It must not
// start a child process: in namespace mode they would be born in a pid namespace whose
// init (the daemon) is gone.
//
// It also removes the <socket>.pid file (pid-file.ts): its lock, held through the exec
// into this process, is released when it exits.
//
//   epilogue.js --sandbox MODE --seccomp MODE [--unmount DIR] [--remove-pid-file PATH] STATUS DAEMON_PID
import fs from 'node:fs';
import { describeDaemonEnd } from './exit-status.js';
import { findSeccompKill } from './seccomp-report.js';
import { writeStderr } from '../log.js';

interface EpilogueArgs { sandbox: string; seccomp: string; unmount?: string; pidFile?: string; status: number; pid: number }

function parse(argv: readonly string[]): EpilogueArgs {
  const a: Partial<EpilogueArgs> = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === '--sandbox') a.sandbox = argv[++i];
    else if (v === '--seccomp') a.seccomp = argv[++i];
    else if (v === '--unmount') a.unmount = argv[++i];
    else if (v === '--remove-pid-file') a.pidFile = argv[++i];
    else rest.push(v);
  }
  const [status, pid] = rest.map(Number);
  if (a.sandbox === undefined || a.seccomp === undefined || rest.length !== 2 || !Number.isInteger(status) || !Number.isInteger(pid)) {
    throw new Error(`vfs-launch epilogue: bad arguments: ${argv.join(' ')}`);
  }
  return { sandbox: a.sandbox, seccomp: a.seccomp, unmount: a.unmount, pidFile: a.pidFile, status, pid };
}

/** "syslog (103)", or "103" when the number is not in our tables. */
async function syscallLabel(nr: number, auditArch: number): Promise<string> {
  const { archByAudit } = await import('../sandbox/seccomp/arch.js');
  const name = archByAudit(auditArch)?.byNumber.get(nr);
  return name === undefined ? String(nr) : `${name} (${nr})`;
}

/** The launcher's exit code for a daemon that ended with waiter status `status`. */
export async function epilogue(argv: readonly string[]): Promise<number> {
  const a = parse(argv);
  if (a.unmount !== undefined) {
    const { unmountIfMounted } = await import('../fuse-dev/mount.js');
    try {
      unmountIfMounted(a.unmount);
    } catch (err) {
      writeStderr(`vfs-launch: could not unmount ${a.unmount}: ${err instanceof Error ? err.message : String(err)}\n`);
    }
  }
  if (a.pidFile !== undefined) {
    try {
      fs.unlinkSync(a.pidFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') writeStderr(`vfs-launch: could not remove ${a.pidFile}: ${err instanceof Error ? err.message : String(err)}\n`);
    }
  }
  // The waiter's $? is 128+N for a daemon killed by signal N, in every mode.
  let end = describeDaemonEnd(a.status, undefined, true, a.seccomp);
  if (end.signal === 'SIGSYS') {
    const kill = await findSeccompKill(a.pid);
    if (kill !== undefined) end = describeDaemonEnd(a.status, undefined, true, a.seccomp, await syscallLabel(kill.syscall, kill.arch));
  }
  if (end.message !== undefined) writeStderr(`vfs-launch: ${end.message}\n`);
  return end.exitCode;
}

epilogue(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    writeStderr(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
