#!/usr/bin/env bash
# Build the container image the container tests run their targets in, from this Debian 12
# machine's own files (no registry needed): /usr/bin/python3 and its standard library, sh,
# coreutils, sudo with PAM, and the libraries they load. Accounts inside: root, `app` (may
# sudo to anyone without a password) and `other`.
#
# Usage: ci/target-image.sh [TOOL [TAG]]   (TOOL: docker or podman; the image is kept once made)
set -euo pipefail
# The system's programs, not a pyenv shim or a virtualenv's.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

TOOL=${1:-docker}
TAG=${2:-ferrogen-target:2}

log() { printf '[target-image] %s\n' "$*" >&2; }

if "$TOOL" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists"
    exit 0
fi

ROOT=$(mktemp -d /tmp/ferrogen-target.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
chmod 755 "$ROOT"

PROGRAMS="sh dash bash python3 python3.11 sudo su env id cat ls cp mv rm mkdir rmdir chmod chown ln
    stat sleep true false uname head tail touch sha1sum sha256sum md5sum whoami readlink dirname
    basename printf echo test sed grep getent mktemp dd tr wc sort tee date find xargs"

mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib" "$ROOT/usr/lib64" "$ROOT/etc" "$ROOT/tmp" \
    "$ROOT/var/tmp" "$ROOT/root" "$ROOT/home/app" "$ROOT/home/other" "$ROOT/proc" "$ROOT/dev" "$ROOT/sys" \
    "$ROOT/run"
for link in bin lib lib64 sbin; do ln -s "usr/$link" "$ROOT/$link"; done
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"

copy() {  # path... : copies each, keeping its path and symlinks, into ROOT
    for path in "$@"; do
        [ -e "$path" ] || continue
        # Debian 12 is usr-merged: /lib/x is /usr/lib/x.
        case $path in /lib/* | /lib64/* | /bin/* | /sbin/*) path=/usr$path ;; esac
        cp -a --parents "$path" "$ROOT" 2>/dev/null || true
        if [ -L "$path" ]; then copy "$(readlink -f "$path")"; fi
    done
}

elves=()
for program in $PROGRAMS; do
    # The program's file, not the shell's builtin of that name (echo, printf, test).
    found=$(type -P "$program") || continue
    path=$(readlink -f "$found")
    copy "$found" "$path"
    elves+=("$path")
done
copy /usr/bin/sudo /usr/libexec/sudo /etc/sudo.conf /etc/pam.d /etc/security /etc/login.defs \
    /etc/nsswitch.conf /etc/environment /etc/default/locale /usr/lib/x86_64-linux-gnu/security \
    /usr/lib/x86_64-linux-gnu/libnss_files.so.2 /usr/lib/x86_64-linux-gnu/libnss_compat.so.2
chmod 4755 "$ROOT/usr/bin/sudo"
# The standard library, without what no target task imports.
tar -C / -c --exclude='usr/lib/python3.11/test' --exclude='usr/lib/python3.11/idlelib' \
    --exclude='usr/lib/python3.11/tkinter' --exclude='usr/lib/python3.11/ensurepip' \
    --exclude='usr/lib/python3.11/lib2to3' usr/lib/python3.11 | tar -C "$ROOT" -x
while IFS= read -r -d '' so; do elves+=("$so"); done < <(find /usr/lib/python3.11/lib-dynload \
    /usr/libexec/sudo /usr/lib/x86_64-linux-gnu/security -name '*.so*' -print0)
for elf in "${elves[@]}"; do
    { ldd "$elf" 2>/dev/null || true; } | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^\s*\(\/[^ ]*\) (.*/\1/p'
done | sort -u | while IFS= read -r lib; do copy "$lib"; done
copy /usr/lib64/ld-linux-x86-64.so.2

# cp --parents makes the directories it adds private; the system's are world-readable.
find "$ROOT" -type d -exec chmod go+rx {} +

cat >"$ROOT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
other:x:1001:1001:other:/home/other:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$ROOT/etc/group" <<'GROUP'
root:x:0:
app:x:1000:
other:x:1001:
nogroup:x:65534:
GROUP
cat >"$ROOT/etc/shadow" <<'SHADOW'
root:*:19000:0:99999:7:::
app:*:19000:0:99999:7:::
other:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
SHADOW
chmod 640 "$ROOT/etc/shadow"
cat >"$ROOT/etc/sudoers" <<'SUDOERS'
Defaults env_reset
Defaults !lecture
root ALL=(ALL:ALL) ALL
app ALL=(ALL:ALL) NOPASSWD: ALL
SUDOERS
chmod 440 "$ROOT/etc/sudoers"
chown 1000:1000 "$ROOT/home/app"
chown 1001:1001 "$ROOT/home/other"
chmod 700 "$ROOT/root"

tar -C "$ROOT" -c . | "$TOOL" import -c 'CMD ["/usr/bin/sleep", "infinity"]' - "$TAG" >/dev/null
log "built $TAG ($(du -sh "$ROOT" | cut -f1))"
