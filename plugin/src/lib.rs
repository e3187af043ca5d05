//! vsock-plugin: a vhost-user virtio-vsock device for crosvm, QEMU and Cuttlefish.
//!
//! How a packet travels, and where each step lives:
//!
//! ```text
//!  VMM (crosvm / QEMU) ──vhost-user──► vhost_user::{listener, wire, session}  features, memory, rings
//!  guest virtqueues ◄──────────────► virtqueue::{vring, chain, guest_io}     split rings, chains, guest-memory I/O
//!                                    vsock::{packet, csm, connection, credit}  the vsock protocol
//!                                    vsock::device                            the device: a muxer over connections
//!  host Unix sockets / sibling VMs ◄► host::{unix, connect_line, sibling}     hybrid vsock, VM-to-VM
//!                                    worker                                   one event loop per VM
//!                                    snapshot                                 DEVICE_STATE save/restore
//!                                    config                                   one VmConfig per VM (clap CLI, file)
//! ```
//!
//! Dependencies point one way: the worker drives the device, which registers its fds through the
//! worker's `EventRegistry` with tokens only the device decodes (`vsock::device::interests`);
//! the device routes packets and events to connections (`vsock::connection`: each owns its buffers,
//! credit and readiness flags, and its protocol state, the state machine `vsock::csm`; the device
//! writes none of their fields). Types others need
//! from the device live in leaf modules that import nothing from the plugin (`vsock::status`,
//! `virtio`, `vsock::packet`), so `control`, `host::route` and the worker do not depend on the
//! device through them. `plugin/tests/import_cycles.rs` fails on any import circle, between
//! modules and between top-level modules.
//!
//! [`Plugin::start`] runs one [`worker::VmWorker`] thread per configured VM.

pub mod config;
pub(crate) mod control;
pub mod host;
pub mod iotlb;
pub mod log_limit;
pub mod panic_exit;
pub mod readiness;
pub mod sandbox;
pub mod snapshot;
pub mod vhost_user;
pub mod virtio;
pub mod virtqueue;
pub mod vsock;
pub(crate) mod worker;

#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use config::VmConfig;
use host::sibling::SiblingRouter;
use vhost_user::listener::FrontendListener;
use vhost_user::session::SessionConfig;
use vsock::device::{DeviceConfig, VsockDevice};
use worker::VmWorker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("VM with guest CID {cid}: {what}: {source}")]
    Io {
        cid: u64,
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] config::namespace::NamespaceError),
    #[error("control plane: {0}")]
    Control(String),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
}

/// Process-wide options (not per VM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Serve the control plane (`binder://NAME` or `unix:///path#NAME`).
    pub control: Option<String>,
    /// Uids allowed to call the control plane (the plugin's own uid always is).
    pub control_allow_uids: Vec<u32>,
    /// `--ready-fd`: written to and closed once every socket listens ([`readiness`]).
    pub ready_fd: Option<i32>,
    /// `--socket-group-access`: socket files are 0660 (the plugin's group may connect) instead
    /// of 0600.
    pub socket_group_access: bool,
    /// `--sandbox`: the host sandbox policy to stay inside ([`sandbox`]).
    pub sandbox: sandbox::SandboxMode,
}

impl ProcessOptions {
    /// The mode of every socket file the plugin creates.
    pub fn socket_mode(&self) -> u32 {
        if self.socket_group_access {
            host::unix::SOCKET_MODE_GROUP
        } else {
            host::unix::SOCKET_MODE_PRIVATE
        }
    }
}

/// The running plugin: one worker thread per VM.
pub struct Plugin {
    workers: Vec<(Arc<EventFd>, JoinHandle<()>)>,
    /// One message per worker whose run ended (see [`sandbox::threads_may_exit`]).
    ended: std::sync::mpsc::Receiver<()>,
    stop: Arc<worker::Shutdown>,
    /// Socket files this process created (path, inode), removed when it ends.
    created: Vec<(PathBuf, u64)>,
    _control: Option<(control::Control, vsock_plugin_ipc::platform::ServerHandle)>,
}

impl Plugin {
    /// Binds every socket first (so a failure starts nothing), then starts the workers. The
    /// hybrid listener and the vhost-user socket exist when this returns.
    pub fn start(configs: Vec<VmConfig>) -> Result<Plugin, StartError> {
        Self::start_with(configs, &ProcessOptions::default())
    }

    /// As [`Self::start`], with process-wide options. On failure, the socket files created so
    /// far are removed again.
    pub fn start_with(configs: Vec<VmConfig>, opts: &ProcessOptions) -> Result<Plugin, StartError> {
        sandbox::set_mode(opts.sandbox);
        if opts.sandbox == sandbox::SandboxMode::Stock {
            log::info!("--sandbox stock: a guest half-close is not passed to host sockets (no shutdown(2))");
        }
        let mut created = Vec::new();
        let started = Self::start_recording(configs, opts, &mut created);
        if started.is_err() {
            remove_created(&created);
        }
        started
    }

    fn start_recording(
        configs: Vec<VmConfig>,
        opts: &ProcessOptions,
        created: &mut Vec<(PathBuf, u64)>,
    ) -> Result<Plugin, StartError> {
        config::namespace::check(&configs, opts.control.as_deref())?;
        let mode = opts.socket_mode();
        let router = Arc::new(SiblingRouter::default());
        let stop = Arc::new(worker::Shutdown::default());
        let mut prepared = Vec::new();
        for cfg in &configs {
            let cid = cfg.guest_cid;
            let io = |what: &str| {
                let what = what.to_string();
                move |source| StartError::Io { cid, what, source }
            };
            let listener = match (&cfg.socket, cfg.socket_fd) {
                (_, Some(fd)) => FrontendListener::from_fd(fd).map_err(io("socket-fd"))?,
                (Some(path), None) => {
                    let l = FrontendListener::bind(path, mode)
                        .map_err(io(&format!("vhost-user socket {}", path.display())))?;
                    created.push((path.clone(), inode_of(path)));
                    l
                }
                (None, None) => {
                    return Err(StartError::Io {
                        cid,
                        what: "configuration".into(),
                        source: std::io::Error::other("neither socket nor socket-fd given"),
                    })
                }
            };
            let hybrid = host::unix::bind_listener(&cfg.uds_path, mode)
                .map_err(io(&format!("uds-path {}", cfg.uds_path.display())))?;
            created.push((cfg.uds_path.clone(), inode_of(&cfg.uds_path)));
            let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?);
            let sibling = router.register(cid, cfg.groups.clone(), wake.clone());
            let device = VsockDevice::new(device_config(cfg), hybrid, router.clone(), sibling);
            let session = SessionConfig {
                guest_cid: cid,
                max_queue_size: cfg.queue_size,
                seqpacket: cfg.seqpacket == config::Toggle::On,
                iotlb: iotlb::policy::IotlbPolicy {
                    mode: cfg.iotlb,
                    access_platform: cfg.access_platform,
                },
                iotlb_max_entries: cfg.iotlb_max_entries as usize,
                iotlb_miss_timeout: Duration::from_millis(cfg.iotlb_miss_timeout_ms as u64),
            };
            let worker = VmWorker::new(
                format!("cid {cid}"),
                listener,
                session,
                device,
                wake.clone(),
                stop.clone(),
            )
            .map_err(io("epoll"))?;
            prepared.push((cid, wake, worker));
        }
        let control = match &opts.control {
            Some(uri) => {
                let c = Self::attach_control(uri, opts, &mut prepared)?;
                if let Some(path) = config::namespace::control_socket_path(uri) {
                    use std::os::unix::fs::PermissionsExt;
                    if sandbox::beyond_stock_allowed() {
                        let _ =
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
                    }
                    host::unix::register_own_socket(&path);
                    created.push((path.clone(), inode_of(&path)));
                }
                Some(c)
            }
            None => None,
        };
        let mut workers = Vec::new();
        let (ended_tx, ended) = std::sync::mpsc::channel();
        for (_, wake, worker) in prepared {
            let ended_tx = ended_tx.clone();
            let handle = std::thread::Builder::new()
                .name("vsock-vm".into())
                .spawn(move || {
                    worker.run();
                    let _ = ended_tx.send(());
                    drop(ended_tx);
                    if !sandbox::threads_may_exit() {
                        sandbox::park_forever();
                    }
                });
            match handle {
                Ok(h) => workers.push((wake, h)),
                Err(e) => {
                    // End the workers already running before giving up.
                    stop.stop.store(true, Ordering::Release);
                    for (wake, h) in workers {
                        let _ = wake.write(1);
                        let _ = h.join();
                    }
                    return Err(StartError::Spawn(e));
                }
            }
        }
        drop(ended_tx);
        Ok(Plugin {
            workers,
            ended,
            stop,
            created: std::mem::take(created),
            _control: control,
        })
    }

    /// Serves the control plane at `uri` and hands every worker its mailbox and hooks.
    fn attach_control(
        uri: &str,
        opts: &ProcessOptions,
        prepared: &mut [(u64, Arc<EventFd>, VmWorker)],
    ) -> Result<(control::Control, vsock_plugin_ipc::platform::ServerHandle), StartError> {
        let fail = StartError::Control;
        let parsed = vsock_plugin_ipc::platform::ControlUri::parse(uri)
            .map_err(|e| fail(format!("--control {uri}: {e}")))?;
        let vms: Vec<_> = prepared
            .iter()
            .map(|(cid, wake, _)| control::VmControl::new(*cid, wake.clone()))
            .collect();
        // SAFETY: getuid has no preconditions.
        let own_uid = unsafe { libc::getuid() };
        let allow = vsock_plugin_ipc::AllowList::new(
            opts.control_allow_uids.iter().copied().chain([own_uid]),
        );
        let policy = control::SharedPolicy::default();
        let device_control = control::PluginControl::new(vms.clone(), policy.clone());
        let plane = vsock_plugin_ipc::ControlPlane::new(Arc::new(device_control), allow);
        let ctl = control::Control::new(plane, &vms, policy);
        let server = ctl
            .plane
            .serve(&parsed, &Default::default())
            .map_err(fail)?;
        for ((_, _, worker), vm) in prepared.iter_mut().zip(&vms) {
            worker.attach_control(vm.clone(), ctl.hooks(vm));
        }
        log::info!("control plane at {uri}");
        Ok((ctl, server))
    }

    /// Waits until every worker has ended, then removes the socket files this process created.
    pub fn wait(mut self) {
        if sandbox::threads_may_exit() {
            for (_, h) in self.workers.drain(..) {
                let _ = h.join();
            }
        } else {
            // The workers park instead of exiting: count their reports (a worker that panicked
            // dropped its sender without one; the channel closes when none is left).
            for _ in 0..self.workers.len() {
                if self.ended.recv().is_err() {
                    break;
                }
            }
            self.workers.clear();
        }
        remove_created(&self.created);
        self.created.clear();
    }

    /// Stops every worker and waits for them.
    pub fn stop(self) {
        self.stop.stop.store(true, Ordering::Release);
        for (wake, _) in &self.workers {
            let _ = wake.write(1);
        }
        self.wait();
    }

    /// A handle that asks the workers to drain and end (from a signal-handling thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shutdown: self.stop.clone(),
            wakes: self.workers.iter().map(|(w, _)| w.clone()).collect(),
        }
    }
}

/// Asks a running [`Plugin`] to stop gracefully: stop accepting, write out what the devices
/// buffered (within each VM's shutdown timeout), close, end the workers.
#[derive(Clone)]
pub struct ShutdownHandle {
    shutdown: Arc<worker::Shutdown>,
    wakes: Vec<Arc<EventFd>>,
}

impl ShutdownHandle {
    pub fn drain(&self) {
        self.shutdown.drain.store(true, Ordering::Release);
        for w in &self.wakes {
            let _ = w.write(1);
        }
    }
}

/// Removes socket files this process bound, if they are still the same files.
fn remove_created(created: &[(PathBuf, u64)]) {
    for (path, ino) in created {
        if host::unix::inode_of(path) == Some(*ino) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The inode of a socket file just bound (to remove exactly that file later).
fn inode_of(path: &Path) -> u64 {
    host::unix::inode_of(path).unwrap_or(0)
}

fn device_config(cfg: &VmConfig) -> DeviceConfig {
    DeviceConfig {
        guest_cid: cfg.guest_cid,
        uds_path: cfg.uds_path.clone(),
        buf_alloc: cfg.tx_buffer_size,
        max_connections: cfg.max_connections as usize,
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms as u64),
        shutdown_timeout: Duration::from_millis(cfg.shutdown_timeout_ms as u64),
        connect_line_timeout: Duration::from_millis(cfg.connect_line_timeout_ms as u64),
        ok_reply: cfg.ok_reply,
    }
}
