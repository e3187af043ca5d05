//! `vsock-bench`: one driver, three subjects, one run.
//!
//! ```text
//! tests/bench/setup      # once: release plugin + vhost-device-vsock 0.3.0
//! cargo run --release -p vsock-plugin-tests --bin vsock-bench -- [--quick] [--rounds N]
//!     [--subjects plugin,reference,socketpair] [--figures g2h-4k,rtt-host-echo,...]
//! ```
//!
//! The benchmark process is the VMM and the guest: [`guest::Guest`] connects to the backend's
//! vhost-user socket, hands over memfd guest RAM and two split rings with eventfd kicks and calls
//! (QEMU's handshake, accepting whatever features/protocol features the backend offers) and runs
//! a virtio-vsock stream driver in userspace; the host side is ordinary Unix sockets (hybrid vsock:
//! `<uds>_<port>` listeners and `connect <port>` on `<uds>`). Subjects:
//!
//! 1. **plugin**: `target/release/vsock-plugin` (built by cargo if stale; `VSOCK_PLUGIN_BIN`
//!    overrides);
//! 2. **reference**: `vhost-device-vsock` 0.3.0 (`tests/bench/setup` installs it;
//!    `VSOCK_BENCH_REFERENCE` overrides);
//! 3. **socketpair**: the same bytes, in the same write sizes, over a Unix socketpair between two
//!    threads (latency: the same echo; setup: `connect()` + `close()` to a Unix listener). A
//!    hybrid-vsock device moves every byte through such a socket, so this is its ceiling.
//!
//! Each backend measurement starts a fresh backend process (`--guest-cid 3 --socket S --uds-path
//! U`, `RUST_LOG=warn`) and a fresh VM, so CPU and memory readings belong to that measurement
//! alone. Subjects are interleaved (all subjects for one figure, then the next figure; the subject
//! order rotates each round) and every figure is repeated `--rounds` times (default 3, `--quick`
//! 1 with smaller volumes); the table shows medians over rounds.
//!
//! # How each figure is measured
//!
//! - **Throughput** (g2h/h2g × 4 KiB/64 KiB writes): `Params::bytes` (1 GiB; quick 32 MiB) of a
//!   pseudo-random pattern. g2h: the guest sends one RW packet per write (split only where the
//!   peer's credit ends, as Linux does), header and payload in **one descriptor** (the Linux ≥ 6.2
//!   shape; `vhost-device-vsock` 0.3.0 / `virtio-vsock` 0.10 cannot take a payload split over
//!   several descriptors, so every subject gets the single-descriptor layout); a host thread
//!   reads with 256 KiB reads. h2g: a host thread writes with `write_all` of the write size; the
//!   guest keeps 128 rx buffers of 44 + 64 KiB posted. Time runs from the first byte sent to the
//!   last byte received; MB/s = 10^6 bytes/s. Both ends checksum the stream (a 4-lane 64-bit
//!   checksum plus the byte count; the sender's is precomputed from the pattern) and any
//!   mismatch fails the subject.
//! - **g2h 64 KiB, paged**: as g2h 64 KiB but the payload in 16 × 4 KiB descriptors (Linux 6.12
//!   nonlinear skbs). Not run against the reference, which rejects it
//!   (`DescriptorLengthTooSmall`, the connection stalls; real-guest-testing.md §9).
//! - **Round trip** (64 bytes): host echo — the guest sends 64 bytes, a host thread echoes them,
//!   timed in the guest from before queueing the packet to after the echo was read from the rx
//!   ring; guest echo — the host writes 64 bytes and the guest echoes, timed in the host thread
//!   around `write` + `read_exact`. 100 untimed round trips first, then `rtt_iters` (10,000;
//!   quick 1,000); p50 and p99 per round. The guest waits for interrupts (poll on the call eventfd).
//! - **Setup rate**: guest→host connects per second: REQUEST, wait for RESPONSE, then close as
//!   Linux's `close()` does (SHUTDOWN RCV|SEND without waiting; the device's RST is processed
//!   whenever it arrives), then the next connect; the clock stops when the last RST is in
//!   (`setup_conns`, 3,000; quick 500). A host thread accepts and holds the connections.
//! - **Sibling control round trip**: one backend process serving two VMs in one group (guest CIDs
//!   3 and 4, `--vm ...,groups=bench`); guest 4 (its own thread) accepts on a port, guest 3
//!   connects to it and resets the connection, `setup_conns` times after 100 untimed ones. Timed
//!   in guest 3 from the REQUEST sent to the RESPONSE read: two crossings of the sibling path,
//!   each with the backend's wake-ups on both VMs and an interrupt. This is the latency that
//!   decides races such as vsock_test's SHUT_RD check between two real guests.
//! - **Backend CPU s/GiB**: CPU time of the backend process before and after each throughput
//!   transfer, divided by GiB moved: `utime + stime` from `/proc/<pid>/stat` (all threads; 10 ms
//!   ticks, which is coarse for a 0.1 s transfer) and the nanosecond run time summed over
//!   `/proc/<pid>/task/*/schedstat`; the latter is used when both agree (no thread exited), the
//!   ticks otherwise; the system-time share comes from the ticks. Also CPU µs per connection
//!   (setup) and per round trip.
//! - **RSS with 1,000 connections**: after one warm connection, `VmRSS` is read; then 1,000
//!   guest→host connections are opened and held (host thread holds the accepted sockets) and
//!   `VmHWM` (peak), `VmRSS` and `RssAnon` of `/proc/<pid>/status` are read. Reported: peak
//!   RSS and the growth per connection.
//! - **Linux-pattern driver** (`--driver linux`; figures g2h-linux, h2g-linux,
//!   rtt-guest-echo-linux): the guest behaves as a real Linux 6.1 guest under QEMU/TCG was
//!   measured to (`real-guest --pattern`): a kick per packet, 4 KiB rx buffers, an interrupt per
//!   completion, rx passes of 32 with one CREDIT_UPDATE each, paced at 135 MB/s; see
//!   [`guest`]. Backend CPU per GiB there is dominated by per-wake-up costs, as on real guests.
//! - **Many VMs** (`vms-64`, baseline `vms-1`): one backend process serving 64 VMs streaming at
//!   once: per-VM MB/s spread and Jain's index, CPU/GiB against one VM, RSS and threads per VM;
//!   see [`many`].
//! - **Driver CPU**: the guest driver runs in the benchmark's main thread and the host
//!   application in its own thread; each measures its own CPU (`getrusage(RUSAGE_THREAD)`), so
//!   the report states how much of the 2 cores the measuring side itself used.
//! - **Interrupts / kicks per MiB**: the backend's call-eventfd writes (the eventfd counters the
//!   guest reads) and the guest's kicks (after EVENT_IDX suppression) during each throughput
//!   transfer: how often each side had to wake the other.
//!
//! Experiments: `VSOCK_BENCH_PLUGIN_ARGS` / `VSOCK_BENCH_REFERENCE_ARGS` add backend arguments
//! (e.g. `--tx-buffer-size 262144`); `--all-pairs` also runs the reference on the paged layout
//! (expected to fail). On a shared 2-core machine MB/s, p99 and the socketpair figures move by
//! ±20–50 % between rounds; backend CPU s/GiB and per-connection/per-round-trip CPU are the
//! steadier comparisons.
//!
//! The run prints a markdown table (medians, ratio to the reference, ratio to the socketpair
//! limit, the issue's target and whether it holds), a driver-CPU table and notes, and exits
//! non-zero if any subject failed to move the bytes intact (or a measurement failed).

pub mod figures;
pub mod guest;
pub mod many;
pub mod report;
pub mod runner;
pub mod subject;
pub mod util;

pub use runner::main;
