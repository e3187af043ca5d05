//! `real-guest --measure`: backend CPU seconds per GiB moved in each direction, MB/s, and host-
//! initiated round trips, for one or more backends in interleaved rounds (reference note §6–8).
//! Per run: a fresh backend, one guest (`-smp 1`), `count` transfers of `mib` MiB guest→host and as
//! many host→guest (8-byte length header, then data; the receiver answers with a position-dependent
//! 64-bit sum, so half-close is not needed), then [`RTT_ITERS`] 64-byte round trips (the host
//! writes, the guest echoes). The backend's CPU (thread run time from
//! `/proc/<pid>/task/*/schedstat`, ns resolution; utime+stime from `/proc/<pid>/stat` when the two
//! disagree, e.g. a thread exited) is read around every transfer and around the round trips, so each direction and the round trips have their own CPU
//! figure (boot excluded). With several backends, the summary gives each one's ratio against
//! every other measured in the same run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::backend::{expand_single, Backend, VmSpec};
use super::host;
use super::pattern::{self, Pattern};
use super::proto::{fill_pattern, FastSum};
use super::qemu::{QemuConfig, Vm};
use super::util::{file_tail, indent};
use crate::bench::util::{proc_cpu as bench_proc_cpu, ProcCpu};

pub struct MeasureOptions {
    pub backends: Vec<String>,
    pub rounds: u32,
    pub count: u32,
    pub mib: u64,
    pub qemu: QemuConfig,
    pub dir: PathBuf,
    /// Print the driver pattern of each phase from the plugin's data-path trace
    /// ([`super::pattern`]).
    pub pattern: bool,
}

/// Host-initiated 64-byte round trips per run (the guest echoes).
pub const RTT_ITERS: usize = 2000;
const RTT_WARMUP: usize = 100;

/// One run of one backend.
#[derive(Clone, Debug)]
pub struct Run {
    pub cpu_s: f64,
    pub user_s: f64,
    pub gib: f64,
    pub g2h_mbps: Vec<f64>,
    pub h2g_mbps: Vec<f64>,
    pub wall_s: f64,
    /// Backend CPU seconds over the guest→host transfers only, and over host→guest only.
    pub g2h_cpu_s: f64,
    pub h2g_cpu_s: f64,
    /// Round-trip times (µs) and the backend CPU seconds over them.
    pub rtt_us: Vec<f64>,
    pub rtt_cpu_s: f64,
    /// Data-path pattern per phase (g2h, h2g, round trips), from the backend log.
    pub pattern: [Pattern; 3],
}

impl Run {
    pub fn cpu_per_gib(&self) -> f64 {
        self.cpu_s / self.gib
    }

    /// Backend CPU-s per GiB of one direction (half of the bytes moved went each way).
    pub fn g2h_cpu_per_gib(&self) -> f64 {
        self.g2h_cpu_s / (self.gib / 2.0)
    }

    pub fn h2g_cpu_per_gib(&self) -> f64 {
        self.h2g_cpu_s / (self.gib / 2.0)
    }

    pub fn rtt_p50_us(&self) -> f64 {
        median(&self.rtt_us)
    }

    pub fn rtt_cpu_us(&self) -> f64 {
        self.rtt_cpu_s * 1e6 / self.rtt_us.len().max(1) as f64
    }
}

/// The backend's CPU counters now: ticks (utime, stime) and the nanosecond run time of its
/// threads (`/proc/<pid>/task/*/schedstat`).
fn snap(pid: u32) -> Result<ProcCpu, String> {
    bench_proc_cpu(pid).ok_or_else(|| format!("/proc/{pid}/stat unreadable"))
}

/// CPU seconds between two snapshots: the schedstat run time (ns resolution; a 2,000-round-trip
/// window holds only a few 10 ms ticks) when it agrees with the ticks, else the ticks.
fn secs(a: &ProcCpu, b: &ProcCpu) -> f64 {
    b.since(a).total()
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

const BLOCK: usize = 256 * 1024;

fn block(seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    fill_pattern(seed, 0, &mut b);
    b
}

/// Guest → host: returns MB/s measured by the host sink (first to last byte).
fn g2h(vm: &mut Vm, uds: &Path, port: u32, bytes: u64, seed: u64) -> Result<f64, String> {
    let l = host::listen(uds, port)?;
    let sink = thread::spawn(move || -> Result<f64, String> {
        let mut s = host::accept(&l, Duration::from_secs(20))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let mut head = [0u8; 8];
        s.read_exact(&mut head)
            .map_err(|e| format!("header: {e}"))?;
        let len = u64::from_le_bytes(head);
        if len != bytes {
            return Err(format!("header says {len} bytes, expected {bytes}"));
        }
        let mut buf = vec![0u8; BLOCK];
        let mut sum = FastSum::new();
        let mut got = 0u64;
        let mut start = None;
        while got < len {
            let want = (len - got).min(BLOCK as u64) as usize;
            let n = s
                .read(&mut buf[..want])
                .map_err(|e| format!("read at {got}: {e}"))?;
            if n == 0 {
                return Err(format!("EOF after {got} of {len} bytes"));
            }
            start.get_or_insert_with(Instant::now);
            sum.update(&buf[..n]);
            got += n as u64;
        }
        let secs = start.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        s.write_all(&sum.finish().to_le_bytes())
            .map_err(|e| format!("sum: {e}"))?;
        Ok(len as f64 / secs.max(1e-9) / 1e6)
    });
    let guest = vm.run_op(
        "measure",
        "bulk_send",
        &format!("port={port} bytes={bytes} seed={seed}"),
        Duration::from_secs(300),
    );
    if guest.is_err() {
        let _ = std::os::unix::net::UnixStream::connect(host::port_path(uds, port));
    }
    let host = sink.join().unwrap_or_else(|_| Err("sink panicked".into()));
    match (host, guest) {
        (Ok(r), Ok(_)) => Ok(r),
        (h, g) => Err(format!("guest→host: host {h:?}; guest {g:?}")),
    }
}

/// Host → guest: MB/s from the connect to the guest's sum.
fn h2g(vm: &mut Vm, uds: &Path, port: u32, bytes: u64, seed: u64) -> Result<f64, String> {
    let id = vm
        .start_op("measure", "bulk_recv", &format!("port={port}"))
        .map_err(|e| e.to_string())?;
    vm.wait_ready(id, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    let data = block(seed);
    let host = (|| -> Result<f64, String> {
        let start = Instant::now();
        let mut s = host::connect_guest(uds, port, Duration::from_secs(10))?;
        s.set_write_timeout(Some(Duration::from_secs(60))).ok();
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.write_all(&bytes.to_le_bytes())
            .map_err(|e| format!("header: {e}"))?;
        let mut sum = FastSum::new();
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(BLOCK as u64) as usize;
            sum.update(&data[..n]);
            s.write_all(&data[..n])
                .map_err(|e| format!("write at {off}: {e}"))?;
            off += n as u64;
        }
        let mut back = [0u8; 8];
        s.read_exact(&mut back)
            .map_err(|e| format!("reading the guest's sum: {e}"))?;
        let secs = start.elapsed().as_secs_f64();
        let (mine, theirs) = (sum.finish(), u64::from_le_bytes(back));
        if mine != theirs {
            return Err(format!(
                "sum mismatch: sent {mine:016x}, guest {theirs:016x}"
            ));
        }
        Ok(bytes as f64 / secs / 1e6)
    })();
    let guest = vm.wait_result(id, Duration::from_secs(300));
    match (host, guest) {
        (Ok(r), Ok(_)) => Ok(r),
        (h, g) => Err(format!("host→guest: host {h:?}; guest {g:?}")),
    }
}

/// Host-initiated round trips: the guest echoes on `port`; the host writes 64 bytes and reads
/// them back, [`RTT_WARMUP`] untimed then [`RTT_ITERS`] timed. Returns the times (µs) and the
/// backend CPU seconds over the timed ones.
fn round_trips(vm: &mut Vm, uds: &Path, port: u32, pid: u32) -> Result<(Vec<f64>, f64), String> {
    let id = vm
        .start_op(
            "measure",
            "echo_server",
            &format!("port={port} conns=1 timeout_ms=20000"),
        )
        .map_err(|e| e.to_string())?;
    vm.wait_ready(id, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    let host = (|| -> Result<(Vec<f64>, f64), String> {
        let mut s = host::connect_guest(uds, port, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut us = Vec::with_capacity(RTT_ITERS);
        let mut c0 = ProcCpu::default();
        let mut back = [0u8; 64];
        for i in 0..RTT_WARMUP + RTT_ITERS {
            if i == RTT_WARMUP {
                c0 = snap(pid)?;
            }
            let mut msg = [(i % 251) as u8; 64];
            msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let t = Instant::now();
            s.write_all(&msg)
                .map_err(|e| format!("round trip {i}: {e}"))?;
            s.read_exact(&mut back)
                .map_err(|e| format!("round trip {i}: {e}"))?;
            let dt = t.elapsed();
            if back != msg {
                return Err(format!("round trip {i}: echo differs"));
            }
            if i >= RTT_WARMUP {
                us.push(dt.as_secs_f64() * 1e6);
            }
        }
        let cpu = secs(&c0, &snap(pid)?);
        Ok((us, cpu))
    })();
    let guest = vm.wait_result(id, Duration::from_secs(60));
    match (host, guest) {
        (Ok(r), Ok(_)) => Ok(r),
        (h, g) => Err(format!(
            "round trips: host {:?}; guest {g:?}",
            h.map(|_| ())
        )),
    }
}

fn one_run(o: &MeasureOptions, backend: &str, dir: &Path) -> Result<Run, String> {
    let _ = std::fs::create_dir_all(dir);
    let spec = VmSpec {
        cid: 3,
        socket: dir.join("vhost.sock"),
        uds: dir.join("vm.vsock"),
        groups: "default".into(),
    };
    let log = dir.join("backend.log");
    let mut b = Backend::start(expand_single(backend, &spec), &log, &[&spec.socket])?;
    let tails = |e: String| {
        format!(
            "{e}\n  backend log:\n{}",
            indent(&file_tail(&log, 15), "    | ")
        )
    };
    let mut vm = Vm::start(
        "measure",
        &o.qemu,
        &spec.socket,
        &dir.join("vm"),
        Duration::from_secs(90),
    )
    .map_err(tails)?;
    let bytes = o.mib * 1024 * 1024;
    let pid = b.pid();
    let s0 = snap(pid)?;
    let t0 = Instant::now();
    let mut run = Run {
        cpu_s: 0.0,
        user_s: 0.0,
        gib: 0.0,
        g2h_mbps: Vec::new(),
        h2g_mbps: Vec::new(),
        wall_s: 0.0,
        g2h_cpu_s: 0.0,
        h2g_cpu_s: 0.0,
        rtt_us: Vec::new(),
        rtt_cpu_s: 0.0,
        pattern: Default::default(),
    };
    // The log's length at phase boundaries: each phase's data-path lines are its own slice.
    let at = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let add = |p: &mut Pattern, from: u64, to: u64| {
        if o.pattern {
            let q = Pattern::read(&log, from, to);
            for (t, x) in [(&mut p.rx, q.rx), (&mut p.tx, q.tx)] {
                t.kicks += x.kicks;
                t.kick_reads += x.kick_reads;
                t.passes += x.passes;
                t.chains += x.chains;
                t.payload += x.payload;
                t.signals += x.signals;
            }
        }
    };
    for i in 0..o.count {
        let (a, la) = (snap(pid)?, at());
        let r = g2h(&mut vm, &spec.uds, 1235 + 2 * i, bytes, 100 + i as u64).map_err(tails)?;
        let (b, lb) = (snap(pid)?, at());
        add(&mut run.pattern[0], la, lb);
        run.g2h_mbps.push(r);
        run.g2h_cpu_s += secs(&a, &b);
        let r = h2g(&mut vm, &spec.uds, 5002 + 2 * i, bytes, 200 + i as u64).map_err(tails)?;
        run.h2g_cpu_s += secs(&b, &snap(pid)?);
        add(&mut run.pattern[1], lb, at());
        run.h2g_mbps.push(r);
    }
    let s1 = snap(pid)?;
    let lr = at();
    let (rtt, rtt_cpu) = round_trips(&mut vm, &spec.uds, 5100, pid).map_err(tails)?;
    add(&mut run.pattern[2], lr, at());
    run.rtt_us = rtt;
    run.rtt_cpu_s = rtt_cpu;
    run.wall_s = t0.elapsed().as_secs_f64();
    run.cpu_s = secs(&s0, &s1);
    run.user_s = s1.since(&s0).user;
    run.gib = (2 * o.count as u64 * bytes) as f64 / (1u64 << 30) as f64;
    vm.shutdown(Duration::from_secs(10));
    if !b.alive() {
        return Err(tails("backend exited".into()));
    }
    b.stop();
    Ok(run)
}

/// Short name of a backend template: its program's file name.
pub fn short_name(template: &str) -> String {
    let prog = template.split_whitespace().next().unwrap_or("?");
    Path::new(prog)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| prog.to_string())
}

/// Runs the interleaved rounds and prints one line per run and a summary. False on any failure.
pub fn main(o: &MeasureOptions) -> bool {
    let names: Vec<String> = o.backends.iter().map(|b| short_name(b)).collect();
    for (n, b) in names.iter().zip(&o.backends) {
        println!("measure: backend {n}: {b}");
    }
    println!(
        "measure: {} round(s), per run {} × {} MiB guest→host and {} × {} MiB host→guest, -smp 1, \
         CPU = backend thread run time from /proc/<pid>/task/*/schedstat (utime+stime if they disagree) over the transfers (boot excluded)",
        o.rounds, o.count, o.mib, o.count, o.mib
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); o.backends.len()];
    let mut ok = true;
    for round in 1..=o.rounds {
        for (i, b) in o.backends.iter().enumerate() {
            let dir = o.dir.join(format!("r{round}-b{i}"));
            match one_run(o, b, &dir) {
                Ok(r) => {
                    println!(
                        "measure: round {round} {:<20} CPU {:.2} s ({:.0} % user) for {:.2} GiB = {:.2} CPU-s/GiB \
                         (g2h {:.2}, h2g {:.2}); RTT p50 {:.0} µs, {:.1} CPU-µs/RTT; \
                         g2h MB/s {}; h2g MB/s {}; wall {:.1} s",
                        names[i],
                        r.cpu_s,
                        100.0 * r.user_s / r.cpu_s.max(1e-9),
                        r.gib,
                        r.cpu_per_gib(),
                        r.g2h_cpu_per_gib(),
                        r.h2g_cpu_per_gib(),
                        r.rtt_p50_us(),
                        r.rtt_cpu_us(),
                        r.g2h_mbps
                            .iter()
                            .map(|v| format!("{v:.1}"))
                            .collect::<Vec<_>>()
                            .join("/"),
                        r.h2g_mbps
                            .iter()
                            .map(|v| format!("{v:.1}"))
                            .collect::<Vec<_>>()
                            .join("/"),
                        r.wall_s
                    );
                    if o.pattern && r.pattern.iter().any(|p| !p.is_empty()) {
                        println!("{}", pattern::HEADER);
                        for (phase, p) in ["g2h bulk", "h2g bulk", "round trips"]
                            .iter()
                            .zip(&r.pattern)
                        {
                            for row in pattern::rows(phase, p) {
                                println!("{row}");
                            }
                        }
                    }
                    runs[i].push(r);
                }
                Err(e) => {
                    ok = false;
                    println!("measure: round {round} {} FAILED: {e}", names[i]);
                }
            }
        }
    }
    println!(
        "measure: summary (medians over runs; MB/s medians over all transfers, min–max; CPU = backend \
         schedstat run time)"
    );
    println!(
        "  {:<20} {:>4} {:>9} {:>9} {:>9} {:>18} {:>18} {:>9} {:>9} {:>11}",
        "backend",
        "runs",
        "g2h s/GiB",
        "h2g s/GiB",
        "all s/GiB",
        "g2h MB/s",
        "h2g MB/s",
        "RTT p50",
        "RTT p99",
        "CPU µs/RTT"
    );
    let figs: Vec<Figures> = runs.iter().map(|rs| Figures::of(rs)).collect();
    for (i, (rs, f)) in runs.iter().zip(&figs).enumerate() {
        let g: Vec<f64> = rs.iter().flat_map(|r| r.g2h_mbps.clone()).collect();
        let h: Vec<f64> = rs.iter().flat_map(|r| r.h2g_mbps.clone()).collect();
        let (glo, ghi) = range(&g);
        let (hlo, hhi) = range(&h);
        println!(
            "  {:<20} {:>4} {:>9.2} {:>9.2} {:>9.2} {:>18} {:>18} {:>9.0} {:>9.0} {:>11.1}",
            names[i],
            rs.len(),
            f.g2h_cpu_gib,
            f.h2g_cpu_gib,
            f.cpu_gib,
            format!("{:.1} ({glo:.1}–{ghi:.1})", f.g2h_mbps),
            format!("{:.1} ({hlo:.1}–{hhi:.1})", f.h2g_mbps),
            f.rtt_p50_us,
            f.rtt_p99_us,
            f.rtt_cpu_us,
        );
    }
    // Each backend against every other measured in this run (lower is better except MB/s).
    for i in 0..figs.len() {
        for j in 0..figs.len() {
            if i == j || runs[i].is_empty() || runs[j].is_empty() {
                continue;
            }
            let (a, b) = (&figs[i], &figs[j]);
            println!(
                "  {} / {}: g2h CPU/GiB {:.2}×, h2g CPU/GiB {:.2}×, g2h MB/s {:.2}×, h2g MB/s {:.2}×, \
                 RTT p50 {:.2}×, CPU per RTT {:.2}×",
                names[i],
                names[j],
                a.g2h_cpu_gib / b.g2h_cpu_gib,
                a.h2g_cpu_gib / b.h2g_cpu_gib,
                a.g2h_mbps / b.g2h_mbps,
                a.h2g_mbps / b.h2g_mbps,
                a.rtt_p50_us / b.rtt_p50_us,
                a.rtt_cpu_us / b.rtt_cpu_us,
            );
        }
    }
    ok
}

/// The medians the summary shows for one backend.
struct Figures {
    cpu_gib: f64,
    g2h_cpu_gib: f64,
    h2g_cpu_gib: f64,
    g2h_mbps: f64,
    h2g_mbps: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rtt_cpu_us: f64,
}

impl Figures {
    fn of(rs: &[Run]) -> Figures {
        let m = |f: &dyn Fn(&Run) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
        let all = |f: &dyn Fn(&Run) -> Vec<f64>| median(&rs.iter().flat_map(f).collect::<Vec<_>>());
        Figures {
            cpu_gib: m(&Run::cpu_per_gib),
            g2h_cpu_gib: m(&Run::g2h_cpu_per_gib),
            h2g_cpu_gib: m(&Run::h2g_cpu_per_gib),
            g2h_mbps: all(&|r| r.g2h_mbps.clone()),
            h2g_mbps: all(&|r| r.h2g_mbps.clone()),
            rtt_p50_us: m(&Run::rtt_p50_us),
            rtt_p99_us: m(&|r| quantile99(&r.rtt_us)),
            rtt_cpu_us: m(&Run::rtt_cpu_us),
        }
    }
}

fn quantile99(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}
