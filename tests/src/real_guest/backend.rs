//! The vhost-user backend under test, started from a command template; its output goes to a log
//! file. Killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::util::{file_tail, kill_on_parent_death, wait_for_path};

/// One VM as the backend should serve it.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub cid: u32,
    pub socket: PathBuf,
    pub uds: PathBuf,
    pub groups: String,
}

/// Expands a single-VM template (`{cid}`, `{socket}`, `{uds}`) into argv. Words are split on
/// whitespace (no quoting).
pub fn expand_single(template: &str, vm: &VmSpec) -> Vec<String> {
    template
        .split_whitespace()
        .map(|w| {
            w.replace("{cid}", &vm.cid.to_string())
                .replace("{socket}", &vm.socket.to_string_lossy())
                .replace("{uds}", &vm.uds.to_string_lossy())
        })
        .collect()
}

/// Expands a multi-VM template: the word `{vms}` becomes `--vm guest-cid=..,socket=..,uds-path=..,groups=..`
/// for every VM.
pub fn expand_multi(template: &str, vms: &[VmSpec]) -> Vec<String> {
    let mut out = Vec::new();
    for w in template.split_whitespace() {
        if w == "{vms}" {
            for vm in vms {
                out.push("--vm".into());
                out.push(format!(
                    "guest-cid={},socket={},uds-path={},groups={}",
                    vm.cid,
                    vm.socket.display(),
                    vm.uds.display(),
                    vm.groups
                ));
            }
        } else {
            out.push(w.to_string());
        }
    }
    out
}

pub struct Backend {
    child: Option<Child>,
    pub log: PathBuf,
    pub argv: Vec<String>,
}

impl Backend {
    /// Starts `argv` (appending to `log`) and waits until every vhost-user socket exists. It never
    /// connects to them: a bare connect would use up one serve iteration of some backends.
    pub fn start(argv: Vec<String>, log: &Path, sockets: &[&Path]) -> Result<Backend, String> {
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        use std::io::Write;
        let _ = writeln!(&out, "=== starting: {}", argv.join(" "));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        kill_on_parent_death(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting backend {:?}: {e}", argv[0]))?;
        let mut b = Backend {
            child: Some(child),
            log: log.to_path_buf(),
            argv,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for s in sockets {
            if !wait_for_path(s, deadline, || b.alive()) {
                let why = if b.alive() {
                    "did not create"
                } else {
                    "exited before creating"
                };
                return Err(format!("backend {why} {}\n{}", s.display(), b.log_tail(20)));
            }
        }
        Ok(b)
    }

    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// SIGTERM, then SIGKILL after 2 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
