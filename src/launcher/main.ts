#!/usr/bin/env node
// vfs-launch: the command users and libvirt run. The default command takes every argument
// as is (virtiofsd's form and ours, see args.ts) and goes straight to runLauncher: it is
// on every VM's start-up path, and clipanion with the policy tools' modules would only add
// start-up time there. The policy audit tools are clipanion commands under
// `vfs-launch policy ...`, loaded only for that.
import { runLauncher } from './run.js';

async function policyCli(argv: string[]): Promise<number> {
  const { Cli } = await import('clipanion');
  const { policyCommands } = await import('./policy-commands.js');
  const cli = new Cli({ binaryLabel: 'vfs-launch', binaryName: 'vfs-launch', binaryVersion: '0.1.0' });
  for (const c of policyCommands) cli.register(c);
  return cli.run(argv);
}

const argv = process.argv.slice(2);
process.exitCode = argv[0] === 'policy' ? await policyCli(argv) : await runLauncher(argv);
