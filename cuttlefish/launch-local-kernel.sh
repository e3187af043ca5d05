#!/usr/bin/env bash
# Launch Cuttlefish (crosvm, vhost-user vsock) with a locally built or fetched kernel, so every
# guest vsock connection - adb included - goes through the host package's bin/vhost_device_vsock
# (vsock-plugin after cuttlefish/swap-host-binary.sh).
#
#   launch-local-kernel.sh --host-package DIR --kernel PATH [--initramfs PATH] [options] [-- FLAGS]
#
#   --host-package DIR    host package (bin/launch_cvd); also the images directory unless --images
#   --images DIR          Android images (HOME of launch_cvd; default: the host package directory)
#   --kernel PATH         bzImage (x86_64) or Image (arm64); from a Kleaf dist or `cvd fetch --kernel_build`
#   --initramfs PATH      the kernel's initramfs.img (GKI modules); default: initramfs.img next to it
#   --num-instances N     N devices in one group (one backend process, one --vm per device)
#   --vsock-groups LIST   per-instance vsock groups, comma-separated (e.g. g1,g1,g2; `a+b` = both)
#   --cpus N / --memory-mb N     default 4 / 4096
#   --pkt-buf-size BYTES  Android kernels only: virtio_transport_max_vsock_pkt_buf_size (Cuttlefish
#                         sets 16384; 65536 exercises 64 KiB packets as upstream kernels send them)
#   --dry-run             print the command instead of running it
#   -- FLAGS              passed to launch_cvd unchanged (not checked against launch_cvd_flags.txt)
#
# Stop with: HOME=<images dir> <host package>/bin/stop_cvd
set -euo pipefail

prog=${0##*/}
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

pkg="" images="" kernel="" initramfs="" num=1 groups="" cpus=4 mem=4096 pkt="" dry=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --host-package) pkg=${2:?}; shift 2 ;;
    --images) images=${2:?}; shift 2 ;;
    --kernel) kernel=${2:?}; shift 2 ;;
    --initramfs) initramfs=${2:?}; shift 2 ;;
    --num-instances) num=${2:?}; shift 2 ;;
    --vsock-groups) groups=${2:?}; shift 2 ;;
    --cpus) cpus=${2:?}; shift 2 ;;
    --memory-mb) mem=${2:?}; shift 2 ;;
    --pkt-buf-size) pkt=${2:?}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$pkg" ] || die "--host-package DIR is required"
[ -n "$kernel" ] || die "--kernel PATH is required"
images=${images:-$pkg}
[ -n "$initramfs" ] || initramfs=$(dirname "$kernel")/initramfs.img
[ "$dry" = 1 ] || {
  [ -x "$pkg/bin/launch_cvd" ] || die "$pkg/bin/launch_cvd not found"
  [ -f "$kernel" ] || die "kernel $kernel not found"
  [ -f "$initramfs" ] || die "initramfs $initramfs not found (pass --initramfs)"
  [ -e /dev/kvm ] || die "/dev/kvm missing: Cuttlefish needs KVM"
  case $(cat "$pkg/bin/vhost_device_vsock.vsock-plugin" 2>/dev/null || true) in
    "") printf '%s: note: %s/bin/vhost_device_vsock is not vsock-plugin (run swap-host-binary.sh)\n' "$prog" "$pkg" >&2 ;;
  esac
}
case $num in ''|*[!0-9]*) die "--num-instances must be a number" ;; esac

# launch_cvd flags: begin (names checked against cuttlefish/launch_cvd_flags.txt)
args=(
  --vm_manager=crosvm
  --vhost_user_vsock=true
  --enable_sandbox=false
  --kernel_path="$kernel"
  --initramfs_path="$initramfs"
  --cpus="$cpus"
  --memory_mb="$mem"
  --daemon=true
  --report_anonymous_usage_stats=n
)
if [ "$num" -gt 1 ]; then
  args+=(--num_instances="$num")
fi
if [ -n "$groups" ]; then
  args+=(--vsock_guest_group="$groups")
fi
if [ -n "$pkt" ]; then
  # `:=` overrides a key the board already sets (16384); plain `=` does not (launch_cvd's help).
  args+=(--extra_bootconfig_args="kernel.vmw_vsock_virtio_transport_common.virtio_transport_max_vsock_pkt_buf_size:=$pkt")
fi
# launch_cvd flags: end

# ANDROID_HOST_OUT: host binaries (our bin/vhost_device_vsock among them) come from the host
# package even when the images live elsewhere.
cmd=(env HOME="$images" ANDROID_HOST_OUT="$pkg" "$pkg/bin/launch_cvd" "${args[@]}" "${extra[@]}")
if [ "$dry" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
cd "$images"
exec "${cmd[@]}"
