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
pub mod host;
pub mod iotlb;
pub mod vhost_user;
pub mod virtqueue;
pub mod vsock;
pub mod worker;

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

/// The running plugin: one worker thread per VM.
pub struct Plugin {
    workers: Vec<(Arc<EventFd>, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

impl Plugin {
    /// Binds every socket first (so a failure starts nothing), then starts the workers. The
    /// hybrid listener and the vhost-user socket exist when this returns.
    pub fn start(configs: Vec<VmConfig>) -> Result<Plugin, StartError> {
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
            prepared.push((wake, worker));
        }
        let mut workers = Vec::new();
        for (wake, worker) in prepared {
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
        Ok(Plugin { workers, stop })
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
        self.wait();
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
