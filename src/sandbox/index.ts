// The sandbox stage's public face for the daemon: the file-system isolation (enterSandbox)
// and the privilege drop (dropPrivileges), plus the capability helpers the launcher uses to
// validate --modcaps. Seccomp lives beside it in ./seccomp (its own owner).
export { enterSandbox } from './filesystem.js';
export type { SandboxMode, SandboxPlan, SandboxResult } from './filesystem.js';
export { dropPrivileges, setNofileLimit, DEFAULT_NOFILE } from './privileges.js';
export type { PrivilegePlan } from './privileges.js';
export {
  CAPABILITY_NAMES, DEFAULT_CAPABILITIES, CapabilityError, capabilityMask, capabilityNames, resolveCapabilities,
} from './capabilities.js';
export { SandboxError } from './errors.js';
