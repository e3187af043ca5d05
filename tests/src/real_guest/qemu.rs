//! One QEMU guest (TCG by default) with `vhost-user-vsock-pci` on the backend's socket, its console
//! in a file and the agent's control port (`ttyS1`) on a chardev socket. Killed on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::util::{file_tail, kill_on_parent_death};

#[derive(Clone, Debug, Default)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    /// `tcg` (default) or `kvm`.
    pub accel: String,
    pub mem_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command-line words.
    pub append: String,
    /// A vIOMMU: `-machine q35 -device intel-iommu,intremap=on,device-iotlb=on` before the vsock
    /// device, `iommu_platform=on,ats=on` on it, and `intel_iommu=on iommu=nopt` for the guest.
    pub viommu: bool,
    /// `iommu_platform=on` on the vsock device (implied by `viommu`).
    pub iommu_platform: bool,
    /// QEMU user-mode networking (`-netdev user` + virtio-net) instead of `-nic none`; the value
    /// is appended to the netdev (e.g. `hostfwd=tcp:127.0.0.1:40000-:1234`, or empty). The guest
    /// is 10.0.2.15/24 and reaches the host's loopback at 10.0.2.2.
    pub user_net: Option<String>,
}

impl QemuConfig {
    /// The `-device` value of the vsock device on chardev `chardev`.
    pub fn vsock_device(&self, chardev: &str) -> String {
        let mut d = format!("vhost-user-vsock-pci,chardev={chardev}");
        if self.viommu {
            d.push_str(",iommu_platform=on,ats=on");
        } else if self.iommu_platform {
            d.push_str(",iommu_platform=on");
        }
        d
    }
}

/// What the agent said when it came up.
#[derive(Clone, Debug)]
pub struct Hello {
    pub release: String,
    pub cid: String,
}

pub struct Vm {
    pub name: String,
    child: Option<Child>,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    ctl: UnixStream,
    lines: Receiver<String>,
    pending: Vec<String>,
    transcript: File,
    next_id: u32,
    pub hello: Hello,
}

/// How an op ended on the guest.
#[derive(Debug)]
pub enum OpError {
    /// The op ran and reported FAIL.
    Failed(String),
    /// No answer in time, or the control channel died: the guest is not usable any more.
    Lost(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Failed(s) => write!(f, "guest: {s}"),
            OpError::Lost(s) => write!(f, "guest lost: {s}"),
        }
    }
}

impl Vm {
    /// Boots a guest in `dir` (console.log, qemu.log, ctl.sock) and waits for the agent's HELLO.
    pub fn start(
        name: &str,
        cfg: &QemuConfig,
        vhost_socket: &Path,
        dir: &Path,
        boot_timeout: Duration,
    ) -> Result<Vm, String> {
        let mut vm = Vm::spawn(name, cfg, vhost_socket, dir)?;
        vm.wait_hello(boot_timeout)?;
        Ok(vm)
    }

    /// Starts QEMU and connects to its control socket. Call from a thread that outlives the guest:
    /// QEMU gets SIGKILL when the spawning thread exits (`PR_SET_PDEATHSIG`).
    pub fn spawn(
        name: &str,
        cfg: &QemuConfig,
        vhost_socket: &Path,
        dir: &Path,
    ) -> Result<Vm, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let console = dir.join("console.log");
        let qemu_log = dir.join("qemu.log");
        let ctl_path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&ctl_path);
        let mem = format!("{}M", cfg.mem_mb);
        let mut cmd = Command::new(&cfg.qemu);
        match cfg.accel.as_str() {
            "kvm" => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        if cfg.viommu {
            cmd.args(["-machine", "q35"])
                .args(["-device", "intel-iommu,intremap=on,device-iotlb=on"]);
        }
        let iommu_append = if cfg.viommu {
            " intel_iommu=on iommu=nopt"
        } else {
            ""
        };
        cmd.args(["-smp", "1", "-m", &mem])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
            .args(["-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=vhost,path={}", vhost_socket.display()))
            .arg("-device")
            .arg(cfg.vsock_device("vhost"))
            .arg("-kernel")
            .arg(&cfg.kernel)
            .arg("-initrd")
            .arg(&cfg.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet {}{iommu_append}",
                cfg.append
            ))
            .args(["-display", "none", "-monitor", "none", "-no-reboot"]);
        match &cfg.user_net {
            None => cmd.args(["-nic", "none"]),
            Some(opts) => {
                let sep = if opts.is_empty() { "" } else { "," };
                // No option ROM: none is needed for a -kernel boot, and QEMU without ipxe
                // installed would refuse to start looking for one.
                cmd.arg("-netdev")
                    .arg(format!("user,id=n0{sep}{opts}"))
                    .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            }
        };
        cmd.arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                ctl_path.display()
            ))
            .args(["-serial", "chardev:ctl"])
            .stdin(Stdio::null());
        // Debugging aid, e.g. VSOCK_REAL_GUEST_QEMU_ARGS='-trace enable=vhost_iotlb*'.
        if let Ok(extra) = std::env::var("VSOCK_REAL_GUEST_QEMU_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let log = File::create(&qemu_log).map_err(|e| format!("{}: {e}", qemu_log.display()))?;
        let _ = writeln!(&log, "=== {:?}", cmd);
        cmd.stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        kill_on_parent_death(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", cfg.qemu.display()))?;
        let mut child = Some(child);
        let fail = |child: &mut Option<Child>, msg: String| -> String {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            boot_failure(name, &msg, &qemu_log, &console)
        };

        // QEMU creates the control socket during start-up.
        let deadline = Instant::now() + Duration::from_secs(20);
        let ctl = loop {
            if let Ok(s) = UnixStream::connect(&ctl_path) {
                break s;
            }
            if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                return Err(fail(&mut child, format!("QEMU exited at start-up ({st})")));
            }
            if Instant::now() > deadline {
                return Err(fail(
                    &mut child,
                    "QEMU control socket never appeared".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (tx, lines) = mpsc::channel();
        let reader = ctl.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let transcript = File::create(dir.join("control.log")).map_err(|e| e.to_string())?;
        Ok(Vm {
            name: name.to_string(),
            child,
            console: console.clone(),
            qemu_log: qemu_log.clone(),
            ctl,
            lines,
            pending: Vec::new(),
            transcript,
            next_id: 1,
            hello: Hello {
                release: String::new(),
                cid: String::new(),
            },
        })
    }

    /// Waits for the agent's first HELLO (later repeats are ignored); kills QEMU on failure.
    pub fn wait_hello(&mut self, boot_timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + boot_timeout;
        loop {
            match self.next_line(deadline) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix("HELLO ") {
                        for kv in rest.split_whitespace() {
                            match kv.split_once('=') {
                                Some(("release", v)) => self.hello.release = v.into(),
                                Some(("cid", v)) => self.hello.cid = v.into(),
                                _ => {}
                            }
                        }
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.kill();
                    let msg = format!("agent never said HELLO: {e}");
                    return Err(boot_failure(
                        &self.name,
                        &msg,
                        &self.qemu_log,
                        &self.console,
                    ));
                }
            }
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                let _ = writeln!(self.transcript, "< {l}");
                Ok(l)
            }
            Err(RecvTimeoutError::Timeout) => Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => {
                let status = match self.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(st))) => format!("QEMU exited ({st})"),
                    _ => "control channel closed".into(),
                };
                Err(status)
            }
        }
    }

    /// Sends `RUN` for an op; returns its id.
    pub fn start_op(&mut self, case: &str, op: &str, args: &str) -> Result<u32, OpError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("RUN {id} {case} {op} {args}\n");
        let _ = write!(self.transcript, "> {line}");
        self.ctl
            .set_write_timeout(Some(Duration::from_secs(10)))
            .ok();
        self.ctl
            .write_all(line.as_bytes())
            .map_err(|e| OpError::Lost(format!("control write: {e}")))?;
        Ok(id)
    }

    /// Finds and removes the first line matching `pred`, waiting until `deadline`.
    fn take_line(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        if let Some(i) = self.pending.iter().position(|l| pred(l)) {
            return Ok(self.pending.remove(i));
        }
        loop {
            let l = self.next_line(deadline)?;
            if pred(&l) {
                return Ok(l);
            }
            if !l.starts_with("HELLO ") {
                self.pending.push(l);
            }
        }
    }

    /// Waits until the op's listener is up (`READY`). If the op ended first, its result is the error.
    pub fn wait_ready(&mut self, id: u32, timeout: Duration) -> Result<(), OpError> {
        let ready = format!("READY {id}");
        let result = format!("RESULT {id} ");
        let l = self
            .take_line(Instant::now() + timeout, |l| {
                l == ready || l.starts_with(&result)
            })
            .map_err(|e| OpError::Lost(format!("waiting for op {id} to listen: {e}")))?;
        if l == ready {
            return Ok(());
        }
        Err(OpError::Failed(l[result.len()..].to_string()))
    }

    /// Waits for the op's `RESULT`: Ok(detail) for PASS.
    pub fn wait_result(&mut self, id: u32, timeout: Duration) -> Result<String, OpError> {
        let result = format!("RESULT {id} ");
        let l = self
            .take_line(Instant::now() + timeout, |l| l.starts_with(&result))
            .map_err(|e| OpError::Lost(format!("waiting for the result of op {id}: {e}")))?;
        let rest = &l[result.len()..];
        match rest.split_once(' ') {
            Some(("PASS", d)) => Ok(d.to_string()),
            Some((_, d)) => Err(OpError::Failed(d.to_string())),
            None if rest == "PASS" => Ok(String::new()),
            None => Err(OpError::Failed(rest.to_string())),
        }
    }

    /// Runs an op that needs no host action before it starts.
    pub fn run_op(
        &mut self,
        case: &str,
        op: &str,
        args: &str,
        timeout: Duration,
    ) -> Result<String, OpError> {
        let id = self.start_op(case, op, args)?;
        self.wait_result(id, timeout)
    }

    pub fn console_tail(&self, lines: usize) -> String {
        file_tail(&self.console, lines)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Asks the agent to quit and waits for QEMU to exit (power-off); kills it after `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        let _ = self.ctl.write_all(b"QUIT\n");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// SIGKILL, as if the VMM crashed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn boot_failure(name: &str, msg: &str, qemu_log: &Path, console: &Path) -> String {
    format!(
        "{name}: {msg}\n  qemu log:\n{}\n  console:\n{}",
        super::util::indent(&file_tail(qemu_log, 10), "    "),
        super::util::indent(&file_tail(console, 25), "    ")
    )
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
