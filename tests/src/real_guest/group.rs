//! Several guests served by one backend process (`--vm guest-cid=..,groups=..` each), booted at
//! once: the sibling cases and the kernel selftest run on such a group.

use std::path::Path;
use std::time::Duration;

use super::backend::{expand_multi, Backend, VmSpec};
use super::qemu::{QemuConfig, Vm};

pub struct Group {
    pub backend: Backend,
    /// In the order of the `(cid, group)` list given to [`Group::boot`].
    pub vms: Vec<Vm>,
}

impl Group {
    /// Starts the backend from `template` (`{vms}` expanded) with one VM per `(cid, group)`
    /// (sockets `dir/vhost<cid>.sock`, `dir/vm<cid>.vsock`), boots every guest from this thread
    /// (QEMU dies with the thread that spawned it, see `Vm::spawn`) with the QEMU configuration
    /// `qemu(cid)` gives, and waits until each reports its CID.
    pub fn boot(
        dir: &Path,
        template: &str,
        members: &[(u32, &str)],
        qemu: impl Fn(u32) -> QemuConfig,
    ) -> Result<Group, String> {
        let _ = std::fs::create_dir_all(dir);
        let specs: Vec<VmSpec> = members
            .iter()
            .map(|&(cid, g)| VmSpec {
                cid,
                socket: dir.join(format!("vhost{cid}.sock")),
                uds: dir.join(format!("vm{cid}.vsock")),
                groups: g.into(),
            })
            .collect();
        let socks: Vec<&Path> = specs.iter().map(|s| s.socket.as_path()).collect();
        let backend = Backend::start(
            expand_multi(template, &specs),
            &dir.join("backend.log"),
            &socks,
        )?;
        let mut vms = Vec::new();
        for s in &specs {
            let vdir = dir.join(format!("vm{}", s.cid));
            vms.push(Vm::spawn(
                &format!("guest{}", s.cid),
                &qemu(s.cid),
                &s.socket,
                &vdir,
            )?);
        }
        for (vm, s) in vms.iter_mut().zip(&specs) {
            vm.wait_hello(Duration::from_secs(90))?;
            if vm.hello.cid != s.cid.to_string() {
                return Err(format!("guest {} reports CID {:?}", s.cid, vm.hello.cid));
            }
        }
        Ok(Group { backend, vms })
    }

    /// Powers the guests off and stops the backend; whether the backend was still running.
    pub fn finish(mut self) -> bool {
        for vm in self.vms.iter_mut() {
            vm.shutdown(Duration::from_secs(10));
        }
        let alive = self.backend.alive();
        self.backend.stop();
        alive
    }
}
