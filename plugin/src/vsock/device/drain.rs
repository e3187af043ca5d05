//! Ending the device when the process is asked to stop (SIGTERM/SIGINT): no new host clients,
//! the guest → host bytes already accepted from the guest written out within a bound, then every
//! connection closed.
//!
//! What the host peer of a connection sees: every byte the guest handed to the device and the
//! device acknowledged, then EOF, if the host read them within the bound. If it did not, the
//! bytes are lost and the plugin logs how many. AF_UNIX has no RST (SO_LINGER is ignored): the
//! peer sees ECONNRESET instead of EOF only when it had sent bytes the plugin had not read, which
//! the device ensures by not reading host sockets any more once draining starts.

use std::os::fd::AsRawFd;
use std::time::Duration;

use super::VsockDevice;

impl VsockDevice {
    /// Stops taking host clients: the listener leaves the epoll set, waiting clients are closed
    /// (clients still in the kernel backlog see ECONNRESET when the listener closes).
    pub fn stop_accepting(&mut self) {
        self.interests.unwatch(self.hybrid.as_raw_fd());
        self.accept_paused_until = None;
        self.clients.clear();
    }

    /// Writes what the host sockets take of the buffered guest → host bytes (never blocks);
    /// returns the bytes still buffered. Connections whose host socket broke are closed.
    pub fn flush_for_exit(&mut self) -> usize {
        // (No tx batch is pending here: process_tx flushes its batch before it returns.)
        let mut left = 0;
        for slot in self.conns.slots_from(0) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.flush_to_host().is_err() {
                self.remove_conn(slot, "host socket failed while the plugin stops");
                continue;
            }
            conn.propagate_guest_shutdown();
            left += conn.queued_for_host();
        }
        left
    }

    /// Closes every connection; returns (connections closed, guest bytes never delivered).
    pub fn close_for_exit(&mut self) -> (usize, usize) {
        let mut lost = 0;
        let mut closed = 0;
        for slot in self.conns.slots_from(0) {
            if let Some(conn) = self.remove_conn(slot, "the plugin is stopping") {
                closed += 1;
                if conn.has_queued_for_host() {
                    log::warn!(
                        "connection {:?}: {} guest bytes not taken by the host peer before exit",
                        conn.key,
                        conn.queued_for_host()
                    );
                    lost += conn.queued_for_host();
                }
            }
        }
        self.control.clear();
        (closed, lost)
    }

    /// How long buffered bytes may take to drain at exit (the VM's shutdown-timeout-ms).
    pub fn drain_timeout(&self) -> Duration {
        self.cfg.shutdown_timeout
    }
}
