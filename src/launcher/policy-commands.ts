// `vfs-launch policy ...`: the auditor's tools over policies/ and compiled filters. check
// validates profiles; compile writes the raw sock_filter array other sandboxes load (bwrap
// --seccomp FD); dump disassembles; explain runs the compiled filter in the emulator for one
// syscall; diff compares effective decisions; record traces a daemon run with strace and
// prints the syscalls it made as a profile fragment. Registered by the launcher's main.
import { Command, Option, UsageError } from 'clipanion';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Arch } from '../sandbox/seccomp/arch.js';
import { ARCHES, archInfo, hostArch, isArch } from '../sandbox/seccomp/arch.js';
import type { CompiledFilter, FilterMode } from '../sandbox/seccomp/bpf-compiler.js';
import { compilePolicy } from '../sandbox/seccomp/bpf-compiler.js';
import { decodeProgram } from '../sandbox/seccomp/bpf.js';
import { disassemble } from '../sandbox/seccomp/bpf-disasm.js';
import { explain, formatExplanation } from '../sandbox/seccomp/explain.js';
import { loadPolicy, policiesDir } from '../sandbox/seccomp/index.js';
import { PolicyError, formatIssue } from '../sandbox/seccomp/policy.js';
import { diffPolicies, formatDiff } from '../sandbox/seccomp/policy-diff.js';
import type { Policy } from '../sandbox/seccomp/policy-types.js';
import { recordCommand, recordingToPolicy } from '../sandbox/seccomp/record.js';
import { formatCoverage, missingArches, syscallCoverage } from '../sandbox/seccomp/coverage.js';
import { fileWorkload, waitForFuseMount } from '../sandbox/seccomp/record-workload.js';

const MODES: readonly FilterMode[] = ['kill', 'log', 'trap'];

function archOption(value: string | undefined): Arch {
  if (value === undefined) {
    const h = hostArch();
    if (h === undefined) throw new UsageError(`no syscall table for this machine (${process.arch}); pass --arch ${ARCHES.join('|')}`);
    return h;
  }
  if (!isArch(value)) throw new UsageError(`--arch ${value}: expected one of ${ARCHES.join(', ')}`);
  return value;
}

function modeOption(value: string | undefined): FilterMode | undefined {
  if (value === undefined) return undefined;
  const m = MODES.find((x) => x === value);
  if (m === undefined) throw new UsageError(`--mode ${value}: expected one of ${MODES.join(', ')} (default: the policy's defaultAction)`);
  return m;
}

/** FILE arguments may name several profiles, merged as the daemon merges them: "a.json,b.json". */
function fileList(arg: string): string[] {
  return arg.split(',').filter((f) => f !== '');
}

/** Shared by the commands: load or print every policy problem and fail with exit code 1. */
abstract class PolicyCommand extends Command {
  protected load(files: readonly string[], requireComments = false): Policy | undefined {
    try {
      return loadPolicy(files, { requireComments });
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      for (const i of e.issues) this.context.stderr.write(`${formatIssue(i)}\n`);
      return undefined;
    }
  }

  protected compile(policy: Policy, arch: Arch, mode?: FilterMode): CompiledFilter | undefined {
    try {
      return compilePolicy(policy, { arch, mode });
    } catch (e) {
      this.context.stderr.write(`${(e as Error).message}\n`);
      return undefined;
    }
  }

  protected notes(p: Policy): void {
    for (const n of p.notes) this.context.stderr.write(`note: ${n}\n`);
  }
}

export class PolicyCheckCommand extends PolicyCommand {
  static override paths = [['policy', 'check']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'validate seccomp profiles (schema, syscall names per arch, duplicate and conflicting rules)',
    details: 'All files are merged as the daemon merges them. Without FILE, checks the project\'s policies/.',
    examples: [['Check the shipped policies', '$0 policy check policies/node-runtime.json policies/file-server.json']],
  });

  requireComments = Option.Boolean('--require-comments', false, { description: 'every allowed syscall must carry a comment' });
  files = Option.Rest({ name: 'FILE' });

  async execute(): Promise<number> {
    const p = this.load(this.files, this.requireComments || this.files.length === 0);
    if (p === undefined) return 1;
    this.notes(p);
    const sizes: string[] = [];
    for (const arch of p.architectures) {
      const c = this.compile(p, arch);
      if (c === undefined) return 1;
      sizes.push(`${arch} ${c.length} instructions, ${c.ruled.size} syscalls with rules`);
    }
    this.context.stdout.write(`OK ${p.files.join(', ')}: ${p.rules.length} rules; ${sizes.join('; ')}\n`);
    return 0;
  }
}

export class PolicyCompileCommand extends PolicyCommand {
  static override paths = [['policy', 'compile']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'compile profiles to a raw struct sock_filter array (8 bytes per instruction, little-endian)',
    details: 'The output loads with `bwrap --seccomp FD`, or seccomp(SECCOMP_SET_MODE_FILTER) in any program.',
    examples: [['For bwrap', '$0 policy compile policies/node-runtime.json --arch x86_64 -o node.bpf']],
  });

  arch = Option.String('--arch', { description: 'x86_64 or aarch64 (default: this machine)' });
  mode = Option.String('--mode', { description: 'default action kill|log|trap instead of the policy\'s defaultAction' });
  output = Option.String('-o,--output', { required: true, description: 'file to write' });
  files = Option.Rest({ name: 'FILE', required: 1 });

  async execute(): Promise<number> {
    const arch = archOption(this.arch);
    const mode = modeOption(this.mode);
    const p = this.load(this.files);
    if (p === undefined) return 1;
    this.notes(p);
    const c = this.compile(p, arch, mode);
    if (c === undefined) return 1;
    writeFileSync(this.output, c.bytes);
    this.context.stderr.write(`${this.output}: ${c.length} instructions (${c.bytes.length} bytes) for ${arch}\n`);
    return 0;
  }
}

export class PolicyDumpCommand extends PolicyCommand {
  static override paths = [['policy', 'dump']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'disassemble a compiled filter (raw BPF file) or the filter a profile compiles to',
    examples: [['What the daemon installs', '$0 policy dump policies/node-runtime.json,policies/file-server.json --mode kill'],
      ['Raw BPF', '$0 policy dump node.bpf']],
  });

  arch = Option.String('--arch', { description: 'arch to compile a profile for / to name syscalls in raw BPF' });
  mode = Option.String('--mode', { description: 'default action kill|log|trap when compiling a profile' });
  file = Option.String({ name: 'FILE[,FILE...]|BPF' });

  async execute(): Promise<number> {
    const several = this.file.includes(',');
    const raw = several ? Buffer.alloc(0) : readFileSync(this.file);
    if (several || raw.toString('utf8').trimStart().startsWith('{')) {
      const arch = archOption(this.arch);
      const p = this.load(fileList(this.file));
      if (p === undefined) return 1;
      const c = this.compile(p, arch, modeOption(this.mode));
      if (c === undefined) return 1;
      const notes = new Map([...c.origins].map(([pc, o]) => [pc, o.what]));
      this.context.stdout.write(`; ${p.files.join(' + ')} for ${arch}: ${c.length} instructions\n`);
      this.context.stdout.write(disassemble(c.program, { arch: archInfo(arch), notes }).join('\n') + '\n');
      return 0;
    }
    const prog = decodeProgram(raw);
    const arch = this.arch !== undefined ? archInfo(archOption(this.arch)) : undefined;
    this.context.stdout.write(`; ${this.file}: ${prog.length} instructions\n`);
    this.context.stdout.write(disassemble(prog, { arch }).join('\n') + '\n');
    return 0;
  }
}

export class PolicyExplainCommand extends PolicyCommand {
  static override paths = [['policy', 'explain']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'say which rule decides a syscall, and what the compiled filter returns for it (emulated)',
    examples: [['ioctl with arguments', '$0 policy explain policies/file-server.json ioctl --args 3,0x5401']],
  });

  arch = Option.String('--arch', { description: 'x86_64 or aarch64 (default: this machine)' });
  mode = Option.String('--mode', { description: 'default action kill|log|trap (default: the policy\'s)' });
  args = Option.String('--args', { description: 'comma-separated argument values (decimal, 0x hex, or negative)' });
  file = Option.String({ name: 'FILE[,FILE...]' });
  syscall = Option.String({ name: 'SYSCALL' });

  async execute(): Promise<number> {
    const arch = archOption(this.arch);
    const args: bigint[] = [];
    for (const a of (this.args ?? '').split(',').filter((s) => s.trim() !== '')) {
      if (!/^\s*-?(0x[0-9a-fA-F]+|\d+)\s*$/.test(a)) throw new UsageError(`--args: ${JSON.stringify(a)} is not an integer`);
      const t = a.trim();
      args.push(BigInt.asUintN(64, t.startsWith('-') ? -BigInt(t.slice(1)) : BigInt(t)));
    }
    if (args.length > 6) throw new UsageError('--args: a syscall has at most six arguments');
    const p = this.load(fileList(this.file));
    if (p === undefined) return 1;
    const c = this.compile(p, arch, modeOption(this.mode));
    if (c === undefined) return 1;
    if (!/^\d+$/.test(this.syscall) && !archInfo(arch).byName.has(this.syscall)) {
      this.context.stderr.write(`unknown syscall ${JSON.stringify(this.syscall)} on ${arch}\n`);
      return 1;
    }
    const e = explain(p, c, this.syscall, args);
    this.context.stdout.write(formatExplanation(e, c).join('\n') + '\n');
    return e.agree ? 0 : 2;
  }
}

export class PolicyDiffCommand extends PolicyCommand {
  static override paths = [['policy', 'diff']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'compare the effective decision for every syscall between two profiles',
    details: '+ allowed/ruled only in B, - only in A, ~ changed (action or argument conditions).',
    examples: [['Against a recording', '$0 policy diff policies/file-server.json recorded.json']],
  });

  a = Option.String({ name: 'A[,A2...]' });
  b = Option.String({ name: 'B[,B2...]' });

  async execute(): Promise<number> {
    const pa = this.load(fileList(this.a));
    const pb = this.load(fileList(this.b));
    if (pa === undefined || pb === undefined) return 1;
    const d = diffPolicies(pa, pb);
    this.context.stdout.write(formatDiff(d).join('\n') + '\n');
    return d.header.length === 0 && d.lines.length === 0 ? 0 : 1;
  }
}

/** How to start the daemon from this package: the built file when present, else the source with tsx. */
function daemonCommand(): string[] {
  const root = dirname(policiesDir());
  const built = join(root, 'dist/daemon/main.js');
  if (existsSync(built)) return [process.execPath, built];
  return [process.execPath, '--import', 'tsx', join(root, 'src/daemon/main.ts')];
}

export class PolicyRecordCommand extends PolicyCommand {
  static override paths = [['policy', 'record']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'run the daemon under strace -f and print the syscalls it makes after its filter install',
    details: 'The daemon runs with --seccomp log (unless given another --seccomp), so it survives calls the ' +
      'policy lacks; counting starts at its seccomp(SECCOMP_SET_MODE_FILTER) call and covers its threads and ' +
      'children. With --mountpoint in the daemon options the built-in file workload runs on the mount; ' +
      'otherwise drive the daemon yourself (e.g. boot a guest) and stop it with Ctrl-C or --duration.',
    examples: [['Local FUSE mount with the built-in workload',
      '$0 policy record -- --shared-dir /srv/share --mountpoint /mnt/x --sandbox none']],
  });

  arch = Option.String('--arch', { description: 'table for naming syscalls (default: this machine)' });
  duration = Option.String('--duration', { description: 'seconds to record when there is no built-in workload' });
  output = Option.String('-o,--output', { description: 'write the fragment here instead of stdout' });
  daemonArgs = Option.Rest({ name: 'DAEMON-OPTIONS' });

  async execute(): Promise<number> {
    const arch = archOption(this.arch);
    const opts = [...this.daemonArgs];
    if (!opts.some((o) => o === '--seccomp' || o.startsWith('--seccomp='))) opts.push('--seccomp', 'log');
    const mpIdx = opts.findIndex((o) => o === '--mountpoint');
    const mountpoint = mpIdx >= 0 ? opts[mpIdx + 1] : opts.find((o) => o.startsWith('--mountpoint='))?.split('=')[1];
    const seconds = this.duration !== undefined ? Number(this.duration) : undefined;
    if (seconds !== undefined && !(seconds > 0)) throw new UsageError(`--duration ${this.duration}: expected seconds > 0`);
    const what = mountpoint !== undefined ? 'the built-in file workload on a FUSE mount' : 'a manual workload';
    this.context.stderr.write(`record: strace -f ${[...daemonCommand(), ...opts].join(' ')}\n`);
    const rec = await recordCommand([...daemonCommand(), ...opts], {
      arch,
      env: { ...process.env, UV_USE_IO_URING: '0' },
      workload: async () => {
        if (mountpoint !== undefined) {
          await waitForFuseMount(resolve(mountpoint));
          await fileWorkload(resolve(mountpoint));
        } else if (seconds !== undefined) {
          await new Promise((r) => setTimeout(r, seconds * 1000));
        } else {
          await new Promise<void>((r) => process.once('SIGINT', () => r()));
        }
      },
    });
    if (!rec.sawSeccomp) this.context.stderr.write('record: the daemon installed no seccomp filter; counted every syscall of the run\n');
    if (rec.unknown.length > 0) this.context.stderr.write(`record: not in the ${arch} table: ${rec.unknown.join(', ')}\n`);
    this.context.stderr.write(`record: ${rec.counts.size} distinct syscalls from ${rec.tids} threads\n`);
    const text = recordingToPolicy(rec, arch, what) + '\n';
    if (this.output !== undefined) writeFileSync(this.output, text);
    else this.context.stdout.write(text);
    return 0;
  }
}

export class PolicyCoverageCommand extends PolicyCommand {
  static override paths = [['policy', 'coverage']];
  static override usage = Command.Usage({
    category: 'Policy audit',
    description: 'check that the policy allows every syscall the daemon can make after its filter is installed',
    details: `
      Walks the binding table (src/sys/syscall-map.ts): every FFI binding and node:fs call that runs after the
      seccomp filter, with the syscalls glibc issues for it on x86_64 and aarch64. Each syscall is decided by the
      policy's rules and by the compiled filter (emulated); the table names the rule that allows it. Exit code 1
      when any serving binding would be killed, refused, or allowed only for arguments it does not fix.
      Without FILE: the daemon's own policies (node-runtime.json and file-server.json, merged).
    `,
    examples: [['the daemon\'s policies', '$0 policy coverage'], ['only failures, one arch', '$0 policy coverage --arch aarch64 --failures']],
  });

  arch = Option.String('--arch', { description: 'x86_64 or aarch64 (default: both)' });
  failures = Option.Boolean('--failures', false, { description: 'print only the rows that fail' });
  file = Option.String({ name: 'FILE[,FILE...]', required: false });

  async execute(): Promise<number> {
    const arches = this.arch === undefined ? undefined : [archOption(this.arch)];
    const p = this.load(this.file === undefined ? [] : fileList(this.file));
    if (p === undefined) return 1;
    const rows = syscallCoverage(p, arches);
    const bad = rows.filter((r) => !r.ok);
    this.context.stdout.write(formatCoverage(this.failures ? bad : rows).join('\n') + '\n');
    let code = bad.length > 0 ? 1 : 0;
    for (const a of arches ?? missingArches(p)) {
      if (!p.architectures.includes(a)) {
        this.context.stderr.write(`${p.files.join(', ')}: architectures does not list ${a}; the daemon runs there too\n`);
        code = 1;
      }
    }
    const bindings = new Set(rows.map((r) => r.binding)).size;
    this.context.stderr.write(`${rows.length} syscall uses of ${bindings} serving bindings checked against ${p.files.join(', ')}: ` +
      `${bad.length === 0 ? 'all allowed' : `${bad.length} not covered`}\n`);
    return code;
  }
}

/** For the launcher's CLI: `for (const c of policyCommands) cli.register(c)`. */
export const policyCommands = [
  PolicyCheckCommand, PolicyCompileCommand, PolicyDumpCommand, PolicyExplainCommand, PolicyDiffCommand, PolicyRecordCommand,
  PolicyCoverageCommand,
];
