//! Runs the `vsock-plugin` binary in a short temporary directory.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default time after which a watchdog kills the plugin (so a hung test fails instead of hanging).
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(90);

/// Locates the plugin binary: `VSOCK_PLUGIN_BIN` if set, else `target/<profile>/vsock-plugin` next
/// to this test executable's `deps/` directory, rebuilt once per test process when running under
/// cargo (`cargo test -p vsock-plugin-tests` does not build the plugin's binary by itself, and a
/// stale binary would test old code).
pub fn plugin_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VSOCK_PLUGIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Soong/tradefed: `data_bins` installs the binary next to the test as `vsock_plugin`.
    let beside = exe.with_file_name("vsock_plugin");
    if beside.is_file() {
        return beside;
    }
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("vsock-plugin");
    build_once(&dir);
    assert!(
        bin.exists(),
        "plugin binary {} not found: run `cargo build -p vsock-plugin` (or `cargo test --workspace`), \
         or set VSOCK_PLUGIN_BIN",
        bin.display()
    );
    bin
}

/// `cargo build -p vsock-plugin --bin vsock-plugin` for the profile of `profile_dir`, once.
fn build_once(profile_dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Only under cargo (Soong sets neither CARGO nor CARGO_MANIFEST_DIR).
        let (Some(cargo), Some(manifest_dir)) =
            (std::env::var_os("CARGO"), option_env!("CARGO_MANIFEST_DIR"))
        else {
            return;
        };
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "vsock-plugin",
            "--bin",
            "vsock-plugin",
        ]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let out = cmd
            .current_dir(manifest_dir)
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "building the plugin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A temporary directory under /tmp with a short name (Unix socket paths must stay < 108 bytes).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> io::Result<Self> {
        let tmpl = CString::new("/tmp/vp-XXXXXX").unwrap();
        let raw = tmpl.into_raw();
        // SAFETY: raw is a writable NUL-terminated template.
        let r = unsafe { libc::mkdtemp(raw) };
        // SAFETY: raw came from into_raw.
        let s = unsafe { CString::from_raw(raw) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(TempDir {
            path: PathBuf::from(s.into_string().unwrap()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Paths of one VM served by the plugin.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub guest_cid: u64,
    /// vhost-user socket.
    pub socket: PathBuf,
    /// Hybrid vsock base path.
    pub uds: PathBuf,
}

impl VmPaths {
    /// `<uds>_<port>`: where a guest→host connection to `port` goes.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut s = self.uds.clone().into_os_string();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }
}

/// A running plugin, killed on drop. On a failing test (panic), the tail of its stderr is
/// printed.
pub struct PluginProcess {
    pub dir: TempDir,
    child: Arc<Mutex<Option<Child>>>,
    pub stderr_path: PathBuf,
    pub vms: Vec<VmPaths>,
    pub args: Vec<String>,
}

impl PluginProcess {
    /// Starts the plugin with exactly `args`; waits until every VM's socket path exists.
    pub fn spawn(dir: TempDir, args: Vec<String>, vms: Vec<VmPaths>) -> io::Result<Self> {
        Self::spawn_inheriting(dir, args, vms, None)
    }

    /// As [`Self::spawn`]; `inherit = Some(fd)` passes `fd` to the child as its fd 3 (for
    /// `--socket-fd 3`), and then the socket paths are not waited for.
    pub fn spawn_inheriting(
        dir: TempDir,
        args: Vec<String>,
        vms: Vec<VmPaths>,
        inherit: Option<RawFd>,
    ) -> io::Result<Self> {
        Self::spawn_with_env(dir, args, vms, inherit, &[])
    }

    /// As [`Self::spawn_inheriting`], with extra environment variables. `NOTIFY_SOCKET` is never
    /// inherited from the test's own environment (only set through `env`).
    pub fn spawn_with_env(
        dir: TempDir,
        args: Vec<String>,
        vms: Vec<VmPaths>,
        inherit: Option<RawFd>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> io::Result<Self> {
        Self::spawn_impl(&plugin_binary(), dir, args, vms, inherit, env)
    }

    /// As [`Self::spawn_with_env`] without an inherited fd, running `program` (e.g. a launcher
    /// that runs the plugin) instead of the plugin binary.
    pub fn spawn_program(
        program: &Path,
        dir: TempDir,
        args: Vec<String>,
        vms: Vec<VmPaths>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> io::Result<Self> {
        Self::spawn_impl(program, dir, args, vms, None, env)
    }

    fn spawn_impl(
        program: &Path,
        dir: TempDir,
        args: Vec<String>,
        vms: Vec<VmPaths>,
        inherit: Option<RawFd>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> io::Result<Self> {
        let stderr_path = dir.join("stderr.log");
        let stderr = File::create(&stderr_path)?;
        let mut cmd = Command::new(program);
        cmd.args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(fd) = inherit {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // dup2 clears FD_CLOEXEC on the new fd (unless fd == 3 already).
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn()?;
        let vms_to_wait = if inherit.is_some() {
            Vec::new()
        } else {
            vms.clone()
        };
        let p = PluginProcess {
            dir,
            child: Arc::new(Mutex::new(Some(child))),
            stderr_path,
            vms,
            args,
        };
        p.start_watchdog(DEFAULT_WATCHDOG);
        let deadline = Instant::now() + Duration::from_secs(10);
        for vm in &vms_to_wait {
            while !vm.socket.exists() {
                if let Some(st) = p.try_exit_status() {
                    return Err(io::Error::other(format!(
                        "plugin exited with {st} before creating {}; stderr:\n{}",
                        vm.socket.display(),
                        p.stderr_tail(4000)
                    )));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "plugin did not create {} within 10 s; stderr:\n{}",
                        vm.socket.display(),
                        p.stderr_tail(4000)
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(p)
    }

    /// One VM, guest CID 3: `--guest-cid 3 --socket D/v.sock --uds-path D/h.sock` + `extra`.
    pub fn single(extra: &[&str]) -> io::Result<Self> {
        Self::single_cid(3, extra)
    }

    pub fn single_cid(cid: u64, extra: &[&str]) -> io::Result<Self> {
        Self::single_cid_with_env(cid, extra, &[])
    }

    /// As [`Self::single_cid`], with extra environment variables.
    pub fn single_cid_with_env(
        cid: u64,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> io::Result<Self> {
        let dir = TempDir::new()?;
        let vm = VmPaths {
            guest_cid: cid,
            socket: dir.join("v.sock"),
            uds: dir.join("h.sock"),
        };
        let mut args = vec![
            "--guest-cid".to_string(),
            cid.to_string(),
            "--socket".to_string(),
            vm.socket.display().to_string(),
            "--uds-path".to_string(),
            vm.uds.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_with_env(dir, args, vec![vm], None, env)
    }

    /// Several VMs: each entry is (guest cid, extra `key=value` pairs such as `groups=g1`).
    pub fn multi(vms: &[(u64, &str)]) -> io::Result<Self> {
        let dir = TempDir::new()?;
        let mut args = Vec::new();
        let mut paths = Vec::new();
        for (k, (cid, extra)) in vms.iter().enumerate() {
            let vm = VmPaths {
                guest_cid: *cid,
                socket: dir.join(&format!("v{k}.sock")),
                uds: dir.join(&format!("h{k}.sock")),
            };
            let mut spec = format!(
                "guest-cid={cid},socket={},uds-path={}",
                vm.socket.display(),
                vm.uds.display()
            );
            if !extra.is_empty() {
                spec.push(',');
                spec.push_str(extra);
            }
            args.push("--vm".to_string());
            args.push(spec);
            paths.push(vm);
        }
        Self::spawn(dir, args, paths)
    }

    /// The first VM's paths.
    pub fn vm(&self) -> &VmPaths {
        &self.vms[0]
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// Exit status, if the process has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap();
        g.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_alive(&self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Asserts the process is still running (with its stderr tail otherwise).
    pub fn assert_alive(&self) {
        if let Some(st) = self.try_exit_status() {
            panic!(
                "plugin exited with {st}; stderr tail:\n{}",
                self.stderr_tail(4000)
            );
        }
    }

    /// Last `n` bytes of the plugin's stderr.
    pub fn stderr_tail(&self, n: u64) -> String {
        let Ok(mut f) = File::open(&self.stderr_path) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }

    fn start_watchdog(&self, after: Duration) {
        let child = Arc::downgrade(&self.child);
        std::thread::spawn(move || {
            let deadline = Instant::now() + after;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                if child.upgrade().is_none() {
                    return;
                }
            }
            if let Some(c) = child.upgrade() {
                if let Some(ch) = c.lock().unwrap().as_mut() {
                    if ch.try_wait().ok().flatten().is_none() {
                        eprintln!("watchdog: killing plugin pid {} after {after:?}", ch.id());
                        let _ = ch.kill();
                    }
                }
            }
        });
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let alive = self.is_alive();
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- vsock-plugin {:?} (alive at end: {alive}) stderr tail ----\n{}\n---- end ----",
                self.args,
                self.stderr_tail(6000)
            );
        }
    }
}

/// Runs the plugin binary with `args` to completion (bounded by `timeout`), returning
/// (exit status, stderr). The process is killed if it does not exit in time (status None).
pub fn run_plugin_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
    let dir = TempDir::new().unwrap();
    let err_path = dir.join("stderr.log");
    let mut child = Command::new(plugin_binary())
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, stderr)
}
