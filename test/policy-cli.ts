// Test-only CLI entry: the policy commands in a clipanion Cli of their own, so the tests can
// run `policy ...` as a child process whether or not the launcher's main has registered them.
//   node --import tsx test/policy-cli.ts policy check FILE...
import { Builtins, Cli } from 'clipanion';
import { policyCommands } from '../src/launcher/policy-commands.js';

const cli = new Cli({ binaryName: 'vfs-launch' });
for (const c of policyCommands) cli.register(c);
cli.register(Builtins.HelpCommand);
void cli.runExit(process.argv.slice(2));
