//! One measurement of one figure on one subject. Backend subjects get a fresh backend process and
//! a fresh VM per measurement; the socketpair subject moves the same bytes between two threads.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::frontend::host_side::{hybrid_connect_raw, listen, read_line};
use crate::frontend::split_queue::wait_fd;

use super::guest::{Guest, GuestOpts, Sink, State, TxShape};
use super::subject::{Backend, Subject};
use super::util::{proc_status_kib, proc_threads, quantile, thread_cpu, Pattern, Sum64};

const GIB: f64 = (1u64 << 30) as f64;
const PORT: u32 = 5000;
const T5: Duration = Duration::from_secs(5);

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Bytes per throughput measurement.
    pub bytes: u64,
    /// Timed 64-byte round trips per latency measurement (after 100 untimed ones).
    pub rtt_iters: usize,
    /// Sequential connects per setup-rate measurement.
    pub setup_conns: usize,
    /// Connections held open for the RSS figure.
    pub rss_conns: usize,
    /// A transfer that makes no progress for this long fails.
    pub stall: Duration,
    /// The window in which all VMs of a many-VMs figure stream at once.
    pub many_window: Duration,
}

impl Params {
    pub fn full() -> Self {
        Params {
            bytes: 1 << 30,
            rtt_iters: 10_000,
            setup_conns: 3000,
            rss_conns: 1000,
            stall: Duration::from_secs(10),
            many_window: Duration::from_secs(3),
        }
    }

    pub fn quick() -> Self {
        Params {
            bytes: 32 << 20,
            rtt_iters: 1000,
            setup_conns: 500,
            rss_conns: 1000,
            stall: Duration::from_secs(10),
            many_window: Duration::from_secs(1),
        }
    }
}

/// The figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Figure {
    /// Guest → host, writes of this many bytes.
    G2h(usize),
    /// Host → guest, writes of this many bytes.
    H2g(usize),
    /// Guest → host 64 KiB writes with the payload in 4 KiB descriptors (Linux 6.12).
    G2hPaged,
    /// Guest → host 64 KiB writes through IOTLB translation (warm IOTLB), plugin only.
    G2hIotlb,
    /// Host → guest 64 KiB writes through IOTLB translation (warm IOTLB), plugin only.
    H2gIotlb,
    /// 64-byte round trip, guest sends, host echoes.
    RttHostEcho,
    /// 64-byte round trip, host sends, guest echoes.
    RttGuestEcho,
    /// Guest → host connects per second (connect, RESPONSE, close).
    Setup,
    /// Sibling control-packet round trip: guest 3 connects to guest 4 in the same backend
    /// (REQUEST and RESPONSE each cross the sibling path once), then resets the connection.
    SiblingConnect,
    /// Backend memory with 1,000 open connections.
    Rss,
    /// Guest → host bulk, 64 KiB writes, with the Linux-pattern driver ([`Driver::Linux`]).
    G2hLinux,
    /// Host → guest bulk, 64 KiB host writes, Linux-pattern driver.
    H2gLinux,
    /// 64-byte round trip, host sends, guest echoes, Linux-pattern driver.
    RttGuestEchoLinux,
    /// One backend process serving this many VMs, all streaming guest→host at once
    /// ([`super::many`]).
    ManyVms(usize),
}

impl Figure {
    pub fn all() -> Vec<Figure> {
        vec![
            Figure::G2h(4096),
            Figure::G2h(65536),
            Figure::H2g(4096),
            Figure::H2g(65536),
            Figure::G2hPaged,
            Figure::G2hIotlb,
            Figure::H2gIotlb,
            Figure::RttHostEcho,
            Figure::RttGuestEcho,
            Figure::Setup,
            Figure::SiblingConnect,
            Figure::Rss,
            Figure::G2hLinux,
            Figure::H2gLinux,
            Figure::RttGuestEchoLinux,
            Figure::ManyVms(1),
            Figure::ManyVms(64),
        ]
    }

    /// Whether the figure uses the Linux-pattern guest driver (`--driver linux`).
    pub fn linux_driver(self) -> bool {
        matches!(
            self,
            Figure::G2hLinux | Figure::H2gLinux | Figure::RttGuestEchoLinux
        )
    }

    pub fn name(self) -> String {
        match self {
            Figure::G2h(w) => format!("g2h-{}k", w / 1024),
            Figure::H2g(w) => format!("h2g-{}k", w / 1024),
            Figure::G2hPaged => "g2h-64k-paged".into(),
            Figure::G2hIotlb => "g2h-64k-iotlb".into(),
            Figure::H2gIotlb => "h2g-64k-iotlb".into(),
            Figure::RttHostEcho => "rtt-host-echo".into(),
            Figure::RttGuestEcho => "rtt-guest-echo".into(),
            Figure::Setup => "setup".into(),
            Figure::SiblingConnect => "sibling-connect".into(),
            Figure::Rss => "rss".into(),
            Figure::G2hLinux => "g2h-linux".into(),
            Figure::H2gLinux => "h2g-linux".into(),
            Figure::RttGuestEchoLinux => "rtt-guest-echo-linux".into(),
            Figure::ManyVms(n) => format!("vms-{n}"),
        }
    }

    /// Whether `s` is measured for this figure (the reference cannot take paged payloads; a
    /// socketpair has no backend memory).
    pub fn applies(self, s: Subject) -> bool {
        if matches!(self, Figure::G2hIotlb | Figure::H2gIotlb) {
            // Only the plugin translates through an IOTLB.
            return s == Subject::Plugin;
        }
        if self.linux_driver() || matches!(self, Figure::ManyVms(_)) {
            // A paced guest: a socketpair has nothing to compare with.
            return s.is_backend();
        }
        !matches!(
            (self, s),
            (Figure::G2hPaged, Subject::Reference)
                | (Figure::Rss | Figure::SiblingConnect, Subject::Socketpair)
        )
    }
}

/// Named values of one measurement (MB/s, µs, CPU-s/GiB, KiB...).
pub type Sample = BTreeMap<&'static str, f64>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Runs `fig` once on `s`.
pub fn measure(
    fig: Figure,
    s: Subject,
    bin: Option<&Path>,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    if s == Subject::Socketpair {
        return match fig {
            Figure::G2h(w) | Figure::H2g(w) => sp_throughput(w, p, pat, expect),
            Figure::G2hPaged | Figure::G2hIotlb | Figure::H2gIotlb => {
                sp_throughput(65536, p, pat, expect)
            }
            Figure::RttHostEcho | Figure::RttGuestEcho => sp_rtt(p),
            Figure::Setup => sp_setup(p),
            Figure::Rss
            | Figure::SiblingConnect
            | Figure::G2hLinux
            | Figure::H2gLinux
            | Figure::RttGuestEchoLinux
            | Figure::ManyVms(_) => Err("no backend".into()),
        };
    }
    let bin = bin.ok_or("no binary")?;
    if fig == Figure::SiblingConnect {
        return vs_sibling_connect(s, bin, p);
    }
    if let Figure::ManyVms(n) = fig {
        return super::many::vs_many_vms(s, bin, n, p, pat);
    }
    let iotlb = matches!(fig, Figure::G2hIotlb | Figure::H2gIotlb);
    let args: &[&str] = if iotlb { &["--iotlb", "required"] } else { &[] };
    let mut be = Backend::start_with(s, bin, args).map_err(err("start backend"))?;
    let r = match fig {
        Figure::G2h(w) => vs_g2h(&be, w, TxShape::Single, p, pat, expect),
        Figure::G2hPaged => vs_g2h(&be, 65536, TxShape::Paged, p, pat, expect),
        Figure::G2hIotlb => vs_g2h_with(
            &be,
            65536,
            GuestOpts {
                iotlb: true,
                ..Default::default()
            },
            p,
            pat,
            expect,
        ),
        Figure::H2g(w) => vs_h2g(&be, w, p, pat, expect),
        Figure::H2gIotlb => vs_h2g_with(
            &be,
            65536,
            GuestOpts {
                iotlb: true,
                ..Default::default()
            },
            p,
            pat,
            expect,
        ),
        Figure::RttHostEcho => vs_rtt_host_echo(&be, p),
        Figure::RttGuestEcho => vs_rtt_guest_echo(&be, GuestOpts::default(), p),
        Figure::G2hLinux => vs_g2h_with(&be, 65536, GuestOpts::linux(), p, pat, expect),
        Figure::H2gLinux => vs_h2g_with(&be, 65536, GuestOpts::linux(), p, pat, expect),
        Figure::RttGuestEchoLinux => vs_rtt_guest_echo(&be, GuestOpts::linux(), p),
        Figure::Setup => vs_setup(&be, p),
        Figure::SiblingConnect | Figure::ManyVms(_) => {
            Err("measured on several VMs (vs_sibling_connect, many::vs_many_vms)".into())
        }
        Figure::Rss => vs_rss(&be, p),
    };
    if !be.alive() {
        return Err(format!(
            "{} died during {}: {}",
            s.name(),
            fig.name(),
            be.log_tail(1500)
        ));
    }
    r.map_err(|e| {
        let tail = be.log_tail(800);
        if tail.trim().is_empty() {
            e
        } else {
            format!("{e}; backend log tail: {}", tail.trim())
        }
    })
}

fn join<T>(h: JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join().map_err(|_| "host thread panicked".to_string())?
}

/// Reads `total` bytes (checksumming them) from `s`; returns (checksum, end time, thread CPU).
fn read_all(mut s: UnixStream, total: u64, stall: Duration) -> Result<(u64, Instant, f64), String> {
    let c0 = thread_cpu();
    s.set_read_timeout(Some(stall)).map_err(|e| e.to_string())?;
    let mut h = Sum64::new();
    let mut buf = vec![0u8; 256 * 1024];
    while h.bytes() < total {
        let want = ((total - h.bytes()) as usize).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("host: EOF after {} of {total} bytes", h.bytes())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "host: read after {} of {total} bytes: {e}",
                    h.bytes()
                ))
            }
        }
    }
    let end = Instant::now();
    Ok((h.value(), end, thread_cpu() - c0))
}

/// Writes `total` pattern bytes in writes of `write`; returns (the stream, thread CPU).
fn write_all(
    mut s: UnixStream,
    total: u64,
    write: usize,
    pat: &Pattern,
    stall: Duration,
) -> Result<(UnixStream, f64), String> {
    let c0 = thread_cpu();
    s.set_write_timeout(Some(stall))
        .map_err(|e| e.to_string())?;
    let mut off = 0u64;
    while off < total {
        let n = ((total - off) as usize).min(write);
        s.write_all(pat.at(off, n))
            .map_err(|e| format!("host: write after {off} of {total} bytes: {e}"))?;
        off += n as u64;
    }
    Ok((s, thread_cpu() - c0))
}

fn throughput_sample(
    total: u64,
    secs: f64,
    driver_cpu: f64,
    host_cpu: f64,
    be: Option<&Backend>,
    b0: super::util::ProcCpu,
) -> Sample {
    let gib = total as f64 / GIB;
    let mut m = Sample::new();
    m.insert("mbps", total as f64 / secs / 1e6);
    m.insert("driver_cpu_gib", driver_cpu / gib);
    m.insert("host_cpu_gib", host_cpu / gib);
    if let Some(be) = be {
        let d = be.cpu().since(&b0);
        m.insert("backend_cpu_gib", d.total() / gib);
        m.insert("backend_sys_frac", d.sys_share());
        m.insert("backend_util", d.total() / secs);
    }
    m
}

/// Device notifications (interrupts) and driver kicks per MiB moved.
fn notif_sample(m: &mut Sample, g: &mut Guest, before: (u64, u64), total: u64) {
    let (irq, kicks) = g.notifications();
    let mib = total as f64 / (1 << 20) as f64;
    m.insert("irq_per_mib", (irq - before.0) as f64 / mib);
    m.insert("kick_per_mib", (kicks - before.1) as f64 / mib);
}

fn check(got: u64, expect: u64, what: &str) -> Result<(), String> {
    if got != expect {
        return Err(format!(
            "{what}: checksum mismatch (received {got:#018x}, sent {expect:#018x})"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------ vsock subjects

fn vs_g2h(
    be: &Backend,
    write: usize,
    shape: TxShape,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    let opts = GuestOpts {
        tx_shape: shape,
        ..Default::default()
    };
    vs_g2h_with(be, write, opts, p, pat, expect)
}

fn vs_g2h_with(
    be: &Backend,
    write: usize,
    opts: GuestOpts,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    let l = listen(&be.port_path(PORT));
    let mut g = Guest::start(&be.socket, opts).map_err(err("handshake"))?;
    let key = g
        .connect(PORT, Sink::Buffer(Vec::new()), T5)
        .map_err(err("guest connect"))?;
    let s = accept_host(&l, T5)?;
    let total = p.bytes;
    let stall = p.stall;
    let n0 = g.notifications();
    let b0 = be.cpu();
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || read_all(s, total, stall));
    let c0 = thread_cpu();
    let sent = g.send_stream(key, total, write, stall, |off, n| pat.at(off, n));
    let driver_cpu = thread_cpu() - c0;
    if let Err(e) = sent {
        drop(g);
        let _ = reader.join();
        return Err(format!("guest send: {e}"));
    }
    let (sum, end, host_cpu) = join(reader)?;
    let secs = (end - t0).as_secs_f64();
    let mut m = throughput_sample(total, secs, driver_cpu, host_cpu, Some(be), b0);
    check(sum, expect, "guest→host")?;
    g.drain_tx(T5).map_err(err("tx drain"))?;
    notif_sample(&mut m, &mut g, n0, total);
    Ok(m)
}

fn vs_h2g(
    be: &Backend,
    write: usize,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    vs_h2g_with(be, write, GuestOpts::default(), p, pat, expect)
}

fn vs_h2g_with(
    be: &Backend,
    write: usize,
    opts: GuestOpts,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    let mut g = Guest::start(&be.socket, opts).map_err(err("handshake"))?;
    let line = format!("connect {PORT}\n");
    let mut s = hybrid_connect_raw(&be.uds, &[line.as_bytes()]).map_err(err("host connect"))?;
    let key = g
        .accept(PORT, Sink::Checksum(Sum64::new()), T5)
        .map_err(err("guest accept"))?;
    let ok = read_line(&mut s, T5).map_err(err("OK line"))?;
    if !ok.starts_with("OK ") {
        return Err(format!("host connect: got {ok:?}"));
    }
    let total = p.bytes;
    let stall = p.stall;
    let n0 = g.notifications();
    let b0 = be.cpu();
    let t0 = Instant::now();
    let pat2 = pat.clone();
    let writer = std::thread::spawn(move || write_all(s, total, write, &pat2, stall));
    let c0 = thread_cpu();
    let r = g.recv_stream(key, total, stall);
    let end = Instant::now();
    let driver_cpu = thread_cpu() - c0;
    if let Err(e) = r {
        drop(g);
        let _ = writer.join();
        return Err(format!("guest receive: {e}"));
    }
    let (_s, host_cpu) = join(writer)?;
    let secs = (end - t0).as_secs_f64();
    let mut m = throughput_sample(total, secs, driver_cpu, host_cpu, Some(be), b0);
    notif_sample(&mut m, &mut g, n0, total);
    let got = match &g.conn(key).sink {
        Sink::Checksum(h) => h.value(),
        Sink::Buffer(_) => 0,
    };
    if g.conn(key).rx_total != total {
        return Err(format!(
            "host→guest: received {} bytes, sent {total}",
            g.conn(key).rx_total
        ));
    }
    check(got, expect, "host→guest")?;
    Ok(m)
}

fn rtt_sample(mut us: Vec<f64>, be: Option<&Backend>, b0: super::util::ProcCpu) -> Sample {
    let mut m = Sample::new();
    m.insert("p50_us", quantile(&us, 0.50));
    m.insert("p99_us", quantile(&us, 0.99));
    m.insert("p999_us", quantile(&us, 0.999));
    us.sort_by(f64::total_cmp);
    m.insert("min_us", us.first().copied().unwrap_or(f64::NAN));
    m.insert("max_us", us.last().copied().unwrap_or(f64::NAN));
    if let Some(be) = be {
        let d = be.cpu().since(&b0);
        m.insert("backend_cpu_us_per_rtt", d.total() * 1e6 / us.len() as f64);
    }
    m
}

const WARMUP: usize = 100;

fn msg(i: usize) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b[8..].fill((i % 251) as u8);
    b
}

fn vs_rtt_host_echo(be: &Backend, p: &Params) -> Result<Sample, String> {
    let l = listen(&be.port_path(PORT));
    let mut g = Guest::start(&be.socket, GuestOpts::default()).map_err(err("handshake"))?;
    let key = g
        .connect(PORT, Sink::Buffer(Vec::new()), T5)
        .map_err(err("guest connect"))?;
    let mut s = accept_host(&l, T5)?;
    let n = WARMUP + p.rtt_iters;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        s.set_read_timeout(Some(T5)).map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        for _ in 0..n {
            s.read_exact(&mut b).map_err(err("host echo read"))?;
            s.write_all(&b).map_err(err("host echo write"))?;
        }
        Ok(())
    });
    let mut us = Vec::with_capacity(p.rtt_iters);
    let mut b0 = be.cpu();
    for i in 0..n {
        if i == WARMUP {
            b0 = be.cpu();
        }
        let m = msg(i);
        let t = Instant::now();
        g.send_small(key, &m, T5).map_err(err("guest send"))?;
        let back = g.recv_small(key, 64, T5).map_err(err("guest receive"))?;
        let dt = t.elapsed();
        if back != m {
            return Err(format!("round trip {i}: echo differs"));
        }
        if i >= WARMUP {
            us.push(dt.as_secs_f64() * 1e6);
        }
    }
    let m = rtt_sample(us, Some(be), b0);
    join(echo)?;
    Ok(m)
}

fn vs_rtt_guest_echo(be: &Backend, opts: GuestOpts, p: &Params) -> Result<Sample, String> {
    let mut g = Guest::start(&be.socket, opts).map_err(err("handshake"))?;
    let line = format!("connect {PORT}\n");
    let mut s = hybrid_connect_raw(&be.uds, &[line.as_bytes()]).map_err(err("host connect"))?;
    let key = g
        .accept(PORT, Sink::Buffer(Vec::new()), T5)
        .map_err(err("guest accept"))?;
    let ok = read_line(&mut s, T5).map_err(err("OK line"))?;
    if !ok.starts_with("OK ") {
        return Err(format!("host connect: got {ok:?}"));
    }
    let n = WARMUP + p.rtt_iters;
    let host = std::thread::spawn(move || -> Result<Vec<f64>, String> {
        s.set_read_timeout(Some(T5)).map_err(|e| e.to_string())?;
        let mut us = Vec::with_capacity(n);
        let mut b = [0u8; 64];
        for i in 0..n {
            let m = msg(i);
            let t = Instant::now();
            s.write_all(&m).map_err(err("host write"))?;
            s.read_exact(&mut b).map_err(err("host read"))?;
            let dt = t.elapsed();
            if b != m {
                return Err(format!("round trip {i}: echo differs"));
            }
            if i >= WARMUP {
                us.push(dt.as_secs_f64() * 1e6);
            }
        }
        Ok(us)
    });
    let b0 = be.cpu();
    for _ in 0..n {
        let m = g.recv_small(key, 64, T5).map_err(err("guest receive"))?;
        g.send_small(key, &m, T5).map_err(err("guest send"))?;
    }
    let us = join(host)?;
    // The CPU window includes the warm-up here; scale per round trip over all of them.
    let mut m = rtt_sample(us, Some(be), b0);
    if let Some(v) = m.get_mut("backend_cpu_us_per_rtt") {
        *v *= p.rtt_iters as f64 / n as f64;
    }
    Ok(m)
}

fn accept_host(l: &UnixListener, timeout: Duration) -> Result<UnixStream, String> {
    if !wait_fd(l.as_raw_fd(), timeout) {
        return Err("host: no connection to accept".into());
    }
    let (s, _) = l.accept().map_err(err("host accept"))?;
    Ok(s)
}

/// Accepts `n` connections and holds them until the thread ends.
fn hold_accepts(l: UnixListener, n: usize) -> JoinHandle<Result<Vec<UnixStream>, String>> {
    std::thread::spawn(move || {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(accept_host(&l, T5)?);
        }
        Ok(v)
    })
}

fn vs_setup(be: &Backend, p: &Params) -> Result<Sample, String> {
    let l = listen(&be.port_path(PORT));
    let mut g = Guest::start(&be.socket, GuestOpts::default()).map_err(err("handshake"))?;
    let host = hold_accepts(l, p.setup_conns);
    let b0 = be.cpu();
    let t0 = Instant::now();
    for i in 0..p.setup_conns {
        let key = g
            .connect(PORT, Sink::Buffer(Vec::new()), T5)
            .map_err(|e| format!("connect {i}: {e}"))?;
        g.close_nowait(key).map_err(|e| format!("close {i}: {e}"))?;
    }
    g.poll_until(T5, "the last RSTs", |g| g.closing() == 0)
        .map_err(|e| format!("{e} ({} closes unanswered)", g.closing()))?;
    let secs = t0.elapsed().as_secs_f64();
    let d = be.cpu().since(&b0);
    let held = join(host)?;
    let mut m = Sample::new();
    m.insert("conn_per_s", p.setup_conns as f64 / secs);
    m.insert(
        "backend_cpu_us_per_conn",
        d.total() * 1e6 / p.setup_conns as f64,
    );
    drop(held);
    Ok(m)
}

/// [`Figure::SiblingConnect`]: guest 4 runs in its own thread (accepting, as Linux does on a
/// REQUEST to a listening port), guest 3 times each connect from REQUEST sent to RESPONSE read,
/// then resets the connection and connects again. Both guests wait for interrupts, so each round
/// trip includes the backend's wake-ups on both VMs: what a SHUTDOWN or RESPONSE between two
/// real guests costs. `setup_conns` round trips after `WARMUP`.
fn vs_sibling_connect(subject: Subject, bin: &Path, p: &Params) -> Result<Sample, String> {
    let be = Backend::start_siblings(subject, bin).map_err(err("start"))?;
    let n = WARMUP + p.setup_conns;
    let sock4 = be.sibling_socket.clone().ok_or("no sibling socket")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Result<(), String> {
        let opts = GuestOpts {
            cid: 4,
            peer_cid: 3,
            ..GuestOpts::default()
        };
        let mut g = Guest::start(&sock4, opts).map_err(err("guest 4 handshake"))?;
        let _ = ready_tx.send(());
        let mut last = None;
        for i in 0..n {
            let k = g
                .accept(PORT, Sink::Buffer(Vec::new()), T5)
                .map_err(|e| format!("guest 4 accept {i}: {e}"))?;
            last = Some(k);
        }
        // Stay up until guest 3's last RST: the last RESPONSE must leave before this VM goes.
        if let Some(k) = last {
            g.poll_until(T5, "the last RST", |g| g.conn(k).state == State::Reset)
                .map_err(err("guest 4"))?;
        }
        Ok(())
    });
    if ready_rx.recv_timeout(T5).is_err() {
        return Err(match join(server) {
            Err(e) => e,
            Ok(()) => "guest 4 never came up".to_string(),
        });
    }
    let opts = GuestOpts {
        cid: 3,
        peer_cid: 4,
        ..GuestOpts::default()
    };
    let mut g = Guest::start(&be.socket, opts).map_err(err("guest 3 handshake"))?;
    let mut us = Vec::with_capacity(p.setup_conns);
    let mut b0 = be.cpu();
    for i in 0..n {
        if i == WARMUP {
            b0 = be.cpu();
        }
        let t = Instant::now();
        let key = g
            .connect(PORT, Sink::Buffer(Vec::new()), T5)
            .map_err(|e| format!("guest 3 connect {i}: {e}"))?;
        let dt = t.elapsed();
        g.abort(key).map_err(err("reset"))?;
        if i >= WARMUP {
            us.push(dt.as_secs_f64() * 1e6);
        }
    }
    let m = rtt_sample(us, Some(&be), b0);
    join(server)?;
    let mut be = be;
    if !be.alive() {
        return Err(format!("{} died: {}", subject.name(), be.log_tail(2000)));
    }
    Ok(m)
}

fn vs_rss(be: &Backend, p: &Params) -> Result<Sample, String> {
    let l = listen(&be.port_path(PORT));
    let mut g = Guest::start(&be.socket, GuestOpts::default()).map_err(err("handshake"))?;
    // One warm connection so lazily built state exists in the baseline too.
    let host = hold_accepts(l, p.rss_conns + 1);
    let k = g
        .connect(PORT, Sink::Buffer(Vec::new()), T5)
        .map_err(err("connect"))?;
    g.send_small(k, &msg(0), T5).map_err(err("send"))?;
    g.drain_tx(T5).map_err(err("drain"))?;
    std::thread::sleep(Duration::from_millis(50));
    let pid = be.pid();
    let base = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64;
    let base_anon = proc_status_kib(pid, "RssAnon").unwrap_or(0) as f64;
    for i in 0..p.rss_conns {
        g.connect(PORT, Sink::Buffer(Vec::new()), T5)
            .map_err(|e| format!("connect {} of {}: {e}", i + 1, p.rss_conns))?;
    }
    let held = join(host)?;
    std::thread::sleep(Duration::from_millis(50));
    let mut m = Sample::new();
    let rss = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64;
    let anon = proc_status_kib(pid, "RssAnon").unwrap_or(0) as f64;
    m.insert("hwm_kib", proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64);
    m.insert("rss_kib", rss);
    m.insert("rss_base_kib", base);
    m.insert("rss_per_conn_kib", (rss - base) / p.rss_conns as f64);
    m.insert("anon_per_conn_kib", (anon - base_anon) / p.rss_conns as f64);
    m.insert("threads", proc_threads(pid).unwrap_or(0) as f64);
    drop(held);
    Ok(m)
}

// ------------------------------------------------------------------------------ socketpair

fn sp_throughput(
    write: usize,
    p: &Params,
    pat: &Arc<Pattern>,
    expect: u64,
) -> Result<Sample, String> {
    let (a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let total = p.bytes;
    let stall = p.stall;
    let pat2 = pat.clone();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || write_all(a, total, write, &pat2, stall));
    let (sum, end, reader_cpu) = read_all(b, total, stall)?;
    let (_a, writer_cpu) = join(writer)?;
    let secs = (end - t0).as_secs_f64();
    check(sum, expect, "socketpair")?;
    // "driver" = the receiving end here, "host" = the writing end.
    Ok(throughput_sample(
        total,
        secs,
        reader_cpu,
        writer_cpu,
        None,
        Default::default(),
    ))
}

fn sp_rtt(p: &Params) -> Result<Sample, String> {
    let (mut a, mut b) = UnixStream::pair().map_err(err("socketpair"))?;
    let n = WARMUP + p.rtt_iters;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        b.set_read_timeout(Some(T5)).map_err(|e| e.to_string())?;
        let mut m = [0u8; 64];
        for _ in 0..n {
            b.read_exact(&mut m).map_err(err("echo read"))?;
            b.write_all(&m).map_err(err("echo write"))?;
        }
        Ok(())
    });
    a.set_read_timeout(Some(T5)).map_err(|e| e.to_string())?;
    let mut us = Vec::with_capacity(p.rtt_iters);
    let mut back = [0u8; 64];
    for i in 0..n {
        let m = msg(i);
        let t = Instant::now();
        a.write_all(&m).map_err(err("write"))?;
        a.read_exact(&mut back).map_err(err("read"))?;
        let dt = t.elapsed();
        if back != m {
            return Err("echo differs".into());
        }
        if i >= WARMUP {
            us.push(dt.as_secs_f64() * 1e6);
        }
    }
    join(echo)?;
    Ok(rtt_sample(us, None, Default::default()))
}

fn sp_setup(p: &Params) -> Result<Sample, String> {
    let dir = crate::frontend::plugin_process::TempDir::new().map_err(err("tempdir"))?;
    let path = dir.join("l.sock");
    let l = listen(&path);
    let host = hold_accepts(l, p.setup_conns);
    let t0 = Instant::now();
    for i in 0..p.setup_conns {
        let s = UnixStream::connect(&path).map_err(|e| format!("connect {i}: {e}"))?;
        drop(s);
    }
    let secs = t0.elapsed().as_secs_f64();
    join(host)?;
    let mut m = Sample::new();
    m.insert("conn_per_s", p.setup_conns as f64 / secs);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::subject::backend_binary;

    /// Every figure once on the plugin and the socketpair with tiny volumes, so the benchmark
    /// keeps working as the plugin and the frontend change (the reference is not needed).
    #[test]
    fn every_figure_runs_on_the_plugin_and_the_socketpair() {
        let p = Params {
            bytes: 1 << 20,
            rtt_iters: 50,
            setup_conns: 30,
            rss_conns: 30,
            stall: Duration::from_secs(20),
            many_window: Duration::from_millis(300),
        };
        let pat = Arc::new(Pattern::new(9));
        let expect = pat.checksum(p.bytes);
        let bin = backend_binary(Subject::Plugin).expect("plugin binary");
        for fig in Figure::all() {
            for s in [Subject::Plugin, Subject::Socketpair] {
                if !fig.applies(s) {
                    continue;
                }
                let b = s.is_backend().then_some(bin.as_path());
                let m = measure(fig, s, b, &p, &pat, expect)
                    .unwrap_or_else(|e| panic!("{} on {}: {e}", fig.name(), s.name()));
                assert!(!m.is_empty(), "{} on {}", fig.name(), s.name());
                if fig == Figure::G2hLinux {
                    // The Linux-pattern driver kicks once per 64 KiB packet (16 per MiB; the batch
                    // driver queues up to its credit, 4 packets, per kick).
                    let k = m["kick_per_mib"];
                    assert!(k > 12.0, "g2h-linux kicked {k} times per MiB");
                }
                if let Figure::ManyVms(n) = fig {
                    assert!(m["jain"] > 0.0 && m["jain"] <= 1.0 + 1e-9, "{m:?}");
                    assert!(m["threads_per_vm"] * n as f64 >= n as f64, "{m:?}");
                }
            }
        }
    }
}
