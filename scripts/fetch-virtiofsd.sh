#!/usr/bin/env bash
# Fetch the reference Rust virtiofsd from Debian trixie, with the shared libraries its package
# depends on, into a private cache directory, and print the path of a wrapper that runs it.
# The bench and the end-to-end tests compare our daemon with it. Nothing is installed on the
# system: apt runs against a private sources list, list directory and archive cache, and the
# packages are unpacked with dpkg-deb. A second run finds the working wrapper and only prints it.
#
#   scripts/fetch-virtiofsd.sh [CACHE_DIR]   (default: $VFS_VIRTIOFSD_CACHE or ~/.cache/vfs/virtiofsd-ref)
set -euo pipefail

cache=${1:-${VFS_VIRTIOFSD_CACHE:-${HOME:-/root}/.cache/vfs/virtiofsd-ref}}
suite=${VFS_VIRTIOFSD_SUITE:-trixie}
wrapper="$cache/bin/virtiofsd"

if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
  echo "$wrapper"
  exit 0
fi

die() { echo "fetch-virtiofsd: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "apt-get not found (a Debian-based host is needed)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

arch=$(dpkg --print-architecture)
case "$arch" in
  amd64) triplet=x86_64-linux-gnu; loader=ld-linux-x86-64.so.2 ;;
  arm64) triplet=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
  *) die "unsupported architecture $arch" ;;
esac

# The Debian mirror this host already uses (deb822 "URIs:" or one-line "deb URI"), security excluded.
mirror=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
  [ -r "$f" ] || continue
  while read -r uri; do
    case "$uri" in
      *security*|*snapshot*) ;;
      *debian*) mirror=$uri; break ;;
    esac
  done < <(sed -e 's/#.*//' "$f" | grep -oE '(https?|file)://[^[:space:]]+' || true)
  [ -n "$mirror" ] && break
done
mirror=${VFS_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$cache/debs" "$cache/root" "$cache/bin"
printf 'deb %s %s main\n' "$mirror" "$suite" >"$apt_dir/sources.list"
: >"$apt_dir/status"

apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::State::Status=$apt_dir/status"
  -o "Dir::Cache=$apt_dir"
  -o "Dir::Cache::Archives=$apt_dir/archives"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
  -o "APT::Architecture=$arch"
)

echo "fetch-virtiofsd: reading the $suite index from $mirror" >&2
apt-get "${apt_opts[@]}" -qq update >&2

# Download one package into debs/ (skipping ones already there) and print its Depends field.
download() {
  local pkg=$1
  if ! compgen -G "$cache/debs/${pkg}_*.deb" >/dev/null; then
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" -qq download "$pkg" >&2)
  fi
  dpkg-deb -f "$(compgen -G "$cache/debs/${pkg}_*.deb" | head -1)" Depends
}

# virtiofsd plus the transitive closure of its library dependencies (first alternative of each).
declare -A seen=()
queue=(virtiofsd)
while [ "${#queue[@]}" -gt 0 ]; do
  pkg=${queue[0]}
  queue=("${queue[@]:1}")
  [ -n "${seen[$pkg]:-}" ] && continue
  seen[$pkg]=1
  deps=$(download "$pkg")
  IFS=',' read -ra parts <<<"$deps"
  for part in "${parts[@]}"; do
    name=$(echo "${part%%|*}" | sed -E 's/\(.*\)//; s/:any//; s/[[:space:]]//g')
    [ -n "$name" ] || continue
    case "$name" in
      # Packages that ship no libraries the binary loads.
      libc-bin|debconf*|adduser|init-system-helpers) continue ;;
    esac
    queue+=("$name")
  done
done
echo "fetch-virtiofsd: packages: ${!seen[*]}" >&2

for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done

root="$cache/root"
[ -x "$root/usr/libexec/virtiofsd" ] || die "virtiofsd binary missing from the package"
libdirs="$root/usr/lib/$triplet:$root/lib/$triplet"
ld="$root/usr/lib/$triplet/$loader"
[ -e "$ld" ] || ld="$root/lib/$triplet/$loader"
[ -e "$ld" ] || die "the $suite dynamic loader is missing"

# The trixie binary needs trixie's glibc: run it through that loader, never the host's.
cat >"$wrapper.tmp" <<EOF
#!/bin/sh
exec "$ld" --library-path "$libdirs" "$root/usr/libexec/virtiofsd" "\$@"
EOF
chmod +x "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"

"$wrapper" --version >&2 || die "the wrapper does not run"
echo "$wrapper"
