//! What the device contributes to a DEVICE_STATE snapshot, and what a restore changes.
//!
//! Rules (issue 14; the wire format is `crate::snapshot::format`):
//! - A save never changes the device: `cvd snapshot_take` suspends, saves and resumes the same
//!   process, and every connection and buffered byte must be there after the resume.
//! - A restore rolls the guest back to the saved moment in a process whose host sockets are not
//!   the saved ones, so: every current connection is closed (host peers see EOF), the guest is
//!   owed VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, and nothing else reaches the guest's rx queue before
//!   it (while the event queue runs, rx is held until the event is posted; it is queued even when
//!   no event buffer is posted yet, and goes out as soon as one is).
//! - Packets the guest still sends for a connection open at save time are dropped silently: the
//!   guest resets those sockets on TRANSPORT_RESET, and an RST for them would be a packet about a
//!   pre-snapshot connection. A guest REQUEST reusing such a key is a new connection.
//! - Sibling connections (VMs of the same group in this process) are reset at the peer and
//!   filtered both ways from then on: see `sibling_conns`.
//! - Local ports: the allocator continues [`RESTORE_PORT_SKIP`] ports after the saved position and
//!   never hands out a port a saved connection held, so a stale guest socket cannot be confused
//!   with a new host-initiated connection.

use std::collections::HashSet;

use super::*;

/// Ports skipped after the saved allocator position on restore: connections closed shortly
/// before the save may still have guest sockets lingering on those ports.
pub const RESTORE_PORT_SKIP: u32 = 4096;

/// One connection open at save time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SavedConn {
    pub guest_port: u32,
    pub host_port: u32,
    pub host_initiated: bool,
}

/// The device's part of a saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    pub next_local_port: u32,
    pub transport_reset_owed: bool,
    pub generation: u64,
    pub connections: Vec<SavedConn>,
}

/// What a restore left behind in the device.
#[derive(Debug, Default)]
pub struct Restored {
    /// Restores this device's state has been through (0: never restored).
    pub generation: u64,
    /// Keys of connections open at save time.
    stale: HashSet<ConnKey>,
    /// Host ports the saved connections held.
    stale_ports: HashSet<u32>,
    /// rx waits for the restore's TRANSPORT_RESET.
    hold_rx: bool,
}

impl Restored {
    pub fn is_stale(&self, key: &ConnKey) -> bool {
        self.stale.contains(key)
    }

    pub fn holds_port(&self, port: u32) -> bool {
        self.stale_ports.contains(&port)
    }

    /// A new connection took this key: it is no longer a pre-snapshot one.
    pub fn forget(&mut self, key: &ConnKey) {
        self.stale.remove(key);
    }

    /// Whether rx must wait (a restore's TRANSPORT_RESET not yet posted).
    pub fn rx_held(&self) -> bool {
        self.hold_rx
    }

    /// The TRANSPORT_RESET went out: rx may flow.
    pub fn reset_delivered(&mut self) {
        self.hold_rx = false;
    }
}

impl VsockDevice {
    /// The device's part of a snapshot (the device is not changed).
    pub fn export_state(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            next_local_port: self.next_local_port,
            transport_reset_owed: self.transport_reset_pending,
            generation: self.restored.generation,
            connections: self
                .conns
                .iter()
                .map(|c| SavedConn {
                    guest_port: c.key.guest_port,
                    host_port: c.key.host_port,
                    host_initiated: c.host_initiated(),
                })
                .collect(),
        }
    }

    /// Applies a loaded (already validated) snapshot: see the module rules.
    pub fn restore_state(&mut self, s: &DeviceSnapshot) {
        // A load into a running device (crosvm restoring in place) also ends the connections
        // open now; they count as pre-snapshot too: the guest may still hold a socket for one
        // (the snapshot had it) or not (opened after the save), and in neither case may a packet
        // about it reach the restored guest.
        let pre: Vec<SavedConn> = s
            .connections
            .iter()
            .copied()
            .chain(self.export_state().connections)
            .collect();
        self.reset();
        self.reset_sibling_conns();
        self.transport_reset_pending = true;
        self.next_local_port = skip_ports(s.next_local_port, RESTORE_PORT_SKIP);
        self.restored = Restored {
            generation: s.generation.saturating_add(1),
            stale: pre
                .iter()
                .map(|c| ConnKey {
                    host_port: c.host_port,
                    guest_port: c.guest_port,
                })
                .collect(),
            stale_ports: pre
                .iter()
                .filter(|c| c.host_initiated)
                .map(|c| c.host_port)
                .collect(),
            hold_rx: true,
        };
        log::info!(
            "guest {}: device state restored (generation {}, {} pre-snapshot connection(s) to \
             drop, local ports from {}); TRANSPORT_RESET owed before any rx packet",
            self.cfg.guest_cid,
            self.restored.generation,
            self.restored.stale.len(),
            self.next_local_port
        );
    }

    /// Restores this device's state has been through.
    pub fn generation(&self) -> u64 {
        self.restored.generation
    }
}

/// `pos + skip` inside the local port range (wrapping); 0 or out of range means the start.
fn skip_ports(pos: u32, skip: u32) -> u32 {
    let span = LOCAL_PORT_END - LOCAL_PORT_FIRST;
    let off = if (LOCAL_PORT_FIRST..LOCAL_PORT_END).contains(&pos) {
        pos - LOCAL_PORT_FIRST
    } else {
        0
    };
    LOCAL_PORT_FIRST + ((off as u64 + skip as u64) % span as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_skip_stays_in_range_and_wraps() {
        assert_eq!(skip_ports(0, 10), LOCAL_PORT_FIRST + 10);
        assert_eq!(skip_ports(LOCAL_PORT_FIRST + 5, 10), LOCAL_PORT_FIRST + 15);
        assert_eq!(skip_ports(LOCAL_PORT_END - 1, 2), LOCAL_PORT_FIRST + 1);
        assert_eq!(skip_ports(7, 0), LOCAL_PORT_FIRST);
    }
}
