// The vhost-user.json "capabilities" document libvirt reads from `--print-capabilities`
// (QEMU's docs/interop/vhost-user.json schema). We list only what we really support:
// virtiofsd's separate options (--shared-dir, --cache, ...) are accepted; migration is not.
export interface CapabilitiesDocument {
  type: 'fs';
  features: string[];
}

export function capabilitiesDocument(): CapabilitiesDocument {
  return { type: 'fs', features: ['separate-options'] };
}
