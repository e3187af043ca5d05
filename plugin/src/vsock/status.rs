//! What the device tells the rest of the plugin about itself: connection keys, the phase of a
//! connection, per-connection snapshots and counters.
//!
//! A leaf: it imports nothing from the plugin, so the control plane (`control`), the host-side
//! routing hooks (`host::route`) and the worker use these types without depending on the device.

use std::time::Instant;

/// Key of a connection within one VM: (host-side port, guest-side port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

/// The phase of a connection, as status reports show it (the connection state machine in
/// `vsock::connection` says, besides, which directions are still open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host client asked for a guest port; REQUEST sent, waiting for RESPONSE.
    LocalInit {
        since: Instant,
    },
    /// Guest sent REQUEST; connecting to the host listener (its backlog was full) or waiting
    /// for the control plane's route.
    PeerInit {
        since: Instant,
    },
    Established,
    /// Waiting for our buffer to drain (guest closed) or for the guest's RST (host closed).
    Closing {
        since: Instant,
    },
}

/// One connection as status reports show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub key: ConnKey,
    pub state: State,
    pub host_initiated: bool,
    pub via_service: bool,
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

/// Counters, logged at reset and useful in tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub dropped_packets: u64,
    pub rst_sent: u64,
    pub connections_opened: u64,
}
