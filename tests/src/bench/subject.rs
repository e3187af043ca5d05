//! The three subjects and the backend processes the benchmark starts.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::frontend::plugin_process::{plugin_binary, TempDir};

use super::util::{proc_cpu, ProcCpu};

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// `target/release/vsock-plugin`.
    Plugin,
    /// rust-vmm `vhost-device-vsock` 0.3.0.
    Reference,
    /// A raw Unix socketpair / Unix listener: the limit of any hybrid-vsock device.
    Socketpair,
}

impl Subject {
    pub const ALL: [Subject; 3] = [Subject::Plugin, Subject::Reference, Subject::Socketpair];

    pub fn name(self) -> &'static str {
        match self {
            Subject::Plugin => "plugin",
            Subject::Reference => "reference",
            Subject::Socketpair => "socketpair",
        }
    }

    pub fn parse(s: &str) -> Option<Subject> {
        match s.trim() {
            "plugin" => Some(Subject::Plugin),
            "reference" | "ref" | "vhost-device-vsock" => Some(Subject::Reference),
            "socketpair" | "socket" | "uds" => Some(Subject::Socketpair),
            _ => None,
        }
    }

    pub fn is_backend(self) -> bool {
        self != Subject::Socketpair
    }
}

/// The reference backend: `VSOCK_BENCH_REFERENCE`, else `~/.cargo/bin/vhost-device-vsock`, else
/// `vhost-device-vsock` on PATH.
pub fn reference_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VSOCK_BENCH_REFERENCE") {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/vhost-device-vsock");
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("vhost-device-vsock"))
            .find(|p| p.exists())
    })
}

/// `<binary> --version`, first line.
pub fn binary_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Resolves the binary of a backend subject (builds the plugin in release mode under cargo).
pub fn backend_binary(s: Subject) -> Result<PathBuf, String> {
    match s {
        Subject::Plugin => {
            let p = std::panic::catch_unwind(plugin_binary).map_err(|_| {
                "vsock-plugin binary not found: run `cargo build --release -p vsock-plugin` \
                 (or tests/bench/setup), or set VSOCK_PLUGIN_BIN"
                    .to_string()
            })?;
            Ok(p)
        }
        Subject::Reference => reference_binary().ok_or_else(|| {
            "vhost-device-vsock not found: run tests/bench/setup (cargo install vhost-device-vsock \
             --version 0.3.0 --locked), or set VSOCK_BENCH_REFERENCE"
                .to_string()
        }),
        Subject::Socketpair => Err("the socketpair subject has no backend".into()),
    }
}

/// Extra backend arguments from `VSOCK_BENCH_PLUGIN_ARGS` / `VSOCK_BENCH_REFERENCE_ARGS`
/// (whitespace-separated), for experiments such as `--tx-buffer-size 262144`.
pub fn extra_args(s: Subject) -> Vec<String> {
    let var = match s {
        Subject::Plugin => "VSOCK_BENCH_PLUGIN_ARGS",
        Subject::Reference => "VSOCK_BENCH_REFERENCE_ARGS",
        Subject::Socketpair => return Vec::new(),
    };
    std::env::var(var)
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// One backend process serving one VM (guest CID 3), killed on drop. Both backends take the same
/// `--guest-cid 3 --socket S --uds-path U` arguments and run with `RUST_LOG=warn`.
pub struct Backend {
    pub subject: Subject,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub uds: PathBuf,
    /// The second VM's vhost-user socket (guest CID 4) of [`Backend::start_siblings`].
    pub sibling_socket: Option<PathBuf>,
    /// (vhost-user socket, hybrid uds) of every VM the process serves, in CID order from 3.
    pub vms: Vec<(PathBuf, PathBuf)>,
    child: Child,
    log: PathBuf,
}

impl Backend {
    pub fn start(subject: Subject, bin: &Path) -> io::Result<Backend> {
        Self::start_with(subject, bin, &[])
    }

    /// As [`Self::start`], with extra backend arguments (e.g. `--iotlb required`).
    pub fn start_with(subject: Subject, bin: &Path, args: &[&str]) -> io::Result<Backend> {
        let dir = TempDir::new()?;
        let socket = dir.join("v.sock");
        let uds = dir.join("h.sock");
        let vm: Vec<OsString> = vec![
            "--guest-cid".into(),
            "3".into(),
            "--socket".into(),
            socket.clone().into(),
            "--uds-path".into(),
            uds.clone().into(),
        ];
        Self::spawn(subject, bin, dir, vm, args, socket, uds, None)
    }

    /// One process serving `n` VMs (CIDs 3, 4, …; `--vm` per VM, each in its own group).
    pub fn start_many(subject: Subject, bin: &Path, n: usize) -> io::Result<Backend> {
        let dir = TempDir::new()?;
        let mut args: Vec<OsString> = Vec::new();
        let mut vms = Vec::new();
        for i in 0..n {
            let (s, u) = (
                dir.join(&format!("v{i}.sock")),
                dir.join(&format!("h{i}.sock")),
            );
            args.push("--vm".into());
            args.push(
                format!(
                    "guest-cid={},socket={},uds-path={},groups=g{i}",
                    3 + i,
                    s.display(),
                    u.display()
                )
                .into(),
            );
            vms.push((s, u));
        }
        let (socket, uds) = vms.first().cloned().ok_or(io::ErrorKind::InvalidInput)?;
        let mut b = Self::spawn(subject, bin, dir, args, &[], socket, uds, None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vms.iter().all(|(s, _)| s.exists()) {
            if Instant::now() > deadline || !b.alive() {
                return Err(io::Error::other(format!(
                    "{} did not create its {n} sockets: {}",
                    subject.name(),
                    b.log_tail(2000)
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        b.vms = vms;
        Ok(b)
    }

    /// Two sibling VMs in one backend process and one group: guest CID 3 on `socket`, guest
    /// CID 4 on `sibling_socket` (`--vm guest-cid=..,socket=..,uds-path=..,groups=bench`, the
    /// syntax both backends take).
    pub fn start_siblings(subject: Subject, bin: &Path) -> io::Result<Backend> {
        let dir = TempDir::new()?;
        let (socket, uds) = (dir.join("v.sock"), dir.join("h.sock"));
        let (socket4, uds4) = (dir.join("v4.sock"), dir.join("h4.sock"));
        let spec = |cid: u32, s: &Path, u: &Path| -> OsString {
            format!(
                "guest-cid={cid},socket={},uds-path={},groups=bench",
                s.display(),
                u.display()
            )
            .into()
        };
        let vm = vec![
            "--vm".into(),
            spec(3, &socket, &uds),
            "--vm".into(),
            spec(4, &socket4, &uds4),
        ];
        Self::spawn(subject, bin, dir, vm, &[], socket, uds, Some(socket4))
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        subject: Subject,
        bin: &Path,
        dir: TempDir,
        vm_args: Vec<OsString>,
        args: &[&str],
        socket: PathBuf,
        uds: PathBuf,
        sibling_socket: Option<PathBuf>,
    ) -> io::Result<Backend> {
        let log = dir.join("backend.log");
        let mut cmd = Command::new(bin);
        cmd.args(&vm_args)
            .args(extra_args(subject))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("VSOCK_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?);
        // SAFETY: prctl is async-signal-safe; the child dies with the benchmark.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let mut b = Backend {
            subject,
            dir,
            socket,
            uds,
            vms: Vec::new(),
            sibling_socket,
            child,
            log,
        };
        // Wait for the vhost-user socket(s) without connecting (a bare connect uses up one serve
        // iteration of the reference).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b.socket.exists() || b.sibling_socket.as_ref().is_some_and(|s| !s.exists()) {
            if let Ok(Some(st)) = b.child.try_wait() {
                return Err(io::Error::other(format!(
                    "{} exited with {st} at start: {}",
                    subject.name(),
                    b.log_tail(2000)
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} did not create its socket within 10 s",
                    subject.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(b)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu(&self) -> ProcCpu {
        proc_cpu(self.pid()).unwrap_or_default()
    }

    /// `<uds>_<port>`: where a guest→host connection to `port` goes.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut s = self.uds.clone().into_os_string();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, n: u64) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
