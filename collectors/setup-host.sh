#!/usr/bin/env bash
# Prepares a Debian 12 host for vmemtrace's collectors and real-event tests (run as root):
#   - Debian packages: bcc (bpfcc-tools, python3-bpfcc, libbpfcc), bpftool, kernel headers, QEMU, trace-cmd,
#     what the QEMU scenarios boot (busybox-static), and headless Chromium for the report tests;
#   - /lib/modules/$(uname -r)/{build,source} pointing at Debian's headers when no package matches
#     the running kernel (bcc compiles tracepoint/uprobe programs fine against them);
#   - tracefs, debugfs and bpffs mounted;
#   - bcc's Python module made importable in the venv given as $1, without the rest of
#     Debian's dist-packages.
# Idempotent: a second run installs nothing and changes nothing.
set -euo pipefail
venv=${1:?usage: setup-host.sh VENV}

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: not root: skipping host set-up (collectors and real-event tests need root)" >&2
    exit 0
fi

packages=(bpfcc-tools python3-bpfcc libbpfcc linux-headers-amd64 qemu-system-x86 trace-cmd systemtap-sdt-dev
          busybox-static cpio chromium chromium-driver socat
          bpftool)  # bpftool: tests/test_collector_faults.py checks nothing stays loaded
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build" ]; then
    headers=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
    common=${headers%-amd64}-common
    echo "setup-host: no headers for $(uname -r); pointing $kdir at $headers" >&2
    mkdir -p "$kdir"
    ln -sfn "$headers" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# Only the bcc package is exposed to the venv: a folder holding one link, named by a .pth file.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$venv/debian-bcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$venv/debian-bcc/bcc"
echo "$(cd "$venv/debian-bcc" && pwd)" > "$site/debian-bcc.pth"
"$venv/bin/python" -c 'import bcc' || { echo "setup-host: bcc is still not importable" >&2; exit 1; }
