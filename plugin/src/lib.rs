//! vsock-plugin: a vhost-user virtio-vsock device for crosvm, QEMU and Cuttlefish.
//!
//! How a packet travels, and where each step lives:
//!
//! ```text
//!  VMM (crosvm / QEMU) ──vhost-user──► vhost_user::{listener, wire, session}  features, memory, rings
//!  guest virtqueues ◄──────────────► virtqueue::{vring, chain}               split rings, descriptor chains
//!                                    vsock::{packet, connection, credit, device}  the vsock protocol
//!  host Unix sockets / sibling VMs ◄► host::{unix, connect_line, sibling}     hybrid vsock, VM-to-VM
//!                                    worker                                   one event loop per VM
//!                                    config                                   one serde struct per VM
//! ```
//!
//! [`Plugin::start`] runs one [`worker::VmWorker`] thread per configured VM.

pub mod config;
pub mod control;
pub mod host;
pub mod iotlb;
pub mod readiness;
pub mod sandbox;
pub mod vhost_user;
pub mod virtqueue;
pub mod vsock;
pub mod worker;

#[cfg(test)]
mod testing;

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// `--sandbox`: the host sandbox policy to stay inside ([`sandbox`]).
    pub sandbox: sandbox::SandboxMode,
}

/// The running plugin: one worker thread per VM.
pub struct Plugin {
    workers: Vec<(Arc<EventFd>, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
    _control: Option<(control::Control, vsock_plugin_ipc::platform::ServerHandle)>,
}

impl Plugin {
    /// Binds every socket first (so a failure starts nothing), then starts the workers. The
    /// hybrid listener and the vhost-user socket exist when this returns.
    pub fn start(configs: Vec<VmConfig>) -> Result<Plugin, StartError> {
        Self::start_with(configs, &ProcessOptions::default())
    }

    pub fn start_with(configs: Vec<VmConfig>, opts: &ProcessOptions) -> Result<Plugin, StartError> {
        sandbox::set_mode(opts.sandbox);
        if opts.sandbox == sandbox::SandboxMode::Stock {
            log::info!("--sandbox stock: a guest half-close is not passed to host sockets (no shutdown(2))");
        }
        let router = Arc::new(SiblingRouter::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut prepared = Vec::new();
        for cfg in &configs {
            let cid = cfg.guest_cid;
            let io = |what: &str| {
                let what = what.to_string();
                move |source| StartError::Io { cid, what, source }
            };
            let listener = match (&cfg.socket, cfg.socket_fd) {
                (_, Some(fd)) => FrontendListener::from_fd(fd).map_err(io("socket-fd"))?,
                (Some(path), None) => FrontendListener::bind(path)
                    .map_err(io(&format!("vhost-user socket {}", path.display())))?,
                (None, None) => {
                    return Err(StartError::Io {
                        cid,
                        what: "configuration".into(),
                        source: std::io::Error::other("neither socket nor socket-fd given"),
                    })
                }
            };
            let hybrid = host::unix::bind_listener(&cfg.uds_path)
                .map_err(io(&format!("uds-path {}", cfg.uds_path.display())))?;
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
            Some(uri) => Some(Self::attach_control(uri, opts, &mut prepared)?),
            None => None,
        };
        let mut workers = Vec::new();
        for (_, wake, worker) in prepared {
            let handle = std::thread::Builder::new()
                .name("vsock-vm".into())
                .spawn(move || worker.run());
            match handle {
                Ok(h) => workers.push((wake, h)),
                Err(e) => {
                    return Err(StartError::Io {
                        cid: 0,
                        what: "spawning a worker thread".into(),
                        source: e,
                    });
                }
            }
        }
        Ok(Plugin {
            workers,
            stop,
            _control: control,
        })
    }

    /// Serves the control plane at `uri` and hands every worker its mailbox and hooks.
    fn attach_control(
        uri: &str,
        opts: &ProcessOptions,
        prepared: &mut [(u64, Arc<EventFd>, VmWorker)],
    ) -> Result<(control::Control, vsock_plugin_ipc::platform::ServerHandle), StartError> {
        let fail = |what: String| StartError::Io {
            cid: 0,
            what,
            source: std::io::Error::other("control plane"),
        };
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

    /// Waits until every worker has ended.
    pub fn wait(self) {
        for (_, h) in self.workers {
            let _ = h.join();
        }
    }

    /// Stops every worker and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for (wake, _) in &self.workers {
            let _ = wake.write(1);
        }
        for (_, h) in self.workers {
            let _ = h.join();
        }
    }
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
