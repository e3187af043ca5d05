#!/usr/bin/env bash
# End-to-end run on a KVM host with the Cuttlefish host tools (cuttlefish-base) installed:
# fetch the builds a cuttlefish/configs/*.json names, swap vsock-plugin into the fetched host
# package, boot with --vhost_user_vsock=true (adb itself then runs through our device), wait for
# sys.boot_completed, run the guest agent cases, stop, restore the stock backend.
#
#   cuttlefish-e2e.sh --config cuttlefish/configs/android-mainline.json \
#       --plugin target/release/vsock-plugin --agent <static vsock-guest-agent> --workdir DIR
#
# The JSON is the source of truth for the builds (`@ab/<branch>/<target>`); the instances'
# `connectivity.vsock.guest_group` become --vsock_guest_group. Logs: DIR/cuttlefish_runtime/.
#
# --snapshot (KVM runners, Android 15+ images): after the cases, `snapshot_util_cvd
# --subcmd=snapshot_take --auto_suspend` (crosvm sleeps our device, saves its state through
# VHOST_USER_PROTOCOL_F_DEVICE_STATE, wakes it: the same plugin process goes on) and the cases run
# again; then the device is stopped and relaunched from the snapshot (a fresh plugin process loads
# the state and owes the guest a TRANSPORT_RESET), the log must say "restored, generation 1", and
# the cases run a third time over connections opened after the restore.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cf=$(dirname "$here")
prog=${0##*/}
log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { log "$*"; exit 1; }

config="" plugin="" agent="" work="" snapshot=0 boot_timeout=${BOOT_TIMEOUT_SECONDS:-1800}
while [ $# -gt 0 ]; do
  case $1 in
    --config) config=${2:?}; shift 2 ;;
    --plugin) plugin=${2:?}; shift 2 ;;
    --agent) agent=${2:?}; shift 2 ;;
    --workdir) work=${2:?}; shift 2 ;;
    --snapshot) snapshot=1; shift ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -f "$config" ] && [ -x "$plugin" ] && [ -f "$agent" ] && [ -n "$work" ] ||
  die "usage: $prog --config JSON --plugin BIN --agent BIN --workdir DIR"
command -v jq >/dev/null || die "jq is required"
command -v cvd >/dev/null || die "cvd not found: install cuttlefish-base (cuttlefish/ci/setup-runner.sh)"

ab() { # "@ab/branch/target" -> "branch/target"
  case $1 in @ab/*) printf '%s' "${1#@ab/}" ;; *) die "$config: build $1 is not @ab/<branch>/<target>" ;; esac
}
host_build=$(ab "$(jq -r '.common.host_package' "$config")")
default_build=$(ab "$(jq -r '.instances[0].disk.default_build' "$config")")
kernel_build=$(ab "$(jq -r '.instances[0].boot.kernel.build' "$config")")
num=$(jq '.instances | length' "$config")
groups=$(jq -r '[.instances[].connectivity.vsock.guest_group // empty] | join(",")' "$config")
[ "$(jq '[.instances[].boot.kernel.build] | unique | length' "$config")" = 1 ] ||
  die "$config: all instances of one launch share one kernel"

mkdir -p "$work"
work=$(cd "$work" && pwd)
log "fetching $default_build + kernel $kernel_build into $work"
# cvd fetch flags: begin (names checked against cuttlefish/cvd_fetch_flags.txt)
cvd fetch \
  --default_build="$default_build" \
  --kernel_build="$kernel_build" \
  --host_package_build="$host_build" \
  --target_directory="$work"
# cvd fetch flags: end

"$cf/swap-host-binary.sh" --host-package "$work" --binary "$plugin"
cleanup() {
  HOME=$work "$work/bin/stop_cvd" >/dev/null 2>&1 || true
  "$cf/swap-host-binary.sh" --host-package "$work" --restore >/dev/null 2>&1 || true
}
trap cleanup EXIT

launch=(--host-package "$work" --kernel "$work/kernel" --initramfs "$work/initramfs.img")
if [ "$num" -gt 1 ]; then launch+=(--num-instances "$num"); fi
if [ -n "$groups" ]; then launch+=(--vsock-groups "$groups"); fi
snap=$work/snapshot
snap_flags=() restore_flags=()
if [ "$snapshot" = 1 ]; then
  # Snapshots need virtiofs off and the SwiftShader GPU mode (source.android.com, Cuttlefish
  # "Snapshot and restore"); the restore relaunches from the saved directory.
# launch_cvd flags: begin (names checked against cuttlefish/launch_cvd_flags.txt)
  snap_flags=(--enable_virtiofs=false --gpu_mode=guest_swiftshader)
  restore_flags=(--snapshot_path="$snap")
# launch_cvd flags: end
fi
"$cf/launch-local-kernel.sh" "${launch[@]}" -- "${snap_flags[@]}"

adb=$work/bin/adb
[ -x "$adb" ] || adb=adb
serial() { echo "0.0.0.0:$((6520 + $1 - 1))"; }   # adb_connector's TCP port of instance n

wait_boot() { # instance number
  local s deadline
  s=$(serial "$1")
  deadline=$(( $(date +%s) + boot_timeout ))
  "$adb" connect "$s" >/dev/null 2>&1 || true
  until [ "$("$adb" -s "$s" shell getprop sys.boot_completed 2>/dev/null | tr -d '\r')" = 1 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "instance $1 ($s): no sys.boot_completed=1 within ${boot_timeout}s"
    sleep 10
    "$adb" connect "$s" >/dev/null 2>&1 || true
  done
  log "instance $1 booted: adb over vhost-user vsock works"
}
for i in $(seq 1 "$num"); do wait_boot "$i"; done

# The backend that carried adb is ours (same bytes as --plugin).
want=$(sha256sum "$plugin" | cut -d' ' -f1)
found=0
for pid in $(pgrep -f "$work/bin/vhost_device_vsock" || true); do
  exe=$(readlink "/proc/$pid/exe" || true)
  case $exe in
    */vhost_device_vsock) [ "$(sha256sum "$exe" | cut -d' ' -f1)" = "$want" ] && found=1 ;;
  esac
done
[ "$found" = 1 ] || die "no running vhost_device_vsock process is vsock-plugin"
log "backend process is vsock-plugin ($want)"

for i in $(seq 1 "$num"); do "$adb" -s "$(serial "$i")" root >/dev/null; done
sleep 5
for i in $(seq 1 "$num"); do wait_boot "$i"; done

uid=$(id -u)
tmp=${TMPDIR:-/tmp}
cid1=3
driver=(python3 "$here/guest_agent_driver.py" --adb "$adb" --serial "$(serial 1)"
        --uds-path "$tmp/vsock_${cid1}_${uid}/vm.vsock" --agent "$agent")
if [ "$num" -gt 1 ]; then
  # vsock-groups.json: instance 1 (g1) and 2 (g1+g2) share g1; 3 (g2) shares a group with 2 but
  # not with 1, so it must stay unreachable from 1 (groups are not transitive).
  driver+=(--sibling-serial "$(serial 2)" --sibling-cid 4)
  if [ "$num" -ge 3 ]; then driver+=(--isolated-cid 5); fi
fi
"${driver[@]}"

if [ "$snapshot" = 1 ]; then
  # snapshot_util_cvd flags (host/commands/snapshot_util_cvd/parse.cc@0bae7297): subcmd,
  # snapshot_path, force, auto_suspend. Suspend sends SIGTSTP to process_restarter alone (the
  # plugin runs under it and ignores SIGTSTP anyway), crosvm sleeps the device and saves it.
  log "snapshot: suspend, save, resume (same plugin process)"
  HOME=$work "$work/bin/snapshot_util_cvd" --subcmd=snapshot_take --force --auto_suspend \
    --snapshot_path="$snap"
  before=$(pgrep -f "$work/bin/vhost_device_vsock" | sort | tr '\n' ' ')
  for i in $(seq 1 "$num"); do wait_boot "$i"; done
  "${driver[@]}"
  after=$(pgrep -f "$work/bin/vhost_device_vsock" | sort | tr '\n' ' ')
  [ "$before" = "$after" ] || die "the vsock backend was restarted by snapshot_take ($before -> $after)"

  log "restore: stop, relaunch from $snap (a fresh plugin process loads the state)"
  HOME=$work "$work/bin/stop_cvd"
  "$cf/launch-local-kernel.sh" "${launch[@]}" -- "${snap_flags[@]}" "${restore_flags[@]}"
  for i in $(seq 1 "$num"); do "$adb" disconnect "$(serial "$i")" >/dev/null 2>&1 || true; wait_boot "$i"; done
  grep -rq "restored, generation 1" "$work"/cuttlefish/instances/cvd-1/logs/launcher.log ||
    die "the restored backend did not log 'restored, generation 1'"
  "${driver[@]}"
  log "snapshot and restore passed"
fi
