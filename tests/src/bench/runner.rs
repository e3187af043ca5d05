//! Command line, the interleaved rounds, and the final report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use super::figures::{measure, Figure, Params};
use super::report::{driver_table, raw, table, Results};
use super::subject::{backend_binary, binary_version, Subject};
use super::util::{loadavg, machine, raise_nofile, utc_now, Pattern};

const USAGE: &str = "\
usage: vsock-bench [--quick] [--rounds N] [--subjects plugin,reference,socketpair]
                   [--figures NAME,...] [--bytes MIB] [--driver batch|linux|both]

  --quick          1 round, 32 MiB per throughput figure, fewer round trips and connects
  --rounds N       rounds (default 3; 1 with --quick)
  --subjects L     comma-separated subset of plugin, reference, socketpair
  --figures L      comma-separated subset of: g2h-4k g2h-64k h2g-4k h2g-64k g2h-64k-paged
                   rtt-host-echo rtt-guest-echo setup sibling-connect rss
                   g2h-linux h2g-linux rtt-guest-echo-linux vms-1 vms-64
  --bytes MIB      bytes per throughput figure, in MiB
  --driver D       guest driver: batch (many packets per kick, 64 KiB rx buffers, unpaced),
                   linux (a real Linux 6.1 guest's pattern: a kick per packet, 4 KiB rx buffers,
                   interrupt per completion, paced at TCG speed; figures g2h-linux h2g-linux
                   rtt-guest-echo-linux), or both (default)
  --all-pairs      also run the reference on the paged layout, which it cannot take (it is
                   expected to stall and count as a failure)

Environment: VSOCK_PLUGIN_BIN (plugin binary), VSOCK_BENCH_REFERENCE (reference binary),
VSOCK_BENCH_RUST_LOG (backends' RUST_LOG, default warn), VSOCK_BENCH_PLUGIN_ARGS /
VSOCK_BENCH_REFERENCE_ARGS (extra backend arguments, e.g. \"--tx-buffer-size 262144\").";

struct Args {
    rounds: usize,
    quick: bool,
    subjects: Vec<Subject>,
    figures: Vec<Figure>,
    bytes: Option<u64>,
    all_pairs: bool,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        rounds: 0,
        quick: false,
        subjects: Subject::ALL.to_vec(),
        figures: Figure::all(),
        bytes: None,
        all_pairs: false,
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match name {
            "--quick" => a.quick = true,
            "--all-pairs" => a.all_pairs = true,
            "--rounds" => {
                a.rounds = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--rounds needs a positive number")?
            }
            "--subjects" => {
                a.subjects = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Subject::parse(s).ok_or(format!("unknown subject {s:?}")))
                    .collect::<Result<_, _>>()?;
                a.subjects.sort();
                a.subjects.dedup();
            }
            "--figures" => {
                let names = value()?;
                let all = Figure::all();
                a.figures = names
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        all.iter()
                            .copied()
                            .find(|f| f.name() == s)
                            .ok_or(format!("unknown figure {s:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--bytes" => {
                let mib: u64 = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--bytes needs a positive number of MiB")?;
                a.bytes = Some(mib << 20);
            }
            "--driver" => {
                let d = value()?;
                let keep: fn(&Figure) -> bool = match d.as_str() {
                    "batch" => |f| !f.linux_driver(),
                    "linux" => |f| f.linux_driver(),
                    "both" => |_| true,
                    _ => return Err(format!("--driver: batch, linux or both, not {d:?}")),
                };
                a.figures.retain(keep);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.subjects.is_empty() {
        return Err("no subjects".into());
    }
    if a.rounds == 0 {
        a.rounds = if a.quick { 1 } else { 3 };
    }
    Ok(a)
}

/// Entry point of the `vsock-bench` binary.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vsock-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    raise_nofile();
    let mut params = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(b) = args.bytes {
        params.bytes = b;
    }

    // Binaries.
    let mut bins: Vec<(Subject, Option<PathBuf>)> = Vec::new();
    for &s in &args.subjects {
        if !s.is_backend() {
            bins.push((s, None));
            continue;
        }
        match backend_binary(s) {
            Ok(p) => bins.push((s, Some(p))),
            Err(e) => {
                eprintln!("vsock-bench: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let bin_of = |s: Subject| {
        bins.iter()
            .find(|(t, _)| *t == s)
            .and_then(|(_, p)| p.clone())
    };

    let started = utc_now();
    let load0 = loadavg();
    let t_start = Instant::now();
    eprintln!(
        "vsock-bench: {} round(s), {} MiB per throughput figure, subjects {:?}",
        args.rounds,
        params.bytes >> 20,
        args.subjects.iter().map(|s| s.name()).collect::<Vec<_>>()
    );
    let pat = Arc::new(Pattern::new(0x5eed_1234_abcd_0001));
    let expect = pat.checksum(params.bytes);

    let mut res: Results = Results::new();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..args.rounds {
        for &fig in &args.figures {
            let mut order: Vec<Subject> = args.subjects.clone();
            let k = round % order.len();
            order.rotate_left(k);
            for s in order {
                if !(fig.applies(s) || args.all_pairs && s.is_backend()) {
                    continue;
                }
                let bin = bin_of(s);
                let t = Instant::now();
                let r = measure(fig, s, bin.as_deref(), &params, &pat, expect);
                let took = t.elapsed().as_secs_f64();
                match r {
                    Ok(m) => {
                        let head = m
                            .iter()
                            .filter(|(k, _)| {
                                matches!(
                                    **k,
                                    "mbps"
                                        | "p50_us"
                                        | "p99_us"
                                        | "p999_us"
                                        | "conn_per_s"
                                        | "hwm_kib"
                                        | "backend_cpu_gib"
                                        | "driver_cpu_gib"
                                )
                            })
                            .map(|(k, v)| format!("{k} {v:.2}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        eprintln!(
                            "round {}/{} {:<15} {:<10} {head} ({took:.1} s)",
                            round + 1,
                            args.rounds,
                            fig.name(),
                            s.name()
                        );
                        res.entry((fig, s)).or_default().push(m);
                    }
                    Err(e) => {
                        eprintln!(
                            "round {}/{} {:<15} {:<10} FAILED: {e}",
                            round + 1,
                            args.rounds,
                            fig.name(),
                            s.name()
                        );
                        failures.push(format!(
                            "round {} {} {}: {e}",
                            round + 1,
                            fig.name(),
                            s.name()
                        ));
                    }
                }
            }
        }
    }
    let load1 = loadavg();
    let wall = t_start.elapsed().as_secs_f64();

    // Report.
    let mut out = String::new();
    out.push_str("## vsock-bench\n\n");
    out.push_str(&format!("- date: {started}; run took {wall:.0} s\n"));
    out.push_str(&format!("- machine: {}\n", machine()));
    out.push_str(&format!(
        "- load average (1 min) at start / end: {load0} / {load1}\n"
    ));
    for (s, p) in &bins {
        if let Some(p) = p {
            let v = binary_version(p);
            let extra = super::subject::extra_args(*s);
            out.push_str(&format!(
                "- {}: {}{}{}\n",
                s.name(),
                p.display(),
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" ({v})")
                },
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(", extra arguments `{}`", extra.join(" "))
                }
            ));
        }
    }
    out.push_str(&format!(
        "- {} round(s), medians; {} MiB per throughput figure, {} timed round trips, {} connects, \
         {} connections for RSS\n\n",
        args.rounds,
        params.bytes >> 20,
        params.rtt_iters,
        params.setup_conns,
        params.rss_conns
    ));
    let (t, verdicts) = table(&res, &args.subjects);
    out.push_str(&t);
    out.push_str("\nMeasuring side (median per transfer):\n\n");
    out.push_str(&driver_table(&res, &args.subjects));
    out.push_str("\nNotes:\n");
    out.push_str(
        "- tx layout: header + payload in one descriptor for every subject (Linux ≥ 6.2 \
                  shape); the reference (virtio-vsock 0.10) cannot take payloads split over \
                  several descriptors, so the paged row is plugin-only.\n",
    );
    out.push_str(
        "- rx: 128 posted buffers of 44 + 64 KiB, single descriptor; queue size 256; \
                  guest buf_alloc 256 KiB; EVENT_IDX for kicks and interrupts.\n",
    );
    out.push_str(
        "- On a 2-core machine the three sides of a vsock transfer (guest driver, backend, \
                  host application) share the cores, so MB/s follows the *all sides* CPU s/GiB \
                  column, and a socketpair (two sides, one copy fewer) sets a ceiling the vsock \
                  path cannot reach at 70%. With a core to itself, a backend's throughput ratio \
                  would be the inverse of its backend CPU s/GiB ratio.\n",
    );
    out.push_str(
        "- Backend CPU: nanosecond schedstat run time of the backend's threads (10 ms \
                  `/proc/<pid>/stat` ticks when a thread exited); sys share from the ticks.\n",
    );
    if let Some(rss) = res
        .get(&(Figure::Rss, Subject::Plugin))
        .and_then(|v| v.first())
    {
        out.push_str(&format!(
            "- plugin with 1,000 connections: VmRSS {:.1} MiB (baseline {:.1} MiB), anon growth \
             {:.2} KiB/connection, {} threads\n",
            rss.get("rss_kib").copied().unwrap_or(0.0) / 1024.0,
            rss.get("rss_base_kib").copied().unwrap_or(0.0) / 1024.0,
            rss.get("anon_per_conn_kib").copied().unwrap_or(0.0),
            rss.get("threads").copied().unwrap_or(0.0)
        ));
    }
    for &s in &args.subjects {
        let cpu = |n| {
            res.get(&(Figure::ManyVms(n), s)).and_then(|v| {
                let x: Vec<f64> = v
                    .iter()
                    .filter_map(|m| m.get("backend_cpu_gib").copied())
                    .collect();
                (!x.is_empty()).then(|| super::util::median(&x))
            })
        };
        if let (Some(one), Some(many)) = (cpu(1), cpu(64)) {
            out.push_str(&format!(
                "- {}: backend CPU s/GiB with 64 VMs streaming at once is {:.2}× that of 1 VM \
                 ({many:.2} vs {one:.2})\n",
                s.name(),
                many / one
            ));
        }
    }
    out.push_str("\nPer-round values:\n\n");
    out.push_str(&raw(&res, &args.subjects, &args.figures));
    if !failures.is_empty() {
        out.push_str("\nFAILURES:\n");
        for f in &failures {
            out.push_str(&format!("- {f}\n"));
        }
    }
    let missed: Vec<&str> = verdicts
        .iter()
        .filter(|(_, m)| *m == Some(false))
        .map(|(l, _)| l.as_str())
        .collect();
    out.push_str(&format!(
        "\nTargets: {} of {} checked rows met{}\n",
        verdicts.iter().filter(|(_, m)| *m == Some(true)).count(),
        verdicts.iter().filter(|(_, m)| m.is_some()).count(),
        if missed.is_empty() {
            String::new()
        } else {
            format!("; missed: {}", missed.join("; "))
        }
    ));
    println!("{out}");
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vsock-bench: {} measurement(s) failed", failures.len());
        ExitCode::FAILURE
    }
}
