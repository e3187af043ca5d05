#!/usr/bin/env bash
# Put vsock-plugin in place of Cuttlefish's stock vhost-user vsock backend in a host package, or put
# the stock one back.
#
# Cuttlefish starts `<host package>/bin/vhost_device_vsock` (one process per instance group, one
# `--vm guest-cid=..,socket=..,uds-path=..[,groups=..]` per instance) when `--vhost_user_vsock=true`;
# no launcher flag names another binary, so the file itself is replaced. vsock-plugin accepts
# vhost-device-vsock's command line.
#
#   swap-host-binary.sh --host-package DIR --binary PATH   install PATH (the stock file is kept as
#                                                          bin/vhost_device_vsock.stock, once)
#   swap-host-binary.sh --host-package DIR --restore       put the stock binary back
#   swap-host-binary.sh --host-package DIR --status        say which binary is installed
#
# DIR is a host package: a `cvd fetch --target_directory` directory, an unpacked
# cvd-host_package.tar.gz, or $ANDROID_HOST_OUT. Stop the device first (bin/stop_cvd): a running
# backend keeps the old file open and is restarted by process_restarter with whatever is there.
set -euo pipefail

prog=${0##*/}
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

pkg="" bin="" action=install
while [ $# -gt 0 ]; do
  case $1 in
    --host-package) pkg=${2:?}; shift 2 ;;
    --host-package=*) pkg=${1#*=}; shift ;;
    --binary) bin=${2:?}; shift 2 ;;
    --binary=*) bin=${1#*=}; shift ;;
    --restore) action=restore; shift ;;
    --status) action=status; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$pkg" ] || die "--host-package DIR is required"
[ -d "$pkg/bin" ] || die "$pkg has no bin/ directory: not a Cuttlefish host package"

target=$pkg/bin/vhost_device_vsock
backup=$target.stock
marker=$target.vsock-plugin   # sha256 of the binary we installed

sha() { sha256sum "$1" | cut -d' ' -f1; }

running_warning() {
  if command -v pgrep >/dev/null && pgrep -f "^$target( |$)" >/dev/null 2>&1; then
    printf '%s: warning: %s is running; stop the device (bin/stop_cvd) so the new file is used\n' \
      "$prog" "$target" >&2
  fi
}

case $action in
  status)
    if [ -f "$backup" ] && [ -f "$marker" ] && [ -f "$target" ] && [ "$(sha "$target")" = "$(cat "$marker")" ]; then
      echo "vsock-plugin installed (sha256 $(cat "$marker")); stock binary kept in $backup"
    elif [ -f "$backup" ]; then
      echo "modified: $target is neither the stock binary nor the one installed by $prog; stock in $backup"
    elif [ -f "$target" ]; then
      echo "stock vhost_device_vsock"
    else
      echo "no vhost_device_vsock in $pkg/bin"
      exit 1
    fi
    ;;
  install)
    [ -n "$bin" ] || die "--binary PATH is required (e.g. target/release/vsock-plugin)"
    [ -f "$bin" ] && [ -x "$bin" ] || die "$bin is not an executable file"
    if [ ! -f "$backup" ]; then
      [ -f "$target" ] || die "$target does not exist: this host package has no vhost-user vsock backend to replace"
      cp -p "$target" "$backup"
    fi
    tmp=$(mktemp "$pkg/bin/.vhost_device_vsock.XXXXXX")
    cp "$bin" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$target"
    sha "$target" > "$marker"
    running_warning
    echo "installed $bin as $target (stock binary in $backup)"
    ;;
  restore)
    [ -f "$backup" ] || die "no $backup: nothing to restore (already stock?)"
    mv -f "$backup" "$target"
    rm -f "$marker"
    running_warning
    echo "restored the stock $target"
    ;;
esac
