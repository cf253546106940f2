#!/usr/bin/env bash
# What `pinstorm lab` needs on the host (scripts/test.sh runs this as root):
# - Debian packages: QEMU, virtme-ng's helpers (busybox-static for its initramfs, kmod for
#   depmod/modprobe), and the tools the guest runs from the host's root: ndctl, xfsprogs,
#   e2fsprogs, rdma-core/iproute2 (soft-RoCE), ibverbs-providers (the rxe provider);
#   dpkg-deb and debian-archive-keyring to fetch and check kernel packages; gcc,
#   liburing-dev and libnuma-dev to build the kernel's own selftests (`--kselftests`: cow
#   and gup_longterm use liburing for their io_uring cases, migration links libnuma).
# - virtme-ng from PyPI in a virtual environment inside the lab cache
#   ($PINSTORM_CACHE, else $XDG_CACHE_HOME/pinstorm, else ~/.cache/pinstorm).
set -euo pipefail

packages=(qemu-system-x86 busybox-static kmod ndctl xfsprogs e2fsprogs rdma-core iproute2
          ibverbs-providers ibverbs-utils python3-venv dpkg debian-archive-keyring xz-utils zstd file
          gcc libc6-dev liburing-dev libnuma-dev)
virtme_ng_version="1.42"

cache="${PINSTORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pinstorm}"
case "$cache" in
    /*) ;;
    *) echo "lab-setup: the lab cache must be an absolute path, got '$cache'" >&2; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then
    if [ "${PINSTORM_SKIP_APT_UPDATE:-0}" != 1 ]; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
else
    echo "lab-setup: not root: not installing ${packages[*]}"
fi

venv="$cache/venv"
if [ ! -x "$venv/bin/vng" ] || ! "$venv/bin/vng" --version 2>/dev/null | grep -q "$virtme_ng_version"; then
    echo "lab-setup: installing virtme-ng $virtme_ng_version into $venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "virtme-ng==$virtme_ng_version"
fi
echo "lab-setup: vng is $venv/bin/vng ($("$venv/bin/vng" --version))"
