//! VIRTIO_F_ACCESS_PLATFORM (bit 33) and vIOMMU cases (iotlb-contract §5.3, T18). Each case has its
//! own backend process (the plugin with an IOTLB profile appended to the backend template) and its
//! own guest:
//!
//! - `viommu_translated`: q35 + `intel-iommu,device-iotlb=on`, `iommu_platform=on,ats=on`, guest
//!   `intel_iommu=on iommu=nopt`, plugin `--iotlb required`: SHA-256-checked data both ways through
//!   IOVA translation (combination D);
//! - `viommu_iotlb_off_refused`: the same guest against the default profile: QEMU sends bit 33
//!   un-offered, the plugin refuses SET_FEATURES with a clear message, the guest's vsock carries
//!   nothing either way, and nothing hangs;
//! - `iotlb_auto_no_viommu`: `--iotlb auto` + `iommu_platform=on` without a vIOMMU: the guest acks
//!   bit 33, QEMU strips it before SET_FEATURES, data moves untranslated (combination A);
//! - `access_platform_qemu_refused`: `--access-platform` (bit 33 offered without BACKEND_REQ and
//!   REPLY_ACK, the crosvm pVM profile) + `iommu_platform=on`, no vIOMMU: QEMU refuses the backend
//!   at device init ("IOMMU support requires reply-ack and backend-req protocol features") and exits
//!   at once; the plugin stays up. (QEMU makes this check on the backend's offer alone, so
//!   `--access-platform` cannot be used with QEMU at all; `--iotlb auto` is the QEMU profile for an
//!   `iommu_platform=on` device.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::backend::{expand_single, Backend, VmSpec};
use super::cases::{self, CaseResult, Fail, Guest};
use super::host;
use super::qemu::{QemuConfig, Vm};
use super::util::{file_tail, indent};

pub const VIOMMU_TRANSLATED: &str = "viommu_translated";
pub const VIOMMU_IOTLB_OFF: &str = "viommu_iotlb_off_refused";
pub const AUTO_NO_VIOMMU: &str = "iotlb_auto_no_viommu";
pub const ACCESS_PLATFORM_REFUSED: &str = "access_platform_qemu_refused";
pub const CASES: [&str; 4] = [
    VIOMMU_TRANSLATED,
    VIOMMU_IOTLB_OFF,
    AUTO_NO_VIOMMU,
    ACCESS_PLATFORM_REFUSED,
];

/// QEMU's refusal of a backend offering bit 33 without BACKEND_REQ + REPLY_ACK.
pub const QEMU_REFUSAL: &str = "IOMMU support requires reply-ack and backend-req protocol features";

/// What the plugin logs when bit 33 arrives without having been offered.
pub const REFUSAL: &str = "feature bits not offered: 33 (ACCESS_PLATFORM)";
/// What the plugin logs when translation is on.
pub const TRANSLATED: &str = "translated through the IOTLB";

const MIB: u64 = 1024 * 1024;

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        lost: false,
    }
}

/// Where a case keeps its files.
pub struct CaseDir {
    pub dir: PathBuf,
}

impl CaseDir {
    pub fn backend_log(&self) -> PathBuf {
        self.dir.join("backend.log")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("vm/console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("vm/qemu.log")
    }
    /// Failure tails: guest console, QEMU log, backend log.
    pub fn tails(&self) -> String {
        format!(
            "    --- guest console ({}), last 20 lines ---\n{}\n    --- QEMU log, last 8 lines ---\n{}\n    --- backend log ({}), last 20 lines ---\n{}",
            self.console().display(),
            indent(&file_tail(&self.console(), 20), "    | "),
            indent(&file_tail(&self.qemu_log(), 8), "    | "),
            self.backend_log().display(),
            indent(&file_tail(&self.backend_log(), 20), "    | ")
        )
    }
}

/// Runs one case of [`CASES`]. `backend` is the single-VM template; the case appends its profile.
pub fn run(name: &str, backend: &str, qemu: &QemuConfig, cd: &CaseDir) -> CaseResult {
    let _ = std::fs::create_dir_all(&cd.dir);
    let (extra, mut cfg) = match name {
        VIOMMU_TRANSLATED => ("--iotlb required", qemu.clone()),
        VIOMMU_IOTLB_OFF => ("", qemu.clone()),
        AUTO_NO_VIOMMU => ("--iotlb auto", qemu.clone()),
        ACCESS_PLATFORM_REFUSED => ("--access-platform", qemu.clone()),
        other => return Err(fail(format!("unknown IOMMU case {other}"))),
    };
    cfg.viommu = matches!(name, VIOMMU_TRANSLATED | VIOMMU_IOTLB_OFF);
    cfg.iommu_platform = true;
    let spec = VmSpec {
        cid: 3,
        socket: cd.dir.join("vhost.sock"),
        uds: cd.dir.join("vm.vsock"),
        groups: "default".into(),
    };
    let argv = expand_single(&format!("{backend} {extra}"), &spec);
    let mut b = Backend::start(argv, &cd.backend_log(), &[&spec.socket])
        .map_err(|e| Fail { msg: e, lost: true })?;
    if name == ACCESS_PLATFORM_REFUSED {
        let res = qemu_refuses(&cfg, &spec.socket, cd, &mut b);
        b.stop();
        return res;
    }
    let t = Instant::now();
    let mut vm = Vm::start(
        name,
        &cfg,
        &spec.socket,
        &cd.dir.join("vm"),
        Duration::from_secs(120),
    )
    .map_err(|e| Fail { msg: e, lost: true })?;
    let boot = format!("booted in {:.1} s", t.elapsed().as_secs_f64());
    let res = match name {
        VIOMMU_TRANSLATED => translated(&mut vm, &spec.uds, cd),
        VIOMMU_IOTLB_OFF => refused(&mut vm, &spec.uds, cd),
        _ => untranslated(&mut vm, &spec.uds, cd, AUTO_NO_VIOMMU),
    };
    let mut res = res.map(|d| format!("{boot}; {d}"));
    // Nothing may hang: the guest must power off and QEMU exit.
    let t = Instant::now();
    let clean = vm.shutdown(Duration::from_secs(20));
    if !clean {
        let msg = format!(
            "QEMU did not exit within 20 s of the guest's power-off (killed); {}",
            match &res {
                Ok(d) => d.clone(),
                Err(f) => f.msg.clone(),
            }
        );
        res = Err(fail(msg));
    } else if let Ok(d) = &mut res {
        d.push_str(&format!(
            "; powered off in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    if !b.alive() {
        res = Err(Fail {
            msg: format!(
                "backend exited; {}",
                match &res {
                    Ok(d) => d.clone(),
                    Err(f) => f.msg.clone(),
                }
            ),
            lost: true,
        });
    }
    b.stop();
    res
}

/// The guest's negotiated feature bits of the vsock device (0x0013), from `/init`'s console line.
fn guest_features(console: &Path) -> Option<String> {
    let text = std::fs::read_to_string(console).ok()?;
    text.lines()
        .find(|l| l.contains("device=0x0013"))
        .and_then(|l| l.split("features=").nth(1))
        .map(|f| f.trim().to_string())
}

fn bit(features: &str, n: usize) -> bool {
    features.as_bytes().get(n) == Some(&b'1')
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.contains(needle))
        .unwrap_or(false)
}

fn both_ways(vm: &mut Vm, uds: &Path, case: &str, ports: (u32, u32)) -> CaseResult {
    let mut g = Guest { vm, uds };
    let g2h =
        cases::g2h_transfer(&mut g, case, ports.0, 4 * MIB, 16384, 51, None).map_err(|f| Fail {
            msg: format!("guest→host 4 MiB: {}", f.msg),
            lost: f.lost,
        })?;
    let h2g =
        cases::h2g_transfer(&mut g, case, ports.1, 4 * MIB, 52, 65536, 0).map_err(|f| Fail {
            msg: format!("host→guest 4 MiB: {}", f.msg),
            lost: f.lost,
        })?;
    let rate = |d: &str| cases::field(d, "mbps").unwrap_or("?").to_string();
    Ok(format!(
        "4 MiB each way, sha256 ok (g2h {} MB/s, h2g {} MB/s)",
        rate(&g2h),
        rate(&h2g)
    ))
}

fn translated(vm: &mut Vm, uds: &Path, cd: &CaseDir) -> CaseResult {
    let feats = guest_features(&cd.console()).unwrap_or_default();
    if !bit(&feats, 33) {
        return Err(fail(format!(
            "guest did not negotiate ACCESS_PLATFORM (features={feats:?})"
        )));
    }
    let data = both_ways(vm, uds, VIOMMU_TRANSLATED, (1260, 5020))?;
    if !log_has(&cd.backend_log(), TRANSLATED) {
        return Err(fail(format!(
            "data moved but the plugin log never says {TRANSLATED:?}: {data}"
        )));
    }
    Ok(format!(
        "guest bit 33 acked; plugin: \"{TRANSLATED}\"; {data}"
    ))
}

fn untranslated(vm: &mut Vm, uds: &Path, cd: &CaseDir, case: &str) -> CaseResult {
    let feats = guest_features(&cd.console()).unwrap_or_default();
    if !bit(&feats, 33) {
        return Err(fail(format!(
            "guest did not ack ACCESS_PLATFORM although it was offered (features={feats:?})"
        )));
    }
    let data = both_ways(vm, uds, case, (1262, 5022))?;
    if log_has(&cd.backend_log(), TRANSLATED) {
        return Err(fail(format!(
            "plugin translated addresses without a vIOMMU: {data}"
        )));
    }
    let stripped = if log_has(&cd.backend_log(), "ACCESS_PLATFORM negotiated") {
        "bit 33 reached the plugin, untranslated"
    } else {
        "QEMU stripped bit 33"
    };
    Ok(format!(
        "guest acked bit 33, {stripped}; untranslated; {data}"
    ))
}

fn refused(vm: &mut Vm, uds: &Path, cd: &CaseDir) -> CaseResult {
    let case = VIOMMU_IOTLB_OFF;
    // SET_FEATURES comes when the guest driver starts the device (before the agent says HELLO).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_has(&cd.backend_log(), REFUSAL) {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the plugin log never says {REFUSAL:?} (guest features {:?})",
                guest_features(&cd.console()).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut notes = vec![format!("plugin: \"{REFUSAL}\"")];
    // Host → guest: a guest listener must not be reachable.
    let port = 5021;
    let id = vm.start_op(
        case,
        "echo_server",
        &format!("port={port} conns=1 timeout_ms=4000"),
    )?;
    vm.wait_ready(id, Duration::from_secs(20))?;
    let t = Instant::now();
    match host::connect_guest(uds, port, Duration::from_secs(5)) {
        Ok(_) => {
            return Err(fail(
                "host→guest connect got OK although the device never started",
            ))
        }
        Err(e) => notes.push(format!(
            "host→guest refused after {} ms ({e})",
            t.elapsed().as_millis()
        )),
    }
    match vm.wait_result(id, Duration::from_secs(30)) {
        Ok(d) => return Err(fail(format!("the guest accepted a connection: {d}"))),
        Err(e) if e.to_string().contains("accepted=0") => {}
        Err(e) => return Err(e.into()),
    }
    // Guest → host: with a host listener up, the guest's connect must fail and nothing arrive.
    let hport = 1261;
    let l = host::listen(uds, hport).map_err(fail)?;
    let d = vm.run_op(
        case,
        "connect_fail",
        &format!("port={hport} connect_timeout_ms=3000"),
        Duration::from_secs(30),
    )?;
    if host::poll_readable(
        std::os::fd::AsRawFd::as_raw_fd(&l),
        Duration::from_millis(500),
    ) {
        return Err(fail(format!(
            "a guest connection reached the host listener ({d})"
        )));
    }
    notes.push(format!("guest→host connect failed ({d})"));
    let qlog = file_tail(&cd.qemu_log(), 40);
    if let Some(l) = qlog
        .lines()
        .find(|l| l.contains("vhost") && !l.starts_with("==="))
    {
        notes.push(format!("QEMU: {}", l.trim()));
    }
    Ok(notes.join("; "))
}

/// QEMU must refuse the backend at device init, promptly; the backend must stay up.
fn qemu_refuses(cfg: &QemuConfig, socket: &Path, cd: &CaseDir, b: &mut Backend) -> CaseResult {
    let t = Instant::now();
    let r = Vm::start(
        ACCESS_PLATFORM_REFUSED,
        cfg,
        socket,
        &cd.dir.join("vm"),
        Duration::from_secs(30),
    );
    let secs = t.elapsed().as_secs_f64();
    if let Ok(mut vm) = r {
        vm.shutdown(Duration::from_secs(10));
        return Err(fail(format!(
            "QEMU accepted a backend offering ACCESS_PLATFORM without BACKEND_REQ/REPLY_ACK \
             (guest CID {})",
            vm.hello.cid
        )));
    }
    if !log_has(&cd.qemu_log(), QEMU_REFUSAL) {
        return Err(fail(format!(
            "QEMU did not come up, but not with {QEMU_REFUSAL:?}: {}",
            file_tail(&cd.qemu_log(), 3)
        )));
    }
    if secs > 10.0 {
        return Err(fail(format!("QEMU took {secs:.1} s to give up")));
    }
    std::thread::sleep(Duration::from_millis(200));
    if !b.alive() {
        return Err(Fail {
            msg: "the plugin exited after QEMU refused it".into(),
            lost: true,
        });
    }
    Ok(format!(
        "QEMU exited after {secs:.1} s: \"{QEMU_REFUSAL}\"; plugin still up"
    ))
}
