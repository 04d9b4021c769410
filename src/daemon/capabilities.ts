// The vhost-user.json "capabilities" document libvirt reads from `--print-capabilities`
// (QEMU's docs/interop/vhost-user.json schema). We list only what we really support:
// virtiofsd's separate options (--shared-dir, --cache, ...) are accepted, and precopy live
// migration of the daemon's state (vhost-user DEVICE_STATE) is supported, as virtiofsd says.
export interface CapabilitiesDocument {
  type: 'fs';
  features: string[];
}

export function capabilitiesDocument(): CapabilitiesDocument {
  return { type: 'fs', features: ['migrate-precopy', 'separate-options'] };
}
