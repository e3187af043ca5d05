//! The many-VMs figure (`vms-64`, and `vms-1` as its baseline): one backend process serving `n`
//! VMs (`--vm` per VM, CIDs 3…, each in its own group), as Cuttlefish runs it. Every guest (its
//! own thread, the batch driver) connects to its own host listener and streams guest→host 64 KiB
//! writes; every host reader is its own thread. Once all are streaming (plus a 200 ms warm-up),
//! the bytes each host reader got are sampled at the start and the end of a window
//! (`Params::many_window`) in which all VMs move data at once, with the backend's CPU around it.
//! Then the guests stop and every reader must get exactly what its guest sent.
//!
//! Reported: total and per-VM MB/s (min / median / max over the VMs), Jain's fairness index
//! (Σx)² / (n·Σx²) (1 = all equal, 1/n = one VM takes everything), backend CPU s/GiB (compare
//! with `vms-1`), and the backend's VmRSS and thread count divided by `n` with every VM
//! connected and streaming.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::frontend::host_side::listen;

use super::figures::{Params, Sample};
use super::guest::{Guest, GuestOpts, Sink};
use super::subject::{Backend, Subject};
use super::util::{median, proc_status_kib, proc_threads, Pattern};

const PORT: u32 = 5000;
const T10: Duration = Duration::from_secs(10);
/// Bytes each guest sends per `send_stream` call between checks of the stop flag.
const CHUNK: u64 = 1 << 20;

/// Jain's fairness index of `x`: (Σx)² / (n·Σx²).
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let s2: f64 = x.iter().map(|v| v * v).sum();
    if s2 == 0.0 {
        return f64::NAN;
    }
    s * s / (x.len() as f64 * s2)
}

fn port_path(uds: &Path) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{PORT}"));
    PathBuf::from(s)
}

/// Per VM: bytes the host got so far, and what the guest sent in all (set when it stopped).
struct Counters {
    received: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    done: Vec<AtomicBool>,
    /// The host reader has every byte: the VM may go (a VM that leaves drops what the device
    /// still holds for a slow host socket, as a real VM's end would).
    delivered: Vec<AtomicBool>,
}

fn reader(
    l: std::os::unix::net::UnixListener,
    i: usize,
    c: Arc<Counters>,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let (mut s, _): (UnixStream, _) = l.accept().map_err(|e| format!("vm {i} accept: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut last = Instant::now();
        // All in once the guest stopped and said how much it sent (its VM then goes away, so an
        // EOF may follow).
        let complete = |got: u64| {
            c.done[i].load(Ordering::Acquire) && got == c.sent[i].load(Ordering::Relaxed)
        };
        loop {
            let got = c.received[i].load(Ordering::Relaxed);
            if complete(got) {
                c.delivered[i].store(true, Ordering::Release);
                return Ok(());
            }
            if last.elapsed() > T10 {
                return Err(format!("vm {i}: host stalled after {got} bytes"));
            }
            match s.read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "vm {i}: EOF after {got} bytes (guest sent {}, done {})",
                        c.sent[i].load(Ordering::Relaxed),
                        c.done[i].load(Ordering::Acquire)
                    ))
                }
                Ok(n) => {
                    c.received[i].fetch_add(n as u64, Ordering::Relaxed);
                    last = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("vm {i}: host read: {e}")),
            }
        }
    })
}

fn guest(
    socket: PathBuf,
    i: usize,
    c: Arc<Counters>,
    go: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    pat: Arc<Pattern>,
    stall: Duration,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let opts = GuestOpts {
            cid: 3 + i as u64,
            ..GuestOpts::default()
        };
        let started = Guest::start(&socket, opts).and_then(|mut g| {
            g.connect(PORT, Sink::Buffer(Vec::new()), T10)
                .map(|k| (g, k))
        });
        // Everyone meets at the barrier, failed or not, so the main thread never hangs.
        go.wait();
        let (mut g, key) = started.map_err(|e| format!("vm {i} start: {e}"))?;
        let mut sent = 0u64;
        let r = (|| {
            while !stop.load(Ordering::Relaxed) {
                let base = sent;
                g.send_stream(key, CHUNK, 65536, stall, |off, n| pat.at(base + off, n))?;
                sent += CHUNK;
            }
            g.drain_tx(T10)
        })();
        c.sent[i].store(sent, Ordering::Relaxed);
        c.done[i].store(true, Ordering::Release);
        r.map_err(|e| format!("vm {i} send after {sent} bytes: {e}"))?;
        let deadline = Instant::now() + T10;
        while !c.delivered[i].load(Ordering::Acquire) && Instant::now() < deadline {
            g.poll().map_err(|e| format!("vm {i}: {e}"))?;
            g.wait(Duration::from_millis(5));
        }
        Ok(())
    })
}

/// One measurement of `n` VMs on `subject`.
pub fn vs_many_vms(
    subject: Subject,
    bin: &Path,
    n: usize,
    p: &Params,
    pat: &Arc<Pattern>,
) -> Result<Sample, String> {
    let mut be = Backend::start_many(subject, bin, n).map_err(|e| format!("start: {e}"))?;
    let c = Arc::new(Counters {
        received: (0..n).map(|_| AtomicU64::new(0)).collect(),
        sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        done: (0..n).map(|_| AtomicBool::new(false)).collect(),
        delivered: (0..n).map(|_| AtomicBool::new(false)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Barrier::new(n + 1));
    let mut readers = Vec::new();
    let mut guests = Vec::new();
    for (i, (socket, uds)) in be.vms.clone().into_iter().enumerate() {
        readers.push(reader(listen(&port_path(&uds)), i, c.clone()));
        guests.push(guest(
            socket,
            i,
            c.clone(),
            go.clone(),
            stop.clone(),
            pat.clone(),
            p.stall,
        ));
    }
    go.wait();
    std::thread::sleep(Duration::from_millis(200));
    let snap = || -> Vec<u64> {
        c.received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect()
    };
    let (r0, b0, t0) = (snap(), be.cpu(), Instant::now());
    std::thread::sleep(p.many_window);
    let (r1, b1, secs) = (snap(), be.cpu(), t0.elapsed().as_secs_f64());
    let pid = be.pid();
    let rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64;
    let threads = proc_threads(pid).unwrap_or(0) as f64;
    stop.store(true, Ordering::Relaxed);
    let mut errors: Vec<String> = guests
        .into_iter()
        .chain(readers)
        .filter_map(|h| match h.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("a thread panicked".into()),
        })
        .collect();
    if !be.alive() {
        errors.push(format!("backend died: {}", be.log_tail(1500)));
    }
    if !errors.is_empty() {
        errors.truncate(4);
        return Err(errors.join("; "));
    }
    let mbps: Vec<f64> = r0
        .iter()
        .zip(&r1)
        .map(|(a, b)| (b - a) as f64 / secs / 1e6)
        .collect();
    let bytes: u64 = r0.iter().zip(&r1).map(|(a, b)| b - a).sum();
    let mut m = Sample::new();
    m.insert("mbps", bytes as f64 / secs / 1e6);
    m.insert(
        "mbps_vm_min",
        mbps.iter().cloned().fold(f64::INFINITY, f64::min),
    );
    m.insert("mbps_vm_median", median(&mbps));
    m.insert("mbps_vm_max", mbps.iter().cloned().fold(0.0, f64::max));
    m.insert("jain", jain(&mbps));
    m.insert(
        "backend_cpu_gib",
        b1.since(&b0).total() / (bytes.max(1) as f64 / (1u64 << 30) as f64),
    );
    m.insert("rss_per_vm_kib", rss_kib / n as f64);
    m.insert("threads_per_vm", threads / n as f64);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_for_equal_shares_and_one_over_n_for_a_single_taker() {
        assert!((jain(&[5.0, 5.0, 5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[8.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!((jain(&[1.0, 2.0]) - 0.9).abs() < 1e-12);
    }
}
