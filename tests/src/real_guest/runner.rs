//! The `real-guest` command: per kernel, one boot for the shared cases (rebooting after a case that
//! left the device broken), a QEMU kill-and-reboot against the same backend process, and three
//! sibling guests on one backend. Prints one line per case, tails of the guest console and the
//! backend log for failures, and ends with `N passed, N failed`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::backend::{expand_single, Backend, VmSpec};
use super::cases::{self, CaseResult, Fail, Guest, BOOT_CASES};
use super::group::Group;
use super::kernels::{self, Kernel};
use super::qemu::{QemuConfig, Vm};
use super::util::{indent, which};
use super::{binder, host, initramfs, iommu, measure, selftest};

pub const RESTART_CASE: &str = "qemu_restart";
/// Readiness probes on the vhost-user socket (one connects and closes, one connects and stays
/// silent) before QEMU starts: QEMU (which does not retry) must still be served at once.
pub const PROBE_CASE: &str = "vhost_user_probe_then_boot";
pub const SIBLINGS_CASE: &str = "siblings_groups";
/// 256 KiB echoed between sibling guests (packets bigger than the receiver's rx buffers).
pub const SIBLINGS_BULK_CASE: &str = "siblings_bulk";
/// Pseudo-case recorded once per kernel: the guest booted and reads its CID from the device.
pub const BOOT_CASE: &str = "boot";
/// Cases that run only when named with `--case` (new cases until they pass everywhere). None at
/// the moment: `viommu_translated` was one until the plugin matched each MISS reply to the IOVA
/// it answers.
pub const OPT_IN_CASES: &[&str] = &[];

const USAGE: &str = "usage: real-guest [options]
  --backend TEMPLATE        backend command for one VM; {cid} {socket} {uds} are replaced
                            (default: <target dir>/vsock-plugin --guest-cid {cid} --socket {socket} --uds-path {uds})
  --backend-multi TEMPLATE  backend command for several VMs; the word {vms} becomes one
                            `--vm guest-cid=..,socket=..,uds-path=..,groups=..` per VM (default: first word of --backend + {vms})
  --kernel LINE             run only this kernel line (6.1, 6.12, or the upstream line setup picked,
                            e.g. 7.3); repeatable
  --case NAME               run only this case; repeatable or comma-separated (see --list)
  --list                    list the cases
  --qemu PATH               QEMU binary (default: qemu-system-x86_64 from PATH)
  --accel tcg|kvm           (default tcg)
  --agent PATH              static guest agent (default: <target dir>/x86_64-unknown-linux-gnu/release/vsock-guest-agent)
  --busybox PATH            static busybox (default /bin/busybox)
  --cache DIR               setup's cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/vsock-plugin)
  --workdir DIR             sockets and logs (default /tmp/vrg-<pid>; removed after a clean run)
  --keep                    keep the workdir
  --measure                 instead of the cases: backend CPU seconds per GiB and MB/s (kernel 6.1
                            unless --kernel, -smp 1); --backend is repeatable here and the backends
                            run in interleaved rounds
  --rounds N                measure rounds per backend (default 3)
  --transfers N             transfers each way per run (default 3)
  --mib N                   MiB per transfer (default 256)
  --pattern                 --measure with the plugin's data-path trace on (RUST_LOG adds
                            vsock_plugin::datapath=trace): per phase (g2h, h2g, round trips) the
                            guest's kicks, packets per kick, bytes per packet and used-ring signals
                            per packet, each queue (plugin backends only; CPU figures then include logging)
  --binder                  instead of the cases: the control plane over kernel binder in a guest
                            (generic 6.12 kernel from `setup --generic`, binder_linux, rsb_hub, a
                            static vsock-plugin with --control binder://vsock, ctl calls)
  --guest-plugin PATH       static plugin for --binder (default <target dir>/x86_64-unknown-linux-gnu/release/vsock-plugin)
  --rsb-hub PATH            static rsb_hub for --binder (default: rsb_hub in $PATH)
  --registry-probe PATH     static binder-registry-probe for --binder (default: the one `run --binder`
                            builds in <cache>/probe, if present; without it the registry steps are skipped)
The IOMMU cases (viommu_translated, viommu_iotlb_off_refused, iotlb_auto_no_viommu,
access_platform_qemu_refused) append plugin options (--iotlb required|auto, --access-platform) to the
backend template; they run by default only when the backend program is vsock-plugin.
Environment: VSOCK_REAL_GUEST_QEMU_ARGS adds QEMU arguments (e.g. '-trace enable=vhost_iotlb*').
Environment: VSOCK_REAL_GUEST_REQUIRE=1 turns a skip (no QEMU) into a failure; RUST_LOG is passed to the backend (default info).";

struct Options {
    backend: String,
    backend_multi: Option<String>,
    kernels: Vec<String>,
    cases: Vec<String>,
    qemu: Option<PathBuf>,
    accel: String,
    agent: Option<PathBuf>,
    busybox: PathBuf,
    cache: PathBuf,
    workdir: Option<PathBuf>,
    keep: bool,
    /// Every `--backend` given, in order (measure mode runs them all).
    backends: Vec<String>,
    measure: bool,
    binder: bool,
    guest_plugin: Option<PathBuf>,
    rsb_hub: Option<PathBuf>,
    probe: Option<PathBuf>,
    rounds: u32,
    transfers: u32,
    mib: u64,
    pattern: bool,
}

fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.to_path_buf())
}

fn parse_args() -> Result<Options, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut o = Options {
        backend: format!(
            "{} --guest-cid {{cid}} --socket {{socket}} --uds-path {{uds}}",
            exe_dir.join("vsock-plugin").display()
        ),
        backend_multi: None,
        kernels: Vec::new(),
        cases: Vec::new(),
        qemu: None,
        accel: "tcg".into(),
        agent: None,
        busybox: "/bin/busybox".into(),
        cache: kernels::default_cache_dir(),
        workdir: None,
        keep: false,
        backends: Vec::new(),
        measure: false,
        binder: false,
        guest_plugin: None,
        rsb_hub: None,
        probe: None,
        rounds: 3,
        transfers: 3,
        mib: 256,
        pattern: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--backend" => {
                o.backend = val()?;
                o.backends.push(o.backend.clone());
            }
            "--measure" => o.measure = true,
            "--pattern" => {
                o.measure = true;
                o.pattern = true;
            }
            "--binder" => o.binder = true,
            "--guest-plugin" => o.guest_plugin = Some(val()?.into()),
            "--rsb-hub" => o.rsb_hub = Some(val()?.into()),
            "--registry-probe" => o.probe = Some(val()?.into()),
            "--rounds" => o.rounds = num(&val()?)?,
            "--transfers" => o.transfers = num(&val()?)?,
            "--mib" => o.mib = num::<u64>(&val()?)?,
            "--backend-multi" => o.backend_multi = Some(val()?),
            "--kernel" => o.kernels.push(val()?),
            "--case" => o.cases.extend(val()?.split(',').map(str::to_string)),
            "--qemu" => o.qemu = Some(val()?.into()),
            "--accel" => o.accel = val()?,
            "--agent" => o.agent = Some(val()?.into()),
            "--busybox" => o.busybox = val()?.into(),
            "--cache" => o.cache = val()?.into(),
            "--workdir" => o.workdir = Some(val()?.into()),
            "--keep" => o.keep = true,
            "--list" => {
                for n in all_case_names() {
                    println!("{n}");
                }
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let names = all_case_names();
    for c in &o.cases {
        if !names.contains(&c.as_str()) {
            return Err(format!("unknown case {c:?}; cases: {}", names.join(" ")));
        }
    }
    Ok(o)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

fn all_case_names() -> Vec<&'static str> {
    let mut v = vec![BOOT_CASE];
    v.extend(BOOT_CASES.iter().map(|c| c.0));
    v.push(RESTART_CASE);
    v.push(PROBE_CASE);
    v.push(SIBLINGS_CASE);
    v.push(SIBLINGS_BULK_CASE);
    v.extend(iommu::CASES);
    v.extend(selftest::CASES);
    v
}

struct Report {
    passed: u32,
    failed: u32,
    rows: Vec<(String, String, bool)>,
}

impl Report {
    fn record(
        &mut self,
        kernel: &str,
        case: &str,
        took: Duration,
        res: &CaseResult,
        tails: impl FnOnce() -> String,
    ) {
        let secs = took.as_secs_f64();
        match res {
            Ok(d) => {
                self.passed += 1;
                println!("[{kernel}] PASS {case} ({secs:.1} s): {d}");
            }
            Err(f) => {
                self.failed += 1;
                println!("[{kernel}] FAIL {case} ({secs:.1} s): {}", f.msg);
                println!("{}", tails());
            }
        }
        self.rows
            .push((kernel.to_string(), case.to_string(), res.is_ok()));
        let _ = std::io::stdout().flush();
    }
}

/// Backend + guest for the shared cases.
struct Session {
    backend: Backend,
    vm: Vm,
    uds: PathBuf,
}

struct KernelRun<'a> {
    o: &'a Options,
    k: &'a Kernel,
    dir: PathBuf,
    qemu: QemuConfig,
    boots: u32,
}

impl KernelRun<'_> {
    fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }

    fn uds(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    fn backend_log(&self) -> PathBuf {
        self.dir.join("backend.log")
    }

    fn start_backend(&self) -> Result<Backend, String> {
        let spec = VmSpec {
            cid: 3,
            socket: self.vhost_socket(),
            uds: self.uds(),
            groups: "default".into(),
        };
        let sock = self.vhost_socket();
        Backend::start(
            expand_single(&self.o.backend, &spec),
            &self.backend_log(),
            &[&sock],
        )
    }

    fn boot(&mut self, name: &str) -> Result<Vm, String> {
        self.boots += 1;
        let dir = self.dir.join(format!("boot{}", self.boots));
        let vm = Vm::start(
            name,
            &self.qemu,
            &self.vhost_socket(),
            &dir,
            Duration::from_secs(60),
        )?;
        if vm.hello.cid != "3" {
            return Err(format!(
                "guest booted ({}) but its vsock CID is {:?}, expected 3\n{}",
                vm.hello.release,
                vm.hello.cid,
                indent(&vm.console_tail(25), "    ")
            ));
        }
        Ok(vm)
    }

    fn start_session(&mut self) -> Result<Session, String> {
        let backend = self.start_backend()?;
        let t = Instant::now();
        let vm = self.boot("guest").map_err(|e| {
            format!(
                "{e}\n  backend log:\n{}",
                indent(&backend.log_tail(20), "    ")
            )
        })?;
        println!(
            "[{}]   booted {} in {:.1} s (backend pid {})",
            self.k.line,
            vm.hello.release,
            t.elapsed().as_secs_f64(),
            backend.pid()
        );
        Ok(Session {
            backend,
            vm,
            uds: self.uds(),
        })
    }
}

fn tails(vm: Option<&Vm>, backend_log: &Path) -> String {
    let mut out = String::new();
    if let Some(vm) = vm {
        out.push_str(&format!(
            "    --- guest console ({}), last 25 lines ---\n{}\n",
            vm.console.display(),
            indent(&vm.console_tail(25), "    | ")
        ));
    }
    out.push_str(&format!(
        "    --- backend log ({}), last 25 lines ---\n{}",
        backend_log.display(),
        indent(&super::util::file_tail(backend_log, 25), "    | ")
    ));
    out
}

pub fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("real-guest: {e}");
            return ExitCode::from(2);
        }
    };
    if o.measure && std::env::var_os("RUST_LOG").is_none() {
        // Logging is not what is measured (except the data-path lines --pattern reads).
        let filter = if o.pattern {
            "warn,vsock_plugin::datapath=trace"
        } else {
            "warn"
        };
        std::env::set_var("RUST_LOG", filter);
    }
    let started = Instant::now();
    let require = std::env::var("VSOCK_REAL_GUEST_REQUIRE").is_ok_and(|v| v == "1");
    let qemu = o.qemu.clone().or_else(|| which("qemu-system-x86_64"));
    let Some(qemu) = qemu.filter(|q| q.is_file()) else {
        println!("################################################################");
        println!("## SKIPPED: qemu-system-x86_64 is not installed and could not  ##");
        println!("## be installed; NO real-guest case ran. Nothing passed.       ##");
        println!("################################################################");
        println!("0 passed, 0 failed");
        return if require {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    };
    let mut report = Report {
        passed: 0,
        failed: 0,
        rows: Vec::new(),
    };
    let fatal = |report: &mut Report, msg: String| {
        println!("real-guest: {msg}");
        report.failed += 1;
        println!("{} passed, {} failed", report.passed, report.failed);
        ExitCode::FAILURE
    };
    let all = match kernels::load(&o.cache) {
        Ok(k) => k,
        Err(e) => return fatal(&mut report, e),
    };
    let selected: Vec<&Kernel> = all
        .iter()
        .filter(|k| o.kernels.is_empty() || o.kernels.contains(&k.line))
        .collect();
    if selected.is_empty() {
        let lines: Vec<_> = all.iter().map(|k| k.line.as_str()).collect();
        return fatal(
            &mut report,
            format!(
                "no kernel matches {:?} (have {})",
                o.kernels,
                lines.join(", ")
            ),
        );
    }
    let agent = o
        .agent
        .clone()
        .or_else(|| {
            target_dir().map(|t| t.join("x86_64-unknown-linux-gnu/release/vsock-guest-agent"))
        })
        .unwrap_or_default();
    if !agent.is_file() {
        return fatal(
            &mut report,
            format!(
                "guest agent {} missing; build it with: RUSTFLAGS='-C target-feature=+crt-static' \
                 cargo build --release --target x86_64-unknown-linux-gnu -p vsock-plugin-tests \
                 --bin vsock-guest-agent (or use tests/real-guest/run)",
                agent.display()
            ),
        );
    }
    let backend_bin = o
        .backend
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let qemu_version = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let workdir = o
        .workdir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/vrg-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        return fatal(&mut report, format!("{}: {e}", workdir.display()));
    }
    println!(
        "real-guest: QEMU {} ({}), accel {}",
        qemu.display(),
        qemu_version,
        o.accel
    );
    println!("real-guest: backend: {}", o.backend);
    println!(
        "real-guest: agent {}, workdir {}",
        agent.display(),
        workdir.display()
    );
    for k in &selected {
        println!("real-guest: kernel {}: {}", k.line, k.describe());
    }
    let plugin_backend = Path::new(&backend_bin)
        .file_name()
        .is_some_and(|f| f == "vsock-plugin");
    let want = |name: &str| {
        if o.cases.is_empty() {
            !OPT_IN_CASES.contains(&name) && (plugin_backend || !iommu::CASES.contains(&name))
        } else {
            o.cases.iter().any(|c| c == name)
        }
    };
    if o.measure {
        return run_measure(&o, &all, &qemu, &agent, &workdir);
    }
    if o.binder {
        return run_binder(&o, &qemu, &agent, &workdir, report);
    }

    for k in &selected {
        let dir = workdir.join(format!("k{}", k.line));
        let _ = std::fs::create_dir_all(&dir);
        let initrd = dir.join("initrd.cpio");
        let t = Instant::now();
        match initramfs::build(k, &o.busybox, &agent, &initrd) {
            Ok(mods) => println!(
                "[{}] kernel {}; initramfs {} ({} KiB, {:.1} s, modules: {})",
                k.line,
                k.describe(),
                initrd.display(),
                std::fs::metadata(&initrd)
                    .map(|m| m.len() / 1024)
                    .unwrap_or(0),
                t.elapsed().as_secs_f64(),
                mods.join(" ")
            ),
            Err(e) => {
                for name in all_case_names().into_iter().filter(|n| want(n)) {
                    report.record(
                        &k.line,
                        name,
                        Duration::ZERO,
                        &Err(Fail {
                            msg: format!("initramfs: {e}"),
                            lost: true,
                        }),
                        String::new,
                    );
                }
                continue;
            }
        }
        let mut run = KernelRun {
            o: &o,
            k,
            dir: dir.clone(),
            qemu: QemuConfig {
                qemu: qemu.clone(),
                accel: o.accel.clone(),
                mem_mb: 512,
                kernel: k.vmlinuz(),
                initrd,
                append: String::new(),
                ..Default::default()
            },
            boots: 0,
        };
        run_boot_cases(&mut run, &want, &mut report);
        if want(PROBE_CASE) {
            let t = Instant::now();
            let res = probe_then_boot(&mut run);
            report.record(&k.line, PROBE_CASE, t.elapsed(), &res, || {
                tails(None, &dir.join("probe/backend.log"))
            });
        }
        let sib: Vec<&str> = [SIBLINGS_CASE, SIBLINGS_BULK_CASE]
            .into_iter()
            .filter(|c| want(c))
            .collect();
        if !sib.is_empty() {
            let t = Instant::now();
            let results = siblings(&mut run, &backend_bin, &sib);
            let took = t.elapsed();
            let log = dir.join("siblings/backend.log");
            for (name, res) in results {
                report.record(&k.line, name, took, &res, || {
                    let mut s = tails(None, &log);
                    for cid in [3, 4, 5] {
                        let c = dir.join(format!("siblings/vm{cid}/console.log"));
                        s.push_str(&format!(
                            "\n    --- guest {cid} console, last 10 lines ---\n{}",
                            indent(&super::util::file_tail(&c, 10), "    | ")
                        ));
                    }
                    s
                });
            }
        }
        let selftests: Vec<&'static str> =
            selftest::CASES.into_iter().filter(|c| want(c)).collect();
        if !selftests.is_empty() {
            let template = o
                .backend_multi
                .clone()
                .unwrap_or_else(|| format!("{backend_bin} {{vms}}"));
            let sdir = dir.join("vsock_test");
            let t = Instant::now();
            let rows = selftest::run(
                k, &run.qemu, &o.busybox, &agent, &template, &sdir, &selftests,
            );
            let (ok, all) = (rows.iter().filter(|r| r.2.is_ok()).count(), rows.len());
            for (name, took, res) in rows {
                report.record(&k.line, &name, took, &res, || {
                    let mut s = tails(None, &sdir.join("backend.log"));
                    for cid in [3, 4, 5] {
                        let c = sdir.join(format!("vm{cid}/console.log"));
                        s.push_str(&format!(
                            "\n    --- guest {cid} console, last 10 lines ---\n{}",
                            indent(&super::util::file_tail(&c, 10), "    | ")
                        ));
                    }
                    s
                });
            }
            println!(
                "[{}] kernel selftest: {ok} of {all} rows passed in {:.0} s (vsock_test from \
                 linux-source of {} {})",
                k.line,
                t.elapsed().as_secs_f64(),
                k.package,
                k.version
            );
        }
        for name in iommu::CASES.into_iter().filter(|c| want(c)) {
            let cd = iommu::CaseDir {
                dir: dir.join(name),
            };
            let t = Instant::now();
            let res = iommu::run(name, &o.backend, &run.qemu, &cd);
            report.record(&k.line, name, t.elapsed(), &res, || cd.tails());
        }
    }

    println!(
        "real-guest: summary ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    for k in &selected {
        let mine: Vec<_> = report.rows.iter().filter(|r| r.0 == k.line).collect();
        // The kernel selftest's rows (one per vsock_test test) are shown as one count here.
        let selftest_row = |r: &(String, String, bool)| r.1.starts_with("vsock_test ");
        let mut row: Vec<String> = mine
            .iter()
            .filter(|r| !selftest_row(r))
            .map(|r| format!("{}{}", if r.2 { "" } else { "FAIL:" }, r.1))
            .collect();
        let tests: Vec<_> = mine.iter().filter(|r| selftest_row(r)).collect();
        if !tests.is_empty() {
            let failed: Vec<&str> = tests
                .iter()
                .filter(|r| !r.2)
                .map(|r| r.1.trim_start_matches("vsock_test "))
                .collect();
            row.push(format!(
                "vsock_test({}/{} passed{})",
                tests.len() - failed.len(),
                tests.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; FAIL: {}", failed.join(", "))
                }
            ));
        }
        println!(
            "  {} ({} {}): {}",
            k.line,
            k.package,
            k.version,
            row.join(" ")
        );
    }
    let clean = report.failed == 0;
    if clean && !o.keep && o.workdir.is_none() {
        let _ = std::fs::remove_dir_all(&workdir);
    } else {
        println!("real-guest: logs kept in {}", workdir.display());
    }
    println!("{} passed, {} failed", report.passed, report.failed);
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_boot_cases(run: &mut KernelRun, want: &dyn Fn(&str) -> bool, report: &mut Report) {
    let line = run.k.line.clone();
    let selected: Vec<_> = BOOT_CASES.iter().filter(|c| want(c.0)).collect();
    let want_restart = want(RESTART_CASE);
    if selected.is_empty() && !want_restart && !want(BOOT_CASE) {
        return;
    }
    let blog = run.backend_log();
    let t = Instant::now();
    let mut session = match run.start_session() {
        Ok(s) => {
            if want(BOOT_CASE) {
                report.record(
                    &line,
                    BOOT_CASE,
                    t.elapsed(),
                    &Ok(format!("{} up, guest CID 3", s.vm.hello.release)),
                    String::new,
                );
            }
            Some(s)
        }
        Err(e) => {
            report.record(
                &line,
                BOOT_CASE,
                t.elapsed(),
                &Err(Fail { msg: e, lost: true }),
                || tails(None, &blog),
            );
            None
        }
    };
    let mut boot_failures = if session.is_none() { 1 } else { 0 };
    let mut health_port = 5100;
    for (name, f) in selected {
        if session.is_none() {
            if boot_failures >= 2 {
                report.record(
                    &line,
                    name,
                    Duration::ZERO,
                    &Err(Fail {
                        msg: "no guest (boot failed twice)".into(),
                        lost: true,
                    }),
                    String::new,
                );
                continue;
            }
            match run.start_session() {
                Ok(s) => session = Some(s),
                Err(e) => {
                    boot_failures += 1;
                    report.record(
                        &line,
                        name,
                        Duration::ZERO,
                        &Err(Fail {
                            msg: format!("reboot failed: {e}"),
                            lost: true,
                        }),
                        || tails(None, &blog),
                    );
                    continue;
                }
            }
        }
        let s = session.as_mut().unwrap();
        let t = Instant::now();
        let mut res = f(
            &mut Guest {
                vm: &mut s.vm,
                uds: &s.uds,
            },
            name,
        );
        if !s.backend.alive() {
            let msg = match &res {
                Ok(d) => format!("backend exited (case itself: {d})"),
                Err(f) => format!("backend exited; {}", f.msg),
            };
            res = Err(Fail { msg, lost: true });
        }
        report.record(&line, name, t.elapsed(), &res, || tails(Some(&s.vm), &blog));
        if let Err(f) = &res {
            let mut broken = f.lost;
            if !broken {
                health_port += 1;
                if let Err(h) = cases::health(
                    &mut Guest {
                        vm: &mut s.vm,
                        uds: &s.uds,
                    },
                    health_port,
                ) {
                    println!("[{line}]   device unhealthy after {name}: {}", h.msg);
                    broken = true;
                }
            }
            if broken {
                println!("[{line}]   restarting backend and guest");
                session = None;
            }
        }
    }
    if want_restart {
        if session.is_none() && boot_failures >= 2 {
            let res = Err(Fail {
                msg: "no guest (boot failed twice)".into(),
                lost: true,
            });
            report.record(&line, RESTART_CASE, Duration::ZERO, &res, String::new);
            return;
        }
        if session.is_none() {
            match run.start_session() {
                Ok(s) => session = Some(s),
                Err(e) => {
                    report.record(
                        &line,
                        RESTART_CASE,
                        Duration::ZERO,
                        &Err(Fail { msg: e, lost: true }),
                        || tails(None, &blog),
                    );
                    return;
                }
            }
        }
        let t = Instant::now();
        let res = qemu_restart(run, session.as_mut().unwrap());
        let s = session.as_ref().unwrap();
        report.record(&line, RESTART_CASE, t.elapsed(), &res, || {
            tails(Some(&s.vm), &blog)
        });
    }
    if let Some(mut s) = session {
        s.vm.shutdown(Duration::from_secs(10));
    }
}

/// Kill QEMU (SIGKILL) with a connection open, boot again on the same backend process and socket.
fn qemu_restart(run: &mut KernelRun, s: &mut Session) -> CaseResult {
    let mut notes = Vec::new();
    // The echo server's op never finishes: the guest is killed with the connection open.
    let _pending = cases::echo_server(
        &mut Guest {
            vm: &mut s.vm,
            uds: &s.uds,
        },
        RESTART_CASE,
        5010,
        1,
        60000,
    )?;
    let mut open = host::connect_guest(&s.uds, 5010, Duration::from_secs(5)).map_err(|e| Fail {
        msg: e,
        lost: false,
    })?;
    cases::echo_check(&mut open, b"before the restart").map_err(|e| Fail {
        msg: e,
        lost: false,
    })?;
    s.vm.kill();
    // The host end of a connection into the dead guest must be closed.
    match host::read_to_eof(&mut open, Duration::from_secs(5)) {
        Ok(_) => notes.push("open host connection closed".to_string()),
        Err(e) if e.starts_with("read:") => {
            notes.push(format!("open host connection closed ({e})"))
        }
        Err(e) => {
            return Err(Fail {
                msg: format!("after QEMU was killed, the open host connection was not closed: {e}"),
                lost: true,
            })
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    if !s.backend.alive() {
        return Err(Fail {
            msg: "backend exited when QEMU was killed".into(),
            lost: true,
        });
    }
    let sock = run.vhost_socket();
    if !super::util::wait_for_path(&sock, Instant::now() + Duration::from_secs(5), || true) {
        return Err(Fail {
            msg: format!("{} gone after QEMU was killed", sock.display()),
            lost: true,
        });
    }
    let t = Instant::now();
    s.vm = run.boot("guest-after-restart").map_err(|e| Fail {
        msg: format!("second boot on the same backend: {e}"),
        lost: true,
    })?;
    notes.push(format!("rebooted in {:.1} s", t.elapsed().as_secs_f64()));
    let mut g = Guest {
        vm: &mut s.vm,
        uds: &s.uds,
    };
    let checks: [(&str, CaseResult); 3] = [
        (
            "g2h 1 MiB",
            cases::g2h_transfer(&mut g, RESTART_CASE, 1250, 1 << 20, 16384, 31, None),
        ),
        (
            "h2g 1 MiB",
            cases::h2g_transfer(&mut g, RESTART_CASE, 5011, 1 << 20, 32, 65536, 0),
        ),
        (
            "8 concurrent h2g",
            cases::concurrent_h2g(&mut g, RESTART_CASE, 5012, 8, 4096),
        ),
    ];
    let mut failed = Vec::new();
    for (what, r) in checks {
        match r {
            Ok(_) => notes.push(format!("{what} ok")),
            Err(f) => failed.push(format!("{what}: {}", f.msg)),
        }
    }
    if !failed.is_empty() {
        return Err(Fail {
            msg: format!("after the restart: {}", failed.join("; ")),
            lost: false,
        });
    }
    Ok(notes.join(", "))
}

/// [`PROBE_CASE`]: a fresh backend; a probe connects to the vhost-user socket and closes, a second
/// connects and stays open without a word (as Cuttlefish's readiness check and other probes do);
/// then QEMU boots. QEMU gives up on a backend that does not answer its handshake, so a guest that
/// boots and moves data proves the silent probe did not keep the slot.
fn probe_then_boot(run: &mut KernelRun) -> CaseResult {
    let lost = |msg: String| Fail { msg, lost: true };
    let dir = run.dir.join("probe");
    let _ = std::fs::create_dir_all(&dir);
    let spec = VmSpec {
        cid: 3,
        socket: dir.join("vhost.sock"),
        uds: dir.join("vm.vsock"),
        groups: "default".into(),
    };
    let mut backend = Backend::start(
        expand_single(&run.o.backend, &spec),
        &dir.join("backend.log"),
        &[&spec.socket],
    )
    .map_err(lost)?;
    drop(
        std::os::unix::net::UnixStream::connect(&spec.socket)
            .map_err(|e| lost(format!("probe 1: {e}")))?,
    );
    let silent = std::os::unix::net::UnixStream::connect(&spec.socket)
        .map_err(|e| lost(format!("probe 2: {e}")))?;
    let t = Instant::now();
    let mut vm = Vm::start(
        "guest",
        &run.qemu,
        &spec.socket,
        &dir.join("vm"),
        Duration::from_secs(60),
    )
    .map_err(|e| lost(format!("QEMU after a silent probe: {e}")))?;
    let boot_s = t.elapsed().as_secs_f64();
    let health = cases::health(
        &mut Guest {
            vm: &mut vm,
            uds: &spec.uds,
        },
        1270,
    );
    // The probe learns it lost the slot: EOF (or a reset) on its connection.
    let mut byte = [0u8; 1];
    let _ = silent.set_read_timeout(Some(Duration::from_secs(5)));
    let probe_saw = match std::io::Read::read(&mut &silent, &mut byte) {
        Ok(0) => "EOF".to_string(),
        Ok(_) => "a byte".to_string(),
        Err(e) => e.to_string(),
    };
    vm.shutdown(Duration::from_secs(10));
    let alive = backend.alive();
    backend.stop();
    health?;
    if !alive {
        return Err(lost("backend exited".into()));
    }
    Ok(format!(
        "after a connect-and-close probe and a silent probe, QEMU was served and the guest booted \
         in {boot_s:.1} s and echoed; the silent probe saw {probe_saw}"
    ))
}

/// Three guests on one backend process: CIDs 3 and 4 in group g1, CID 5 in g2. Guest 3 must reach
/// guest 4 and must not reach guest 5 (both listen on the same port); then (`siblings_bulk`) 256 KiB
/// echoed between 3 and 4. Returns one result per selected case.
fn siblings(
    run: &mut KernelRun,
    backend_bin: &str,
    selected: &[&'static str],
) -> Vec<(&'static str, CaseResult)> {
    let all_fail = |msg: String| {
        selected
            .iter()
            .map(|c| {
                (
                    *c,
                    Err(Fail {
                        msg: msg.clone(),
                        lost: true,
                    }),
                )
            })
            .collect::<Vec<_>>()
    };
    let template = run
        .o
        .backend_multi
        .clone()
        .unwrap_or_else(|| format!("{backend_bin} {{vms}}"));
    let t = Instant::now();
    let members = [(3, "g1"), (4, "g1"), (5, "g2")];
    let mut group = match Group::boot(&run.dir.join("siblings"), &template, &members, |_| {
        run.qemu.clone()
    }) {
        Ok(g) => g,
        Err(e) => return all_fail(e),
    };
    let vms = &mut group.vms;
    let boot_s = t.elapsed().as_secs_f64();
    let mut out = Vec::new();
    if selected.contains(&SIBLINGS_CASE) {
        let res = sibling_isolation(vms).map(|d| format!("3 guests booted in {boot_s:.1} s; {d}"));
        out.push((SIBLINGS_CASE, res));
    }
    if selected.contains(&SIBLINGS_BULK_CASE) {
        let res = sibling_bulk(vms);
        out.push((SIBLINGS_BULK_CASE, res));
    }
    if !group.finish() {
        for r in out.iter_mut() {
            r.1 = Err(Fail {
                msg: "backend exited".into(),
                lost: true,
            });
        }
    }
    out
}

fn sibling_isolation(vms: &mut [Vm]) -> CaseResult {
    let [vm3, vm4, vm5] = vms else { unreachable!() };
    let case = SIBLINGS_CASE;
    let id4 = vm4.start_op(case, "echo_server", "port=6000 conns=1 timeout_ms=8000")?;
    vm4.wait_ready(id4, Duration::from_secs(20))?;
    let id5 = vm5.start_op(case, "echo_server", "port=6000 conns=1 timeout_ms=5000")?;
    vm5.wait_ready(id5, Duration::from_secs(20))?;
    let mut problems = Vec::new();
    let args = "cid=4 port=6000 conns=1 bytes=1024";
    let to4 = vm3.run_op(case, "echo_clients", args, Duration::from_secs(60));
    if let Err(e) = &to4 {
        problems.push(format!("guest 3 → guest 4 (same group) failed: {e}"));
    }
    // Isolation is the point here; a slow refusal (no RST) is only reported.
    let to5 = vm3.run_op(
        case,
        "connect_fail",
        "cid=5 port=6000",
        Duration::from_secs(60),
    );
    if let Err(e) = &to5 {
        problems.push(format!("guest 3 → guest 5 (other group): {e}"));
    }
    if let Err(e) = vm4.wait_result(id4, Duration::from_secs(30)) {
        problems.push(format!("guest 4's server: {e}"));
    }
    match vm5.wait_result(id5, Duration::from_secs(30)) {
        Ok(d) => problems.push(format!(
            "guest 5 accepted a connection from another group ({d})"
        )),
        Err(e) if e.to_string().contains("accepted=0") => {}
        Err(e) => problems.push(format!("guest 5's server: {e}")),
    }
    if !problems.is_empty() {
        return Err(Fail {
            msg: problems.join("; "),
            lost: false,
        });
    }
    Ok(format!(
        "3→4 echo ok; 3→5 refused ({})",
        to5.as_ref().map(|d| d.as_str()).unwrap_or("")
    ))
}

fn sibling_bulk(vms: &mut [Vm]) -> CaseResult {
    let [vm3, vm4, _] = vms else { unreachable!() };
    let case = SIBLINGS_BULK_CASE;
    let id4 = vm4.start_op(case, "echo_server", "port=6001 conns=1 timeout_ms=10000")?;
    vm4.wait_ready(id4, Duration::from_secs(20))?;
    let args = "cid=4 port=6001 conns=1 bytes=262144";
    let to4 = vm3.run_op(case, "echo_clients", args, Duration::from_secs(60));
    let server = vm4.wait_result(id4, Duration::from_secs(30));
    let show = |r: &Result<String, super::qemu::OpError>| match r {
        Ok(d) => format!("PASS {d}"),
        Err(e) => e.to_string(),
    };
    if to4.is_ok() && server.is_ok() {
        return Ok(format!(
            "256 KiB echoed 3→4→3: client: {}; server: {}",
            show(&to4),
            show(&server)
        ));
    }
    // These kernels fill their rx virtqueue with buffers of less than 4 KiB (about 3.7 KiB of
    // payload): a sibling's packet of up to 64 KiB has to be split across several of them.
    Err(Fail {
        msg: format!(
            "256 KiB echo 3→4→3 failed: client: {}; server: {} (sibling packets larger than the \
             receiver's rx buffers must be split)",
            show(&to4),
            show(&server)
        ),
        lost: false,
    })
}

/// `--measure`: interleaved backend CPU/GiB rounds on one kernel (6.1 unless `--kernel`).
fn run_measure(o: &Options, all: &[Kernel], qemu: &Path, agent: &Path, workdir: &Path) -> ExitCode {
    let line = o.kernels.first().map(String::as_str).unwrap_or("6.1");
    let Some(k) = all.iter().find(|k| k.line == line) else {
        println!("real-guest: no kernel {line}");
        return ExitCode::FAILURE;
    };
    let initrd = workdir.join("initrd-measure.cpio");
    if let Err(e) = initramfs::build(k, &o.busybox, agent, &initrd) {
        println!("real-guest: initramfs: {e}");
        return ExitCode::FAILURE;
    }
    println!("measure: kernel {}", k.describe());
    let backends = if o.backends.is_empty() {
        vec![o.backend.clone()]
    } else {
        o.backends.clone()
    };
    let mo = measure::MeasureOptions {
        backends,
        rounds: o.rounds.max(1),
        count: o.transfers.max(1),
        mib: o.mib.max(1),
        qemu: QemuConfig {
            qemu: qemu.to_path_buf(),
            accel: o.accel.clone(),
            mem_mb: 512,
            kernel: k.vmlinuz(),
            initrd,
            ..Default::default()
        },
        dir: workdir.to_path_buf(),
        pattern: o.pattern,
    };
    let ok = measure::main(&mo);
    if ok && !o.keep && o.workdir.is_none() {
        let _ = std::fs::remove_dir_all(workdir);
    } else {
        println!("real-guest: logs kept in {}", workdir.display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--binder`: the control plane over kernel binder inside a generic-kernel guest.
fn run_binder(
    o: &Options,
    qemu: &Path,
    agent: &Path,
    workdir: &Path,
    mut report: Report,
) -> ExitCode {
    let ks = match kernels::load_manifest(&o.cache, "generic.tsv") {
        Ok(k) => k,
        Err(e) => {
            println!("real-guest: {e} (run tests/real-guest/setup --generic)");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let guest_plugin = o
        .guest_plugin
        .clone()
        .or_else(|| target_dir().map(|t| t.join("x86_64-unknown-linux-gnu/release/vsock-plugin")))
        .unwrap_or_default();
    let rsb_hub = o
        .rsb_hub
        .clone()
        .or_else(|| which("rsb_hub"))
        .unwrap_or_else(|| PathBuf::from("rsb_hub"));
    for k in &ks {
        println!("real-guest: kernel {}: {}", k.line, k.describe());
        println!(
            "real-guest: guest plugin {}, rsb_hub {}",
            guest_plugin.display(),
            rsb_hub.display()
        );
        let bo =
            binder::BinderOptions {
                backend: o.backend.clone(),
                qemu: QemuConfig {
                    qemu: qemu.to_path_buf(),
                    accel: o.accel.clone(),
                    mem_mb: 512,
                    ..Default::default()
                },
                busybox: o.busybox.clone(),
                agent: agent.to_path_buf(),
                guest_plugin: guest_plugin.clone(),
                rsb_hub: rsb_hub.clone(),
                probe: o.probe.clone().or_else(|| {
                    Some(o.cache.join(
                        "probe/target/x86_64-unknown-linux-gnu/release/binder-registry-probe",
                    ))
                    .filter(|p| p.is_file())
                }),
                dir: workdir.join(format!("k{}", k.line)),
            };
        let t = Instant::now();
        for (i, (name, res)) in binder::run(k, &bo).into_iter().enumerate() {
            // The steps run in one script: the whole time goes on the first line.
            let took = if i == 0 { t.elapsed() } else { Duration::ZERO };
            report.record(&k.line, &name, took, &res, String::new);
        }
    }
    let clean = report.failed == 0;
    if clean && !o.keep && o.workdir.is_none() {
        let _ = std::fs::remove_dir_all(workdir);
    } else {
        println!("real-guest: logs kept in {}", workdir.display());
    }
    println!("{} passed, {} failed", report.passed, report.failed);
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
