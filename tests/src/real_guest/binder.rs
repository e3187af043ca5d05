//! `real-guest --binder`: the control plane over **kernel binder**, inside a guest. The host has no
//! binder driver; Debian's generic 6.12 kernel ships `binder_linux`, so the guest loads it with
//! `devices=binder`, runs rsbinder's service manager (`rsb_hub`) and a static `vsock-plugin` with
//! `--control binder://vsock`, and drives it with `vsock-plugin ctl --uri binder://vsock …` (every
//! call a kernel binder transaction through the service manager). A script in the image does the
//! steps and prints `STEP <name> PASS|FAIL <detail>`; each step becomes one case line.
//!
//! Needs `tests/real-guest/setup --generic` (the generic kernel), a static `vsock-plugin`
//! (`RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target
//! x86_64-unknown-linux-gnu -p vsock-plugin`) and a static `rsb_hub` (`cargo install rsbinder-tools
//! --version 0.12.0` with the same RUSTFLAGS and `--target`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::backend::{expand_single, Backend, VmSpec};
use super::cases::{CaseResult, Fail};
use super::initramfs;
use super::kernels::Kernel;
use super::proto::{escape, unescape};
use super::qemu::{QemuConfig, Vm};
use super::util::{file_tail, indent};

pub const SCRIPT: &str = r#"#!/bin/sh
# Kernel binder in a guest: binder_linux, rsb_hub, vsock-plugin --control binder://vsock, ctl.
U=binder://vsock
step() { echo "STEP $1 $2 $3"; }
fail() { step "$1" FAIL "$2"; echo "--- hub log"; tail -n 15 /tmp/hub.log; echo "--- plugin log"; tail -n 15 /tmp/plugin.log; exit 1; }
ctl() { timeout 20 /bin/vsock-plugin ctl --uri $U "$@" 2>&1; }

[ -c /dev/binder ] || fail binder_device "no /dev/binder ($(grep -c binder /proc/modules) binder modules loaded)"
step binder_device PASS "/dev/binder $(cat /sys/module/binder_linux/parameters/devices 2>/dev/null)"

mkdir -p /dev/binderfs && ln -sf /dev/binder /dev/binderfs/binder
/bin/rsb_hub --insecure-allow-all > /tmp/hub.log 2>&1 &
hub=$!
i=0; while [ $i -lt 50 ]; do
  kill -0 $hub 2>/dev/null || fail servicemanager "rsb_hub exited: $(tail -n 3 /tmp/hub.log | tr '\n' ' ')"
  grep -q 'SIGHUP' /tmp/hub.log && break
  sleep 0.1; i=$((i+1))
done
sleep 0.5
kill -0 $hub 2>/dev/null || fail servicemanager "rsb_hub exited: $(tail -n 3 /tmp/hub.log | tr '\n' ' ')"
step servicemanager PASS "rsb_hub pid $hub is the context manager of /dev/binder"

t0=$(date +%s)
out=$(timeout 15 /bin/vsock-plugin ctl --uri binder://nobody status 2>&1); rc=$?
t1=$(date +%s)
if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $rc -eq 143 ]; then
  step ctl_unknown_name FAIL "ctl --uri binder://nobody status: exit $rc after $((t1-t0)) s: $(echo "$out" | head -n 1)"
else
  step ctl_unknown_name PASS "binder://nobody: failed in $((t1-t0)) s (exit $rc): $(echo "$out" | head -n 1)"
fi

RUST_LOG=info /bin/vsock-plugin --guest-cid 3 --socket /tmp/p.vhost --uds-path /tmp/p.vsock --control $U > /tmp/plugin.log 2>&1 &
plugin=$!
i=0; while [ $i -lt 100 ]; do
  grep -q 'control plane at' /tmp/plugin.log && break
  kill -0 $plugin 2>/dev/null || fail control_serve "plugin exited: $(tail -n 3 /tmp/plugin.log | tr '\n' ' ')"
  sleep 0.1; i=$((i+1))
done
grep -q 'control plane at' /tmp/plugin.log || fail control_serve "no 'control plane at' in the plugin log"
step control_serve PASS "$(grep -o 'serving .*' /tmp/plugin.log | head -n 1)"

out=$(ctl status) || fail ctl_status "$out"
echo "$out" | grep -q waiting_frontend || fail ctl_status "$out"
step ctl_status PASS "$(echo "$out" | tail -n 1 | tr -s ' ')"

out=$(ctl caps) || fail ctl_caps "$out"
step ctl_caps PASS "$(echo "$out" | tr '\n' ' ' | tr -s ' ' | cut -c1-200)"

out=$(ctl policy deny --cid 3 --port 7 --reason kernel-binder-test) || fail policy_deny "$out"
out=$(ctl policy list) || fail policy_deny "$out"
echo "$out" | grep -q kernel-binder-test || fail policy_deny "rule not listed: $out"
out=$(ctl route 3 7) || true
echo "$out" | grep -q 'denied' || fail policy_deny "route 3 7 after deny: $out"
step policy_deny PASS "$(echo "$out" | tr '\n' ' ' | tr -s ' ')"

out=$(ctl policy clear) || fail policy_clear "$out"
out=$(ctl route 3 7) || fail policy_clear "$out"
echo "$out" | grep -q 'denied' && fail policy_clear "still denied: $out"
step policy_clear PASS "$(echo "$out" | tr '\n' ' ' | tr -s ' ')"

if [ -x /bin/binder-registry-probe ]; then
  /bin/binder-registry-probe $U 5000 > /tmp/probe.log 2>&1 &
  probe=$!
  i=0; while [ $i -lt 100 ]; do
    grep -q REGISTERED /tmp/probe.log && break
    kill -0 $probe 2>/dev/null || break
    sleep 0.1; i=$((i+1))
  done
  grep -q 'REGISTERED id' /tmp/probe.log || fail registry_register "probe: $(tr '\n' ' ' < /tmp/probe.log)"
  step registry_register PASS "$(head -n 1 /tmp/probe.log) (IHostServiceRegistry over kernel binder)"
  out=$(ctl route 3 5000) || fail registry_route "$out"
  echo "$out" | grep -q 'unix\|denied' && fail registry_route "a registered port still routes like this: $out"
  step registry_route PASS "ctl route 3 5000: $(echo "$out" | tail -n 1 | tr -s ' ') (a query: the service is not called)"
  out=$(ctl metrics) || fail registry_route "$out"
  echo "$out" | grep -q 'control.registrations  *- *1' || fail registry_route "registrations counter: $out"
  kill -9 $probe; sleep 0.5
  out=$(ctl route 3 5000) || fail registry_death "$out"
  echo "$out" | grep -q 'denied' || fail registry_death "after the probe was SIGKILLed: $out"
  step registry_death PASS "after SIGKILL of the service: $(echo "$out" | tail -n 1 | tr -s ' ')"
fi

out=$(ctl --json metrics) || fail ctl_metrics "$out"
step ctl_metrics PASS "$(echo "$out" | tr -d '\n' | cut -c1-160)"

kill $plugin; sleep 0.3
t0=$(date +%s)
out=$(timeout 15 /bin/vsock-plugin ctl --uri $U status 2>&1); rc=$?
t1=$(date +%s)
[ $rc -ne 0 ] || fail service_gone "ctl status still answered after the plugin exited: $out"
if [ $rc -eq 124 ] || [ $rc -eq 143 ]; then
  echo "--- ctl with RUST_LOG=debug, 5 s"; RUST_LOG=debug timeout 5 /bin/vsock-plugin ctl --uri $U status 2>&1 | tail -n 12
  echo "--- hub threads"; for t in /proc/$hub/task/*; do echo "$(cat $t/comm) $(cat $t/wchan 2>/dev/null)"; done
  if kill -0 $plugin 2>/dev/null; then
    echo "--- plugin pid $plugin still alive after SIGTERM: $(grep State /proc/$plugin/status)"
    for t in /proc/$plugin/task/*; do echo "$(cat $t/comm) $(cat $t/wchan 2>/dev/null)"; done
  else
    echo "--- plugin pid $plugin has exited"
  fi
fi
[ $rc -ne 124 ] && [ $rc -ne 143 ] || fail service_gone "ctl status blocked for $((t1-t0)) s (killed by timeout 15) after the plugin exited, instead of failing: $(echo "$out" | head -n 1)"
step service_gone PASS "after the plugin exited: ctl failed in $((t1-t0)) s (exit $rc): $(echo "$out" | head -n 1)"
kill $hub
exit 0
"#;

pub struct BinderOptions {
    pub backend: String,
    pub qemu: QemuConfig,
    pub busybox: PathBuf,
    pub agent: PathBuf,
    pub guest_plugin: PathBuf,
    pub rsb_hub: PathBuf,
    /// Optional host-service probe (`tests/real-guest/binder-registry-probe.rs`, static).
    pub probe: Option<PathBuf>,
    pub dir: PathBuf,
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Boots the generic kernel and runs the script; returns (step, result) pairs.
pub fn run(k: &Kernel, o: &BinderOptions) -> Vec<(String, CaseResult)> {
    let lost = |msg: String| vec![("kernel_binder".to_string(), Err(Fail { msg, lost: true }))];
    let _ = std::fs::create_dir_all(&o.dir);
    let files = match (read(&o.guest_plugin), read(&o.rsb_hub)) {
        (Ok(p), Ok(h)) => {
            let mut f = vec![
                ("bin/vsock-plugin", 0o755, p),
                ("bin/rsb_hub", 0o755, h),
                ("bin/binder-test.sh", 0o755, SCRIPT.as_bytes().to_vec()),
            ];
            match o.probe.as_deref().map(read) {
                Some(Ok(b)) => f.push(("bin/binder-registry-probe", 0o755, b)),
                Some(Err(e)) => return lost(e),
                None => println!("[{}]   no registry probe: registry steps skipped", k.line),
            }
            f
        }
        (p, h) => {
            return lost(format!(
                "static binaries missing: plugin {:?}, rsb_hub {:?} (see `real-guest --help`)",
                p.err(),
                h.err()
            ))
        }
    };
    let initrd = o.dir.join("initrd-binder.cpio");
    let t = Instant::now();
    match initramfs::build_with(
        k,
        &o.busybox,
        &o.agent,
        &initrd,
        &[("binder_linux", "devices=binder")],
        &files,
    ) {
        Ok(mods) => println!(
            "[{}] initramfs {} KiB in {:.1} s, modules: {}",
            k.line,
            std::fs::metadata(&initrd)
                .map(|m| m.len() / 1024)
                .unwrap_or(0),
            t.elapsed().as_secs_f64(),
            mods.join(" ")
        ),
        Err(e) => return lost(format!("initramfs: {e}")),
    }
    let spec = VmSpec {
        cid: 3,
        socket: o.dir.join("vhost.sock"),
        uds: o.dir.join("vm.vsock"),
        groups: "default".into(),
    };
    let log = o.dir.join("backend.log");
    let mut b = match Backend::start(expand_single(&o.backend, &spec), &log, &[&spec.socket]) {
        Ok(b) => b,
        Err(e) => return lost(e),
    };
    let mut cfg = o.qemu.clone();
    cfg.kernel = k.vmlinuz();
    cfg.initrd = initrd;
    let t = Instant::now();
    let mut vm = match Vm::start(
        "binder",
        &cfg,
        &spec.socket,
        &o.dir.join("vm"),
        Duration::from_secs(120),
    ) {
        Ok(vm) => vm,
        Err(e) => return lost(e),
    };
    println!(
        "[{}]   booted {} in {:.1} s",
        k.line,
        vm.hello.release,
        t.elapsed().as_secs_f64()
    );
    let r = vm.run_op(
        "kernel_binder",
        "exec",
        &format!("cmd={} timeout_ms=100000", escape("/bin/binder-test.sh")),
        Duration::from_secs(120),
    );
    let (text, ok) = match &r {
        Ok(d) => (d.clone(), true),
        Err(e) => (e.to_string(), false),
    };
    let out = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("out="))
        .map(unescape)
        .unwrap_or_else(|| text.clone());
    let mut results = Vec::new();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("STEP ") else {
            continue;
        };
        let mut w = rest.splitn(3, ' ');
        let (name, verdict, detail) = (
            w.next().unwrap_or("?"),
            w.next().unwrap_or("?"),
            w.next().unwrap_or(""),
        );
        let res = if verdict == "PASS" {
            Ok(detail.to_string())
        } else {
            Err(Fail {
                msg: format!(
                    "{detail}\n    --- script output ---\n{}",
                    indent(&out, "    | ")
                ),
                lost: false,
            })
        };
        results.push((format!("binder_{name}"), res));
    }
    if results.is_empty() || (!ok && results.iter().all(|r| r.1.is_ok())) {
        results.push((
            "binder_script".into(),
            Err(Fail {
                msg: format!(
                    "script ended without a verdict: {text}\n{}\n    console:\n{}",
                    indent(&out, "    | "),
                    indent(&file_tail(&vm.console, 20), "    | ")
                ),
                lost: false,
            }),
        ));
    }
    vm.shutdown(Duration::from_secs(10));
    b.stop();
    results
}
