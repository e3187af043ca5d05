//! Moving bytes between host sockets and guest buffers: vectored I/O straight from and into
//! guest memory (no copy), and whole SEQPACKET messages.

use super::*;

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
    conn.tx_queue.push(rest);
    Ok(())
}

/// `writev` via `sendmsg(MSG_NOSIGNAL)`.
///
/// # Safety
/// Every iovec must describe readable memory that stays valid for the call.
pub(super) unsafe fn writev_nosignal(fd: i32, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: zeroed msghdr is valid; iov is valid per the caller.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: msg references valid iovecs.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Host → guest stream data: one `readv` straight into the payload areas (after the header) of
/// `chains`, at most `caps[i]` bytes into chain `i`, in order.
pub(super) fn read_stream(
    conn: &mut Connection,
    chains: &[&ChainBuffers],
    caps: &[usize],
    mem: &DeviceMemory,
    iov: &mut Vec<libc::iovec>,
) -> io::Result<usize> {
    let Some(sock) = conn.host.as_ref() else {
        return Ok(0);
    };
    iov.clear();
    let mut piece = Vec::new();
    for (chain, &cap) in chains.iter().zip(caps) {
        chain
            .writable
            .iovecs(mem, HEADER_SIZE, cap, Permissions::Write, &mut piece)
            .map_err(|e| io::Error::other(e.to_string()))?;
        iov.extend_from_slice(&piece);
    }
    loop {
        // SAFETY: the iovecs describe writable guest memory kept mapped by `mem` for this call.
        let n = unsafe { libc::readv(sock.as_raw_fd(), iov.as_ptr(), iov.len().min(1024) as i32) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Host → guest SEQPACKET: takes one whole message into `rx_pending` (sent as one or more RW
/// packets, EOM|EOR on the last). A message larger than our buffer is a host error (reset).
pub(super) fn read_host_message(conn: &mut Connection) -> io::Result<()> {
    let Some(sock) = conn.host.as_ref() else {
        return Ok(());
    };
    let mut buf = vec![0u8; conn.credit.buf_alloc as usize];
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
            conn.host_readable = false;
            return Ok(());
        }
        return Err(e);
    }
    let n = n as usize;
    if n == 0 {
        conn.host_eof = true;
        return Ok(());
    }
    if n > buf.len() {
        return Err(io::Error::other(format!(
            "host message of {n} bytes exceeds the {}-byte buffer",
            buf.len()
        )));
    }
    conn.rx_pending.extend(&buf[..n]);
    conn.rx_pending_eom = seq::EOM | seq::EOR;
    Ok(())
}

/// The bytes of `iov` after the first `skip`, copied out.
///
/// # Safety
/// Every iovec must describe readable memory that is valid for the call.
pub(super) unsafe fn copy_from_iovecs(iov: &[libc::iovec], mut skip: usize) -> Vec<u8> {
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let mut out = Vec::with_capacity(total.saturating_sub(skip));
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        // SAFETY: per the function's contract, iov_base..iov_base+iov_len is readable.
        let bytes = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
        out.extend_from_slice(&bytes[skip..]);
        skip = 0;
    }
    out
}
