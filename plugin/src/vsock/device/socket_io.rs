//! Moving bytes between host sockets and guest buffers: vectored I/O straight from and into
//! guest memory (no copy), and whole SEQPACKET messages.

use std::io;
use std::os::fd::AsRawFd;

use vm_memory::GuestAddress;

use crate::iotlb::DeviceMemory;
use crate::virtqueue::chain::ChainBuffers;
use crate::virtqueue::guest_io;
use crate::vsock::connection::Connection;
use crate::vsock::packet::HEADER_SIZE;

/// Guest → host stream data that cannot go to the socket now (data queued ahead, or the socket
/// is full): copied into the connection's queue, flushed on the next EPOLLOUT.
pub(super) fn queue_stream(
    conn: &mut Connection,
    chain: &ChainBuffers,
    mem: &DeviceMemory,
    len: usize,
) -> io::Result<()> {
    let mut rest = vec![0u8; len];
    chain
        .readable
        .read_at(mem, HEADER_SIZE, &mut rest)
        .map_err(|e| io::Error::other(e.to_string()))?;
    conn.queue_to_host(rest);
    Ok(())
}

/// Host → guest stream data: one `readv` straight into the payload areas (after the header) of
/// `chains`, at most `caps[i]` bytes into chain `i`, in order.
pub(super) fn read_stream(
    conn: &mut Connection,
    chains: &[&ChainBuffers],
    caps: &[usize],
    mem: &DeviceMemory,
    ranges: &mut Vec<(GuestAddress, usize)>,
) -> io::Result<usize> {
    let Some(sock) = conn.host() else {
        return Ok(0);
    };
    ranges.clear();
    for (chain, &cap) in chains.iter().zip(caps) {
        chain
            .writable
            .ranges(HEADER_SIZE, cap, ranges)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    guest_io::recv_into_guest(sock.as_raw_fd(), mem, ranges)
}

/// Host → guest SEQPACKET: takes one whole message into the connection (sent as one or more RW
/// packets, EOM|EOR on the last). A message larger than our buffer is a host error (reset).
pub(super) fn read_host_message(conn: &mut Connection) -> io::Result<()> {
    let Some(sock) = conn.host() else {
        return Ok(());
    };
    let mut buf = vec![0u8; conn.credit().buf_alloc as usize];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            conn.note_read_drained();
            return Ok(());
        }
        return Err(e);
    }
    let n = n as usize;
    if n == 0 {
        conn.state.host_read_eof();
        return Ok(());
    }
    if n > buf.len() {
        return Err(io::Error::other(format!(
            "host message of {n} bytes exceeds the {}-byte buffer",
            buf.len()
        )));
    }
    conn.hold_message_for_guest(&buf[..n]);
    Ok(())
}
