#!/usr/bin/env bash
# Builds the microVM sandbox's initramfs: busybox-static, the virtio and network
# modules of the installed cloud kernel, the agentd binary (stripped) with its shared
# libraries, and an /init that brings up slirp networking and runs `agentd hands`.
#
#   microvm-initramfs.sh AGENTD_BINARY KERNEL_RELEASE OUTPUT
#
# The per-VM part (certificates, limits, the clock) reaches the guest as QEMU fw_cfg
# files (opt/agentd/*), which /init copies to /etc/agentd. The agentd microvm driver runs this script (embedded in the binary) when
# its cached image is missing or older than the binary.
set -euo pipefail

binary=$1
release=$2
output=$3
modules=/lib/modules/$release
busybox=/bin/busybox

for needed in "$binary" "$modules" "$busybox"; do
  [ -e "$needed" ] || { echo "microvm-initramfs: missing $needed (packages: linux-image-cloud-amd64 busybox-static)" >&2; exit 1; }
done
# ldd fails on a static binary, which is what the VM needs.
if ldd "$busybox" >/dev/null 2>&1; then
  echo "microvm-initramfs: $busybox is not static (package: busybox-static)" >&2
  exit 1
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
chmod 755 "$staging"
mkdir -p "$staging"/{bin,sbin,etc/agentd,lib/modules,proc,sys,dev,tmp,run,workspace,var/lib/agentd,usr/bin,usr/sbin}
cp "$busybox" "$staging/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$staging/bin/$applet" ] || ln -s busybox "$staging/bin/$applet"
done
# busybox has no bash applet; `bash` runs ash, which understands the `eval $'...'` lines
# of the sandbox's shell protocol and most everyday bash syntax.
rm -f "$staging/bin/bash"
printf '#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n' >"$staging/bin/bash"
chmod 755 "$staging/bin/bash"

# The drivers the VM needs, each after the modules it depends on (modprobe's order).
: >"$staging/etc/agentd/modules"
for top in virtio_mmio virtio_pci virtio_net virtio_rng virtio_blk qemu_fw_cfg; do
  modprobe -S "$release" --show-depends "$top" | awk '$1 == "insmod" { print $2 }' | while read -r file; do
    module=$(basename "$file")
    module=${module%%.ko*}
    grep -qx "$module" "$staging/etc/agentd/modules" && continue
    case "$file" in
      *.ko) cp "$file" "$staging/lib/modules/$module.ko" ;;
      *.ko.xz) xz -dc "$file" >"$staging/lib/modules/$module.ko" ;;
      *.ko.zst) zstd -dqc "$file" >"$staging/lib/modules/$module.ko" ;;
      *.ko.gz) gzip -dc "$file" >"$staging/lib/modules/$module.ko" ;;
    esac
    echo "$module" >>"$staging/etc/agentd/modules"
  done
done

# Fully stripped and uncompressed: under TCG the guest kernel unpacks about 20 MB/s, and
# unpacking is most of the boot (debug symbols cost about a second; gzip and zstd are slower
# to unpack than the bytes they save).
strip --strip-all -o "$staging/bin/agentd" "$binary"
ldd "$binary" | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }' | while read -r library; do
  [ -e "$library" ] || continue
  mkdir -p "$staging$(dirname "$library")"
  cp -L "$library" "$staging$library"
done
# The dynamic loader must be at the path the binary names.
interpreter=$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
mkdir -p "$staging$(dirname "$interpreter")"
cp -L "$interpreter" "$staging$interpreter"

cat >"$staging/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sandbox:x:1000:1000:sandbox:/workspace:/bin/sh
EOF
cat >"$staging/etc/group" <<'EOF'
root:x:0:
sandbox:x:1000:
EOF

cat >"$staging/init" <<'EOF'
#!/bin/sh
# PID 1 of the sandbox VM: mounts, modules, network, then busybox init, which reaps
# orphans and restarts the agent if it dies.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r module; do insmod "/lib/modules/$module.ko" || echo "init: cannot load $module"; done </etc/agentd/modules
# The per-VM files come from QEMU's fw_cfg (opt/agentd/*).
for file in ca.pem agent.pem agent.key config allowlist; do
  cat "/sys/firmware/qemu_fw_cfg/by_name/opt/agentd/$file/raw" >"/etc/agentd/$file" || echo "init: no fw_cfg file $file"
done
chmod 600 /etc/agentd/agent.key
. /etc/agentd/config
date -s "@$AGENTD_NOW" >/dev/null
mount -t tmpfs -o "size=$AGENTD_TMP_BYTES,mode=1777" tmpfs /tmp
# The workspace is the session's disk (ext4, made on the host), which outlives the VM.
if [ -b /dev/vda ]; then
  mount -t ext4 -o nosuid,nodev /dev/vda /workspace || echo "init: cannot mount the workspace disk"
  rmdir /workspace/lost+found 2>/dev/null
fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" >/etc/resolv.conf
# A network namespace with only loopback, for tools unless the network is unrestricted
# (with an allowlist, the agent's egress proxy listens inside it).
mkdir -p /run/agentd
touch /run/agentd/netns-none
unshare --net=/run/agentd/netns-none ip link set lo up
chmod 700 /etc/agentd /var/lib/agentd
cat >/etc/inittab <<'INITTAB'
::respawn:/etc/agentd/run
INITTAB
exec /bin/init
EOF
chmod 755 "$staging/init"

cat >"$staging/etc/agentd/run" <<'EOF'
#!/bin/sh
# The agent, protected from the OOM killer; its shell runs as uid 1000 with a process limit,
# and without network unless the environment allows it: all of it (unrestricted), or the
# hosts of an allowlist through the agent's egress proxy.
. /etc/agentd/config
case "$AGENTD_NETWORK" in
  unrestricted) AGENTD_NETWORK_ARGUMENTS= ;;
  allowlist) AGENTD_NETWORK_ARGUMENTS="--netns /run/agentd/netns-none --allow-hosts-file /etc/agentd/allowlist" ;;
  *) AGENTD_NETWORK_ARGUMENTS="--netns /run/agentd/netns-none" ;;
esac
echo -1000 >/proc/self/oom_score_adj
exec /bin/agentd hands --listen "0.0.0.0:$AGENTD_PORT" --workspace /workspace --ledger /var/lib/agentd/ledger \
  --ca /etc/agentd/ca.pem --cert /etc/agentd/agent.pem --key /etc/agentd/agent.key \
  --wall-clock-ms "$AGENTD_WALL_CLOCK_MS" --output-bytes-max "$AGENTD_OUTPUT_BYTES_MAX" \
  --pids-max "$AGENTD_PIDS_MAX" --shell /bin/bash --run-as 1000 $AGENTD_NETWORK_ARGUMENTS </dev/null >/dev/console 2>&1
EOF
chmod 755 "$staging/etc/agentd/run"

mkdir -p "$(dirname "$output")"
(cd "$staging" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) >"$output.tmp.$$"
mv "$output.tmp.$$" "$output"
echo "microvm-initramfs: wrote $output ($(du -h "$output" | cut -f1))"
