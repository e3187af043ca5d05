//! One VM: a vhost-user frontend connection, guest memory and the guest vsock driver.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::guest_memory::GuestMemory;
use super::vhost_user_client::{CrosvmOptions, Negotiated, QemuOptions, VhostUserClient};
use super::vsock_driver::{DriverConfig, VsockDriver};

/// Which VMM's handshake to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// 2 rings of 128, NEED_REPLY on SET_MEM_TABLE / SET_VRING_ENABLE.
    Qemu,
    /// 3 rings (event queue serviced by the backend), SET_OWNER first.
    Crosvm,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub vmm: Vmm,
    /// Queue size (QEMU uses 128; crosvm 32768 by default, Cuttlefish 256).
    pub queue_size: u16,
    /// Guest RAM regions (gpa, size).
    pub mem_layout: Vec<(u64, u64)>,
    pub driver: DriverConfig,
    pub qemu: QemuOptions,
    pub crosvm: CrosvmOptions,
}

impl VmOptions {
    pub fn qemu() -> Self {
        VmOptions {
            vmm: Vmm::Qemu,
            queue_size: 128,
            // Two regions as QEMU sends them (low RAM below 640 KiB, the rest from 768 KiB).
            mem_layout: vec![(0, 0xa0000), (0xc0000, 48 << 20)],
            driver: DriverConfig::default(),
            qemu: QemuOptions::default(),
            crosvm: CrosvmOptions::default(),
        }
    }

    pub fn crosvm() -> Self {
        let mut o = Self::qemu();
        o.vmm = Vmm::Crosvm;
        o.queue_size = 256;
        o.mem_layout = vec![(0, 48 << 20)];
        o.driver.event_buffers = 8;
        o
    }

    pub fn cid(mut self, cid: u64) -> Self {
        self.driver.guest_cid = cid;
        self
    }
}

/// A connected, running VM.
pub struct Vm {
    pub client: VhostUserClient,
    pub mem: Arc<GuestMemory>,
    pub driver: VsockDriver,
    pub negotiated: Negotiated,
}

impl Vm {
    /// Connects to `socket`, builds memory and rings, runs the handshake and kicks the rings.
    pub fn start(socket: &Path, opts: VmOptions) -> io::Result<Vm> {
        let client = VhostUserClient::connect(socket)?;
        Self::start_with(client, opts)
    }

    pub fn start_with(client: VhostUserClient, opts: VmOptions) -> io::Result<Vm> {
        let o = opts.clone();
        Self::build(client, opts, move |c, mem, setups| match o.vmm {
            Vmm::Qemu => c.handshake_qemu(mem, setups, &o.qemu),
            Vmm::Crosvm => c.handshake_crosvm(mem, setups, &o.crosvm),
        })
    }

    /// Builds memory and rings, then lets `handshake` hand them over; kicks the rings after.
    pub fn build(
        mut client: VhostUserClient,
        opts: VmOptions,
        handshake: impl FnOnce(
            &mut VhostUserClient,
            &GuestMemory,
            &[super::vhost_user_client::VringSetup],
        ) -> io::Result<Negotiated>,
    ) -> io::Result<Vm> {
        // Skip the first page so GPA 0 is never a valid buffer address by accident.
        let mem = Arc::new(GuestMemory::new(&opts.mem_layout)?);
        mem.alloc(4096, 4096);
        let driver = VsockDriver::new(mem.clone(), opts.queue_size, opts.driver.clone())?;
        let setups = driver.vring_setups();
        let negotiated = handshake(&mut client, &mem, &setups)?;
        driver.kick_all();
        Ok(Vm {
            client,
            mem,
            driver,
            negotiated,
        })
    }

    /// QEMU-style VM with CID 3 on `socket`.
    pub fn qemu(socket: &Path) -> io::Result<Vm> {
        Self::start(socket, VmOptions::qemu())
    }

    pub fn crosvm(socket: &Path) -> io::Result<Vm> {
        Self::start(socket, VmOptions::crosvm())
    }

    /// Short default wait.
    pub fn t(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }
}
