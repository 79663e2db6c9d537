#!/usr/bin/env bash
# Builds the read-only root filesystem of the OCI sandbox (actors/src/sandbox/drivers/oci.rs)
# from busybox-static: one static binary, its applet symlinks, a uid 1000 user, and the
# empty mount points the sandbox mounts over. Idempotent; rerunning refreshes it.
# Usage: scripts/oci-rootfs.sh [DIR]   (default /var/cache/agentd/oci-rootfs)
set -euo pipefail

rootfs="${1:-/var/cache/agentd/oci-rootfs}"
busybox=/bin/busybox
if ! [ -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
  echo "oci-rootfs: $busybox is missing: apt-get install -y busybox-static" >&2
  exit 1
fi
# A dynamically linked busybox would need the host's libraries inside the rootfs.
if ldd "$busybox" >/dev/null 2>&1; then
  echo "oci-rootfs: $busybox is dynamically linked: apt-get install -y busybox-static" >&2
  exit 1
fi

mkdir -p "$rootfs"/{bin,etc,tmp,proc,dev,workspace,usr/bin,sbin}
rm -f "$rootfs/bin/busybox"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  # The list names busybox itself; that entry is the real binary, not a link.
  [ "$applet" = busybox ] && continue
  ln -sfn busybox "$rootfs/bin/$applet"
done
# busybox has no bash applet; `bash` runs ash, which understands the `eval $'...'` lines
# of the sandbox's shell protocol and most everyday bash syntax.
rm -f "$rootfs/bin/bash"
printf '#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n' > "$rootfs/bin/bash"
chmod 0755 "$rootfs/bin/bash"
cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
agent:x:1000:1000:agent:/workspace:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
agent:x:1000:
nogroup:x:65534:
GROUP
chmod 1777 "$rootfs/tmp"
echo "oci-rootfs: $rootfs ready"
