//! Credit-based flow control (virtio spec 5.10.6.3), one [`Credit`] per connection.
//!
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has consumed) in
//! every packet header. A sender may have at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes
//! in flight. Counters are free-running `u32`s; all arithmetic wraps.
//!
//! Direction names follow the virtqueues: *rx* is host → guest, *tx* is guest → host.
//! - host → guest: we count `rx_cnt` (payload bytes put on the rx queue) and obey the guest's
//!   `buf_alloc`/`fwd_cnt`; with no credit we stop reading the host socket (no spinning) and ask
//!   once with CREDIT_REQUEST.
//! - guest → host: we advertise `buf_alloc` = our per-connection buffer and count in `fwd_cnt`
//!   only bytes actually written to the host socket, so bytes parked in our buffer keep the
//!   guest's credit down and the buffer cannot overflow. A guest that sends beyond its credit is
//!   reset. A Linux guest never sends CREDIT_REQUEST when it runs out (its sendmsg just waits),
//!   so we send CREDIT_UPDATE unprompted; when is [`Credit::update_worthwhile`].

/// Credit the guest should still hold when a CREDIT_UPDATE leaves: two of its largest packets
/// (Linux: `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`, 64 KiB), one more than Linux's own threshold.
const UPDATE_HEADROOM: u32 = 2 * 64 * 1024;

#[derive(Debug, Clone)]
pub struct Credit {
    /// Our receive buffer for guest → host bytes.
    pub buf_alloc: u32,
    /// Guest → host bytes written to the host socket.
    pub fwd_cnt: u32,
    /// Guest → host bytes received from the guest.
    pub tx_received: u32,
    /// The `fwd_cnt` we last told the guest.
    pub fwd_cnt_sent: u32,
    /// Host → guest payload bytes sent.
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// A CREDIT_REQUEST was sent and the guest has given no credit since.
    requested: bool,
}

impl Credit {
    pub fn new(buf_alloc: u32) -> Credit {
        Credit {
            buf_alloc,
            fwd_cnt: 0,
            tx_received: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            requested: false,
        }
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_from_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_free() > 0 {
            self.requested = false;
        }
    }

    /// We are out of credit with data waiting: whether to send CREDIT_REQUEST now. True once,
    /// then not again until the guest's packets give credit.
    pub fn should_request(&mut self) -> bool {
        !std::mem::replace(&mut self.requested, true)
    }

    /// Bytes we may still send to the guest.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Accounts `len` guest → host bytes; false if the guest exceeded the credit we gave it.
    pub fn accept_from_peer(&mut self, len: u32) -> bool {
        let in_buffer = self.tx_received.wrapping_sub(self.fwd_cnt);
        if in_buffer as u64 + len as u64 > self.buf_alloc as u64 {
            return false;
        }
        self.tx_received = self.tx_received.wrapping_add(len);
        true
    }

    /// The guest's view of our free buffer space is low while we really have room: it may soon
    /// wait for a CREDIT_UPDATE.
    ///
    /// Linux's own receiver (`virtio_transport_stream_do_dequeue`) sends one once the bytes
    /// consumed since its last update leave less than one largest packet (64 KiB) of the
    /// buffer, i.e. when the sender is about to run dry; a guest sending 64 KiB packets then
    /// waits for the update once per buffer. (Its second trigger, "the receive queue is below
    /// SO_RCVLOWAT", would fire on every packet here: our buffer empties into the host socket at
    /// once.) We send it one packet earlier, while the guest still holds a full packet of credit
    /// to send while the update travels, and no later than half the buffer (small buffers): so a
    /// 256 KiB buffer gets one update per 192 KiB, a 1 MiB buffer one per 896 KiB.
    ///
    /// The window is the guest's, not ours alone: Linux (since the 2025 fix, in stable 6.1 too)
    /// sends at most `min(peer buf_alloc, its own buf_alloc)` unacknowledged, so a guest with a
    /// 256 KiB buffer stops at 256 KiB in flight even when we advertise 1 MiB; a threshold on
    /// our buffer alone would wait for bytes that never come.
    pub fn update_worthwhile(&self) -> bool {
        let guest_view_used = self.tx_received.wrapping_sub(self.fwd_cnt_sent);
        let really_used = self.tx_received.wrapping_sub(self.fwd_cnt);
        let window = self.guest_send_window();
        let guest_view_free = window.saturating_sub(guest_view_used);
        let low = (window / 2).min(UPDATE_HEADROOM);
        guest_view_free < low && really_used < guest_view_used
    }

    /// What the guest may have in flight to us: our buffer, capped by its own (its `buf_alloc`,
    /// once a packet told us; never zero, or no update would ever be due).
    fn guest_send_window(&self) -> u32 {
        match self.peer_buf_alloc {
            0 => self.buf_alloc,
            own => self.buf_alloc.min(own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_wraps() {
        let mut c = Credit::new(4096);
        c.update_from_peer(1000, u32::MAX - 10);
        c.rx_cnt = u32::MAX - 10;
        assert_eq!(c.peer_free(), 1000);
        c.rx_cnt = c.rx_cnt.wrapping_add(600);
        assert_eq!(c.peer_free(), 400);
        c.rx_cnt = c.rx_cnt.wrapping_add(400);
        assert_eq!(c.peer_free(), 0);
        // A guest shrinking buf_alloc below what is in flight gives zero, not a wrapped huge value.
        c.update_from_peer(10, u32::MAX - 10);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn our_buffer_cannot_overflow_and_updates_are_sent_when_useful() {
        let mut c = Credit::new(100);
        assert!(c.accept_from_peer(60));
        assert!(!c.update_worthwhile(), "nothing forwarded yet");
        assert!(!c.accept_from_peer(41));
        assert!(c.accept_from_peer(40));
        c.fwd_cnt = 100;
        assert!(c.update_worthwhile());
        c.fwd_cnt_sent = c.fwd_cnt;
        assert!(!c.update_worthwhile());
        assert!(c.accept_from_peer(100));
    }

    #[test]
    fn the_guest_may_fill_our_buffer_exactly_across_counter_wrap() {
        let mut c = Credit::new(100);
        // Counters near the top of u32: in-buffer arithmetic wraps.
        c.tx_received = u32::MAX - 30;
        c.fwd_cnt = u32::MAX - 30;
        assert!(c.accept_from_peer(100), "exactly buf_alloc fits");
        assert!(!c.accept_from_peer(1), "one byte more does not");
        c.fwd_cnt = c.fwd_cnt.wrapping_add(40);
        assert!(c.accept_from_peer(40));
        assert!(!c.accept_from_peer(1));
        assert!(c.accept_from_peer(0), "an empty packet always fits");
    }

    #[test]
    fn zero_buffers_give_no_credit_either_way() {
        let mut c = Credit::new(0);
        assert!(!c.accept_from_peer(1));
        assert!(c.accept_from_peer(0));
        assert!(
            !c.update_worthwhile(),
            "nothing to tell about an empty buffer"
        );
        // A guest advertising no buffer gets nothing from us.
        c.update_from_peer(0, 0);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn a_guest_fwd_cnt_ahead_of_what_we_sent_grants_no_extra_credit() {
        let mut c = Credit::new(4096);
        c.rx_cnt = 100;
        // A confused (or hostile) guest claims it consumed more than we ever sent: in flight
        // wraps to a huge value and the credit is zero, never more than its buffer.
        c.update_from_peer(1000, 200);
        assert_eq!(c.peer_free(), 0);
        c.update_from_peer(1000, 100);
        assert_eq!(c.peer_free(), 1000);
    }

    #[test]
    fn a_credit_update_is_worthwhile_only_below_half_and_with_real_room() {
        let mut c = Credit::new(1000);
        assert!(c.accept_from_peer(600));
        c.fwd_cnt = 600;
        // The guest believes 400 free (below half), 1000 are really free: tell it.
        assert!(c.update_worthwhile());
        c.fwd_cnt_sent = 600;
        assert!(!c.update_worthwhile());
        // Its view at exactly half is not low enough.
        assert!(c.accept_from_peer(500));
        c.fwd_cnt = 1100;
        assert!(!c.update_worthwhile());
    }

    #[test]
    fn a_large_buffer_is_updated_when_two_packets_of_credit_are_left() {
        let mut c = Credit::new(1 << 20);
        // The host reads at once: what the guest sent is forwarded before the next packet.
        let mut updates = 0;
        for _ in 0..64 {
            assert!(
                c.accept_from_peer(65536),
                "the guest never exceeds its credit"
            );
            c.fwd_cnt = c.tx_received;
            if c.update_worthwhile() {
                let guest_view_used = c.tx_received.wrapping_sub(c.fwd_cnt_sent);
                // One more 64 KiB packet still fits while the update travels.
                assert!((1 << 20) - guest_view_used >= 65536);
                c.fwd_cnt_sent = c.fwd_cnt;
                updates += 1;
            }
        }
        // 4 MiB in 64 KiB packets: one update per 14 packets (896 KiB); half the buffer gave 7.
        assert_eq!(updates, 4);
        // At 256 KiB the threshold is half the buffer: one per 3 packets, as before.
        let mut c = Credit::new(256 * 1024);
        let mut updates = 0;
        for _ in 0..12 {
            assert!(c.accept_from_peer(65536));
            c.fwd_cnt = c.tx_received;
            if c.update_worthwhile() {
                c.fwd_cnt_sent = c.fwd_cnt;
                updates += 1;
            }
        }
        assert_eq!(updates, 4);
    }

    #[test]
    fn the_guest_window_is_capped_by_its_own_buffer() {
        // We advertise 1 MiB, the guest's own buffer is 256 KiB: it stops at 256 KiB in flight,
        // so the update must be due by then (at 192 KiB here), not at 896 KiB or 512 KiB.
        let mut c = Credit::new(1 << 20);
        c.update_from_peer(256 * 1024, 0);
        for _ in 0..2 {
            assert!(c.accept_from_peer(65536));
            c.fwd_cnt = c.tx_received;
            assert!(!c.update_worthwhile());
        }
        assert!(c.accept_from_peer(65536));
        c.fwd_cnt = c.tx_received;
        assert!(c.update_worthwhile(), "192 KiB of a 256 KiB window used");
    }

    #[test]
    fn credit_is_requested_once_until_the_guest_gives_some() {
        let mut c = Credit::new(4096);
        c.update_from_peer(100, 0);
        c.rx_cnt = 100;
        assert_eq!(c.peer_free(), 0);
        assert!(c.should_request());
        assert!(!c.should_request(), "asked already");
        // A packet that gives no credit does not re-arm the request.
        c.update_from_peer(100, 0);
        assert!(!c.should_request());
        // One that does, does.
        c.update_from_peer(100, 50);
        c.rx_cnt = 150;
        assert!(c.should_request());
    }
}
