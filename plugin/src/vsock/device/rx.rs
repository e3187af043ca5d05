//! The rx and event queues: control packets, sibling packets and host data to the guest.

use std::io;
use std::time::Instant;

use super::socket_io::{read_host_message, read_stream};
use super::{host_ends, Control, Rings, VsockDevice, DATAPATH_LOG, MAX_PKT_PAYLOAD, MAX_RX_GATHER};
use crate::iotlb::DeviceMemory;
use crate::virtio::{EVENT_QUEUE, EVENT_TRANSPORT_RESET, RX_QUEUE};
use crate::virtqueue::chain::ChainBuffers;
use crate::virtqueue::vring::Vring;
use crate::vsock::connection::Connection;
use crate::vsock::packet::{seq, Op, PacketHeader, HEADER_SIZE};
use crate::vsock::status::ConnKey;

impl VsockDevice {
    // ----- rx: device → guest ------------------------------------------------------------------

    /// Fills rx buffers with whatever is ready: control packets, sibling packets, host data.
    pub fn process_rx(&mut self, rings: &mut Rings) {
        let mem = rings.mem;
        if !rings.vrings[RX_QUEUE].is_ready() {
            return;
        }
        if self.restored.rx_held() && rings.vrings[EVENT_QUEUE].is_ready() {
            // After a restore the guest hears TRANSPORT_RESET first (see `snapshot`).
            return;
        }
        let mut used_any = false;
        let (mut chains, mut payload) = (0usize, 0usize);
        loop {
            if self.control.is_empty() && !self.sibling.has_packets() && self.rx_ready.is_empty() {
                break;
            }
            let Some(chain) = rings.vrings[RX_QUEUE].pop(mem) else {
                // Out of buffers: ask for a kick when the guest adds some. With EVENT_IDX the
                // guest may have added buffers before it saw the request: then go on now.
                if rings.vrings[RX_QUEUE].enable_notification(mem) {
                    continue;
                }
                break;
            };
            if chain.writable.len() < HEADER_SIZE {
                crate::log_limited!(
                    Warn,
                    "rx buffer of {} bytes cannot hold a header; returned unused",
                    chain.writable.len()
                );
                rings.vrings[RX_QUEUE].add_used(mem, chain.head, 0);
                used_any = true;
                continue;
            }
            let written = if let Some(c) = self.control.pop_front() {
                Some(self.write_control(c, &chain, mem))
            } else if let Some(packet) = self.pop_sibling() {
                self.write_sibling(packet, &chain, mem)
            } else {
                self.write_conn_data(&chain, mem, &mut rings.vrings[RX_QUEUE])
            };
            match written {
                Some(n) => {
                    rings.vrings[RX_QUEUE].add_used(mem, chain.head, n as u32);
                    payload += n.saturating_sub(HEADER_SIZE);
                    chains += 1;
                    for (head, len) in self.rx_extra_used.drain(..) {
                        rings.vrings[RX_QUEUE].add_used(mem, head, len);
                        payload += (len as usize).saturating_sub(HEADER_SIZE);
                        chains += 1;
                        self.stats.rx_packets += 1;
                    }
                    self.stats.rx_packets += 1;
                    used_any = true;
                }
                None => {
                    // Nothing was there after all (EAGAIN, EOF, no credit): give the buffer
                    // back. Control packets that came out of it (SHUTDOWN, CREDIT_REQUEST) go
                    // next; otherwise wait for the next event.
                    rings.vrings[RX_QUEUE].unpop();
                    if self.control.is_empty() {
                        break;
                    }
                }
            }
        }
        if used_any {
            let signalled = rings.vrings[RX_QUEUE].notify(mem);
            log::trace!(target: DATAPATH_LOG,
                "rx pass chains={chains} payload={payload} signal={}", signalled as u8);
        }
    }

    /// Puts `slot` in the rx ready queue if it has host data for the guest.
    pub(super) fn mark_rx(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.queue_rx_if_ready() {
                self.rx_ready.push_back(slot);
            }
        }
    }

    pub(super) fn write_control(
        &mut self,
        c: Control,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
    ) -> usize {
        let mut hdr = PacketHeader::new(c.ends, c.kind, c.op);
        hdr.set_flags(c.flags);
        let key = ConnKey {
            host_port: c.ends.src_port,
            guest_port: c.ends.dst_port,
        };
        if let Some(conn) = self.conns.slot_of(&key).and_then(|s| self.conns.get_mut(s)) {
            conn.stamp_credit(&mut hdr);
        }
        if chain.writable.write_at(mem, 0, &hdr.to_bytes()).is_err() {
            return 0;
        }
        HEADER_SIZE
    }

    /// Relays a sibling packet. One larger than the buffer (Linux posts 4 KiB rx buffers, a
    /// 6.12 guest sends 64 KiB packets) is split: the rest goes back to the front of the inbox
    /// with its own header, and SEQPACKET EOM/EOR stay on the last piece.
    pub(super) fn write_sibling(
        &mut self,
        mut packet: Vec<u8>,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
    ) -> Option<usize> {
        let room = chain.writable.len();
        if packet.len() > room {
            let mut raw = [0u8; HEADER_SIZE];
            raw.copy_from_slice(&packet[..HEADER_SIZE]);
            let hdr = PacketHeader::from_bytes(&raw);
            if hdr.op() != Some(Op::Rw) {
                // Header-only packets always fit a buffer that holds a header.
                return None;
            }
            let take = room - HEADER_SIZE;
            let mut first = hdr;
            first
                .set_len(take as u32)
                .set_flags(hdr.flags() & !(seq::EOM | seq::EOR));
            let mut rest_hdr = hdr;
            rest_hdr.set_len((packet.len() - HEADER_SIZE - take) as u32);
            let mut rest = rest_hdr.to_bytes().to_vec();
            rest.extend_from_slice(&packet[HEADER_SIZE + take..]);
            self.sibling.unpop(rest);
            packet.truncate(HEADER_SIZE + take);
            packet[..HEADER_SIZE].copy_from_slice(&first.to_bytes());
        }
        chain.writable.write_at(mem, 0, &packet).ok()?;
        Some(packet.len())
    }

    /// Puts host data of the next ready connection into `chain`. None: nothing was produced
    /// (the chain is given back). Connections without credit leave the queue after asking for
    /// credit once; the guest's next packet for them puts them back.
    pub(super) fn write_conn_data(
        &mut self,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        rx: &mut Vring,
    ) -> Option<usize> {
        while let Some(slot) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if !conn.take_rx_ready() {
                continue;
            }
            if conn.credit().peer_free() == 0 {
                if conn.should_request_credit() {
                    let (key, k) = (conn.key, conn.kind);
                    self.queue_control(self.ends(key), k, Op::CreditRequest, 0);
                }
                continue;
            }
            if let Some(n) = self.fill_from_conn(slot, chain, mem, rx) {
                self.mark_rx(slot);
                return Some(n);
            }
        }
        None
    }

    /// Fills `chain` (and, for a stream with more data, further rx chains in the same `readv`)
    /// from one connection. Returns the bytes used in `chain`; further chains are completed here.
    pub(super) fn fill_from_conn(
        &mut self,
        slot: u32,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        rx: &mut Vring,
    ) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        if !conn.has_rx_data() {
            return None;
        }
        let room = (chain.writable.len() - HEADER_SIZE)
            .min(MAX_PKT_PAYLOAD)
            .min(conn.credit().peer_free() as usize);
        if room == 0 {
            return None;
        }
        if !conn.has_pending_for_guest() && conn.is_seqpacket() {
            if let Err(e) = read_host_message(conn) {
                crate::log_limited!(Info, "host side of {:?} failed: {e}; reset", conn.key);
                self.reset_conn(slot);
                return None;
            }
        }
        let (n, flags) = if conn.has_pending_for_guest() {
            let (bytes, flags) = conn.take_pending_for_guest(room);
            chain.writable.write_at(mem, HEADER_SIZE, &bytes).ok()?;
            (bytes.len(), flags)
        } else if conn.is_seqpacket() {
            // read_host_message found nothing (EAGAIN or EOF).
            return self.after_empty_read(slot);
        } else {
            // Gather more rx buffers while the guest has credit: one readv fills them all (Linux
            // posts 4 KiB buffers, so a bulk transfer otherwise costs a syscall per 4 KiB).
            let mut extra: Vec<(ChainBuffers, usize)> = Vec::new();
            let mut credit_left = conn.credit().peer_free() as usize - room;
            while extra.len() < MAX_RX_GATHER && credit_left > 0 {
                let Some(c) = rx.pop(mem) else { break };
                if c.writable.len() <= HEADER_SIZE {
                    rx.unpop();
                    break;
                }
                let cap = (c.writable.len() - HEADER_SIZE)
                    .min(MAX_PKT_PAYLOAD)
                    .min(credit_left);
                credit_left -= cap;
                extra.push((c, cap));
            }
            let caps: Vec<usize> = std::iter::once(room)
                .chain(extra.iter().map(|e| e.1))
                .collect();
            let chains: Vec<&ChainBuffers> = std::iter::once(chain)
                .chain(extra.iter().map(|e| &e.0))
                .collect();
            let result = read_stream(conn, &chains, &caps, mem, &mut self.rx_ranges);
            let total: usize = caps.iter().sum();
            // Chains the read did not reach go back to the ring, last popped first.
            let reached = match &result {
                Ok(n) => caps
                    .iter()
                    .scan(0usize, |acc, c| {
                        let start = *acc;
                        *acc += c;
                        Some(start)
                    })
                    .take_while(|start| start < n)
                    .count()
                    .max(1),
                Err(_) => 1,
            };
            for _ in reached..chains.len() {
                rx.unpop();
            }
            match result {
                Ok(0) => {
                    conn.state.host_read_eof();
                    return self.after_empty_read(slot);
                }
                Ok(n) => {
                    // A stream read returns less than asked only when the socket is drained;
                    // the next arrival raises a new edge, so skip the EAGAIN read. Not after a
                    // hang-up was signalled: the EOF behind the data has no edge of its own.
                    if n < total && !conn.state.host_hang_up_seen() {
                        conn.note_read_drained();
                    }
                    // Headers of the extra chains now; they go to the used ring right after the
                    // first chain (byte order = used-ring order).
                    let mut left = n - n.min(room);
                    for (c, cap) in extra.iter().take(reached - 1) {
                        let share = left.min(*cap);
                        left -= share;
                        let used = write_rw_header(conn, self.cfg.guest_cid, c, mem, share)
                            .unwrap_or_else(|| {
                                log::error!(
                                    "rx buffer {} became unwritable after it was checked",
                                    c.head
                                );
                                0
                            });
                        self.rx_extra_used.push((c.head, used as u32));
                    }
                    (n.min(room), 0)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.note_read_drained();
                    return None;
                }
                Err(e) => {
                    crate::log_limited!(Info, "host socket of {:?} failed: {e}; reset", conn.key);
                    self.reset_conn(slot);
                    return None;
                }
            }
        };
        write_rw_header_flags(conn, self.cfg.guest_cid, chain, mem, n, flags)
    }

    /// The host socket had nothing: EAGAIN (wait for the next edge) or EOF (tell the guest).
    pub(super) fn after_empty_read(&mut self, slot: u32) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        conn.note_read_drained();
        if let Some(flags) = conn.state.eof_to_tell(Instant::now()) {
            let (key, k) = (conn.key, conn.kind);
            self.queue_control(self.ends(key), k, Op::Shutdown, flags);
        }
        None
    }

    /// Posts TRANSPORT_RESET on the event queue if one is owed.
    pub fn process_event(&mut self, rings: &mut Rings) {
        if !self.transport_reset_pending {
            return;
        }
        let mem = rings.mem;
        let Some(chain) = rings.vrings[EVENT_QUEUE].pop(mem) else {
            return;
        };
        let id = EVENT_TRANSPORT_RESET.to_le_bytes();
        if chain.writable.len() < id.len() || chain.writable.write_at(mem, 0, &id).is_err() {
            crate::log_limited!(
                Warn,
                "event buffer of {} bytes cannot hold an event",
                chain.writable.len()
            );
            rings.vrings[EVENT_QUEUE].add_used(mem, chain.head, 0);
        } else {
            rings.vrings[EVENT_QUEUE].add_used(mem, chain.head, id.len() as u32);
            self.transport_reset_pending = false;
            self.restored.reset_delivered();
            crate::log_limited!(
                Info,
                "posted TRANSPORT_RESET to guest {}",
                self.cfg.guest_cid
            );
        }
        rings.vrings[EVENT_QUEUE].notify(mem);
    }
}

/// Writes the RW header for `n` payload bytes already in `chain` and accounts them.
fn write_rw_header(
    conn: &mut Connection,
    guest_cid: u64,
    chain: &ChainBuffers,
    mem: &DeviceMemory,
    n: usize,
) -> Option<usize> {
    write_rw_header_flags(conn, guest_cid, chain, mem, n, 0)
}

fn write_rw_header_flags(
    conn: &mut Connection,
    guest_cid: u64,
    chain: &ChainBuffers,
    mem: &DeviceMemory,
    n: usize,
    flags: u32,
) -> Option<usize> {
    let mut hdr = PacketHeader::new(host_ends(guest_cid, conn.key), conn.kind, Op::Rw);
    hdr.set_len(n as u32).set_flags(flags);
    conn.stamp_credit(&mut hdr);
    conn.sent_to_guest(n);
    chain.writable.write_at(mem, 0, &hdr.to_bytes()).ok()?;
    Some(HEADER_SIZE + n)
}
