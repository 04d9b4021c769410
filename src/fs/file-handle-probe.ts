// Can this daemon use file handles for its inodes (--inode-file-handles=prefer|mandatory)?
// Asked once at start, after privileges are dropped and before the filter: the shared
// directory's file system must make handles (name_to_handle_at; tmpfs, ext4, xfs, btrfs do,
// some FUSE and network file systems do not) and we must be allowed to open them
// (open_by_handle_at wants CAP_DAC_READ_SEARCH in the initial user namespace, so a daemon in
// its own user namespace cannot).
import { AT_EMPTY_PATH, O_CLOEXEC, O_DIRECTORY, O_PATH, O_RDONLY, close, nameToHandleAt, openByHandleAt, openat } from '../sys/file-calls.js';
import { errnoName } from '../sys/libc.js';

/** undefined when file handles work on `rootFd`; otherwise why not, for the log or the error. */
export function fileHandleProblem(rootFd: number): string | undefined {
  const h = nameToHandleAt(rootFd, '', AT_EMPTY_PATH);
  if (typeof h === 'number') {
    return `name_to_handle_at on the shared directory: ${errnoName(-h)} (its file system makes no file handles)`;
  }
  // The mount fd must not be O_PATH (the kernel answers EBADF), so open the share for it.
  const mountFd = openat(rootFd, '.', O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (mountFd < 0) return `opening the shared directory: ${errnoName(-mountFd)}`;
  const fd = openByHandleAt(mountFd, h, O_PATH | O_CLOEXEC);
  close(mountFd);
  if (fd < 0) {
    return `open_by_handle_at: ${errnoName(-fd)} (it needs CAP_DAC_READ_SEARCH in the initial user namespace: ` +
      'run the daemon as root, not in a user namespace, and do not drop dac_read_search with --modcaps)';
  }
  close(fd);
  return undefined;
}
