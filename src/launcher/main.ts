#!/usr/bin/env node
// vfs-launch: the command users and libvirt run. The default command takes every argument
// as is (virtiofsd's form and ours, see args.ts) because clipanion's own option handling
// cannot express "unknown options belong to the daemon"; the policy audit tools are
// ordinary clipanion commands under `vfs-launch policy ...`.
import { Cli, Command, Option } from 'clipanion';
import { policyCommands } from './policy-commands.js';
import { runLauncher } from './run.js';

class LaunchCommand extends Command {
  static override paths = [Command.Default];
  static override usage = Command.Usage({
    description: 'start the sandboxed virtio-fs daemon',
    details: 'Run `vfs-launch --help` for the options.',
  });

  args = Option.Proxy();

  async execute(): Promise<number> {
    return runLauncher(this.args, { stdout: this.context.stdout, stderr: this.context.stderr });
  }
}

async function main(): Promise<void> {
  const cli = new Cli({ binaryLabel: 'vfs-launch', binaryName: 'vfs-launch', binaryVersion: '0.1.0' });
  cli.register(LaunchCommand);
  for (const c of policyCommands) cli.register(c);
  const code = await cli.run(process.argv.slice(2));
  process.exitCode = code;
}

await main();
