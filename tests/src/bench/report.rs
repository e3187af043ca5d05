//! The markdown report: medians per figure and subject, ratios, targets.

use std::collections::HashMap;
use std::fmt::Write;

use super::figures::{Figure, Sample};
use super::subject::Subject;
use super::util::median;

pub type Results = HashMap<(Figure, Subject), Vec<Sample>>;

#[derive(Clone, Copy)]
enum Target {
    None,
    /// plugin / reference must be ≥ x (higher is better) or ≤ x (lower is better).
    Ref(f64),
    /// plugin / reference ≥ a and plugin / socketpair ≥ b.
    RefAndLimit(f64, f64),
    /// A value to state, no threshold.
    Stated,
    /// The plugin's value must be ≥ this share of its own value for another figure
    /// (translated vs untranslated).
    OfPlugin(Figure, f64),
}

struct Row {
    label: &'static str,
    fig: Figure,
    key: &'static str,
    decimals: usize,
    higher_better: bool,
    target: Target,
    /// Scale applied to the stored value (e.g. KiB → MiB).
    scale: f64,
}

fn rows() -> Vec<Row> {
    let r = |label, fig, key, decimals, higher_better, target| Row {
        label,
        fig,
        key,
        decimals,
        higher_better,
        target,
        scale: 1.0,
    };
    let tp = Target::RefAndLimit(1.5, 0.7);
    let mut v = vec![
        r(
            "g2h throughput, 4 KiB writes (MB/s)",
            Figure::G2h(4096),
            "mbps",
            0,
            true,
            tp,
        ),
        r(
            "g2h throughput, 64 KiB writes (MB/s)",
            Figure::G2h(65536),
            "mbps",
            0,
            true,
            tp,
        ),
        r(
            "h2g throughput, 4 KiB writes (MB/s)",
            Figure::H2g(4096),
            "mbps",
            0,
            true,
            tp,
        ),
        r(
            "h2g throughput, 64 KiB writes (MB/s)",
            Figure::H2g(65536),
            "mbps",
            0,
            true,
            tp,
        ),
        r(
            "g2h throughput, 64 KiB writes, IOTLB translated, warm (MB/s)",
            Figure::G2hIotlb,
            "mbps",
            0,
            true,
            Target::OfPlugin(Figure::G2h(65536), 0.8),
        ),
        r(
            "h2g throughput, 64 KiB writes, IOTLB translated, warm (MB/s)",
            Figure::H2gIotlb,
            "mbps",
            0,
            true,
            Target::OfPlugin(Figure::H2g(65536), 0.8),
        ),
        r(
            "g2h throughput, 64 KiB writes in 4 KiB descriptors (MB/s)",
            Figure::G2hPaged,
            "mbps",
            0,
            true,
            Target::None,
        ),
        r(
            "g2h throughput, Linux-pattern driver, paced (MB/s)",
            Figure::G2hLinux,
            "mbps",
            0,
            true,
            Target::None,
        ),
        r(
            "h2g throughput, Linux-pattern driver, paced (MB/s)",
            Figure::H2gLinux,
            "mbps",
            0,
            true,
            Target::None,
        ),
        r(
            "round trip 64 B, host echo, p50 (µs)",
            Figure::RttHostEcho,
            "p50_us",
            1,
            false,
            Target::Ref(0.7),
        ),
        r(
            "round trip 64 B, host echo, p99 (µs)",
            Figure::RttHostEcho,
            "p99_us",
            1,
            false,
            Target::Ref(0.7),
        ),
        r(
            "round trip 64 B, guest echo, p50 (µs)",
            Figure::RttGuestEcho,
            "p50_us",
            1,
            false,
            Target::Ref(0.7),
        ),
        r(
            "round trip 64 B, guest echo, p99 (µs)",
            Figure::RttGuestEcho,
            "p99_us",
            1,
            false,
            Target::Ref(0.7),
        ),
        r(
            "round trip 64 B, guest echo, Linux-pattern driver, p50 (µs)",
            Figure::RttGuestEchoLinux,
            "p50_us",
            1,
            false,
            Target::Ref(0.7),
        ),
        r(
            "connection setup, g2h connect+close per s",
            Figure::Setup,
            "conn_per_s",
            0,
            true,
            Target::Ref(2.0),
        ),
        r(
            "sibling control round trip p50 (µs), guest 3 → 4 connect",
            Figure::SiblingConnect,
            "p50_us",
            1,
            false,
            Target::None,
        ),
        r(
            "sibling control round trip p99 (µs)",
            Figure::SiblingConnect,
            "p99_us",
            1,
            false,
            Target::None,
        ),
        r(
            "backend CPU µs per sibling round trip",
            Figure::SiblingConnect,
            "backend_cpu_us_per_rtt",
            1,
            false,
            Target::None,
        ),
        r(
            "backend CPU s/GiB, g2h 4 KiB",
            Figure::G2h(4096),
            "backend_cpu_gib",
            2,
            false,
            Target::None,
        ),
        r(
            "backend CPU s/GiB, g2h 64 KiB",
            Figure::G2h(65536),
            "backend_cpu_gib",
            2,
            false,
            Target::None,
        ),
        r(
            "backend CPU s/GiB, h2g 4 KiB",
            Figure::H2g(4096),
            "backend_cpu_gib",
            2,
            false,
            Target::None,
        ),
        r(
            "backend CPU s/GiB, h2g 64 KiB",
            Figure::H2g(65536),
            "backend_cpu_gib",
            2,
            false,
            Target::None,
        ),
        r(
            "backend CPU s/GiB, g2h Linux-pattern driver",
            Figure::G2hLinux,
            "backend_cpu_gib",
            2,
            false,
            Target::Ref(0.5),
        ),
        r(
            "backend CPU s/GiB, h2g Linux-pattern driver",
            Figure::H2gLinux,
            "backend_cpu_gib",
            2,
            false,
            Target::Ref(0.5),
        ),
        r(
            "backend CPU s/GiB, g2h 64 KiB paged",
            Figure::G2hPaged,
            "backend_cpu_gib",
            2,
            false,
            Target::None,
        ),
        r(
            "backend CPU µs per connection (setup)",
            Figure::Setup,
            "backend_cpu_us_per_conn",
            1,
            false,
            Target::None,
        ),
        r(
            "backend CPU µs per round trip (host echo)",
            Figure::RttHostEcho,
            "backend_cpu_us_per_rtt",
            1,
            false,
            Target::None,
        ),
        r(
            "backend CPU µs per round trip (guest echo, Linux-pattern driver)",
            Figure::RttGuestEchoLinux,
            "backend_cpu_us_per_rtt",
            1,
            false,
            Target::Ref(0.6),
        ),
    ];
    for (label, key, decimals, target) in [
        (
            "64 VMs in one process, g2h total (MB/s)",
            "mbps",
            0,
            Target::None,
        ),
        (
            "64 VMs, per-VM g2h MB/s, min",
            "mbps_vm_min",
            1,
            Target::None,
        ),
        (
            "64 VMs, per-VM g2h MB/s, median",
            "mbps_vm_median",
            1,
            Target::None,
        ),
        (
            "64 VMs, per-VM g2h MB/s, max",
            "mbps_vm_max",
            1,
            Target::None,
        ),
        (
            "64 VMs, Jain's fairness index (1 = equal)",
            "jain",
            3,
            Target::None,
        ),
        (
            "64 VMs, backend CPU s/GiB",
            "backend_cpu_gib",
            2,
            Target::None,
        ),
        (
            "64 VMs, backend RSS per VM (KiB)",
            "rss_per_vm_kib",
            0,
            Target::Stated,
        ),
        (
            "64 VMs, backend threads per VM",
            "threads_per_vm",
            2,
            Target::Stated,
        ),
    ] {
        let higher = !matches!(key, "backend_cpu_gib" | "rss_per_vm_kib" | "threads_per_vm");
        v.push(r(label, Figure::ManyVms(64), key, decimals, higher, target));
    }
    v.push(r(
        "1 VM (same figure), g2h MB/s",
        Figure::ManyVms(1),
        "mbps",
        0,
        true,
        Target::None,
    ));
    v.push(r(
        "1 VM (same figure), backend CPU s/GiB",
        Figure::ManyVms(1),
        "backend_cpu_gib",
        2,
        false,
        Target::None,
    ));
    let mut hwm = r(
        "peak RSS with 1,000 open connections, VmHWM (MiB)",
        Figure::Rss,
        "hwm_kib",
        1,
        false,
        Target::Stated,
    );
    hwm.scale = 1.0 / 1024.0;
    v.push(hwm);
    v.push(r(
        "RSS growth per open connection (KiB)",
        Figure::Rss,
        "rss_per_conn_kib",
        2,
        false,
        Target::Stated,
    ));
    v
}

fn med(res: &Results, fig: Figure, s: Subject, key: &str) -> Option<f64> {
    let v: Vec<f64> = res
        .get(&(fig, s))?
        .iter()
        .filter_map(|m| m.get(key).copied())
        .filter(|x| x.is_finite())
        .collect();
    (!v.is_empty()).then(|| median(&v))
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "—".into())
}

/// The main table; returns (markdown, list of (row label, met)).
pub fn table(res: &Results, subjects: &[Subject]) -> (String, Vec<(String, Option<bool>)>) {
    let has = |s: Subject| subjects.contains(&s);
    let mut out = String::new();
    let mut verdicts = Vec::new();
    out.push_str("| figure | plugin | reference | socketpair | plugin / reference | plugin / socketpair | target | met? |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
    for row in rows() {
        let get = |s: Subject| {
            if !has(s) {
                return None;
            }
            med(res, row.fig, s, row.key).map(|x| x * row.scale)
        };
        let (p, r, sp) = (
            get(Subject::Plugin),
            get(Subject::Reference),
            get(Subject::Socketpair),
        );
        if p.is_none() && r.is_none() && sp.is_none() {
            continue;
        }
        let ref_cell = if row.fig == Figure::G2hPaged {
            "n/a (rejects)".to_string()
        } else if matches!(row.fig, Figure::G2hIotlb | Figure::H2gIotlb) {
            "n/a (no IOTLB)".to_string()
        } else {
            fmt(r, row.decimals)
        };
        let rr = ratio(p, r);
        let rs = ratio(p, sp);
        let (target, met) = match row.target {
            Target::None => ("—".to_string(), None),
            Target::Stated => ("bounded, stated".to_string(), p.map(|_| true)),
            Target::OfPlugin(base, share) => {
                let untranslated = med(res, base, Subject::Plugin, row.key);
                let met = ratio(p, untranslated).map(|q| q >= share);
                let t = format!(
                    "≥ {:.0}% of untranslated ({})",
                    share * 100.0,
                    ratio(p, untranslated)
                        .map(|q| format!("{:.0}%", q * 100.0))
                        .unwrap_or_else(|| "—".into())
                );
                (t, met)
            }
            Target::Ref(x) => {
                let t = if row.higher_better {
                    format!("≥ {x}× ref")
                } else {
                    format!("≤ {x}× ref")
                };
                let met = rr.map(|q| if row.higher_better { q >= x } else { q <= x });
                (t, met)
            }
            Target::RefAndLimit(a, b) => {
                let met = match (rr, rs) {
                    (Some(q), Some(w)) => Some(q >= a && w >= b),
                    (Some(q), None) if q < a => Some(false),
                    (None, Some(w)) if w < b => Some(false),
                    _ => None,
                };
                (
                    format!("≥ {a}× ref, ≥ {:.0}% of socketpair", b * 100.0),
                    met,
                )
            }
        };
        // For two-part targets, say which part holds.
        let detail = match (row.target, rr, rs) {
            (Target::RefAndLimit(a, b), Some(q), Some(w)) if met == Some(false) => format!(
                " (ref {}, socketpair {})",
                if q >= a { "yes" } else { "no" },
                if w >= b { "yes" } else { "no" }
            ),
            _ => String::new(),
        };
        let met_s = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None if matches!(row.target, Target::None) => "",
            None => "?",
        };
        let sp_cell = if row.key.starts_with("backend") || matches!(row.fig, Figure::Rss) {
            "—".to_string()
        } else {
            fmt(sp, row.decimals)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {}{} |",
            row.label,
            fmt(p, row.decimals),
            ref_cell,
            sp_cell,
            fmt_ratio(rr),
            if row.key.starts_with("backend") || row.fig == Figure::Rss {
                "—".into()
            } else {
                fmt_ratio(rs)
            },
            target,
            met_s,
            detail
        );
        if !matches!(row.target, Target::None) {
            verdicts.push((row.label.to_string(), met));
        }
    }
    (out, verdicts)
}

/// CPU of the measuring side per throughput figure.
pub fn driver_table(res: &Results, subjects: &[Subject]) -> String {
    let mut out = String::new();
    out.push_str("| transfer | subject | guest driver CPU s/GiB | host app CPU s/GiB | backend CPU s/GiB (sys share) | all sides CPU s/GiB | backend cores busy | interrupts / kicks per MiB | MB/s |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for fig in [
        Figure::G2h(4096),
        Figure::G2h(65536),
        Figure::H2g(4096),
        Figure::H2g(65536),
        Figure::G2hPaged,
        Figure::G2hLinux,
        Figure::H2gLinux,
    ] {
        for &s in subjects {
            if !res.contains_key(&(fig, s)) {
                continue;
            }
            let g = |k| med(res, fig, s, k);
            let (drv, host) = if s == Subject::Socketpair {
                ("reader", "writer")
            } else {
                ("", "")
            };
            let be = match (g("backend_cpu_gib"), g("backend_sys_frac")) {
                (Some(c), Some(f)) => format!("{c:.2} ({:.0}% sys)", f * 100.0),
                _ => "—".into(),
            };
            let all = match (g("driver_cpu_gib"), g("host_cpu_gib")) {
                (Some(d), Some(h)) => Some(d + h + g("backend_cpu_gib").unwrap_or(0.0)),
                _ => None,
            };
            let _ = writeln!(
                out,
                "| {} | {} | {}{} | {}{} | {} | {} | {} | {} | {} |",
                fig.name(),
                s.name(),
                fmt(g("driver_cpu_gib"), 2),
                if drv.is_empty() {
                    String::new()
                } else {
                    format!(" ({drv})")
                },
                fmt(g("host_cpu_gib"), 2),
                if host.is_empty() {
                    String::new()
                } else {
                    format!(" ({host})")
                },
                be,
                fmt(all, 2),
                fmt(g("backend_util"), 2),
                match (g("irq_per_mib"), g("kick_per_mib")) {
                    (Some(i), Some(k)) => format!("{i:.1} / {k:.1}"),
                    _ => "—".into(),
                },
                fmt(g("mbps"), 0),
            );
        }
    }
    out
}

/// Every round's value of the headline metric, for judging the noise.
pub fn raw(res: &Results, subjects: &[Subject], figures: &[Figure]) -> String {
    let mut out = String::new();
    for &fig in figures {
        let key = match fig {
            Figure::G2h(_)
            | Figure::H2g(_)
            | Figure::G2hPaged
            | Figure::G2hIotlb
            | Figure::H2gIotlb
            | Figure::G2hLinux
            | Figure::H2gLinux => "mbps",
            Figure::RttHostEcho | Figure::RttGuestEcho | Figure::RttGuestEchoLinux => "p50_us",
            Figure::Setup => "conn_per_s",
            Figure::SiblingConnect => "p50_us",
            Figure::ManyVms(_) => "mbps",
            Figure::Rss => "hwm_kib",
        };
        for &s in subjects {
            let Some(v) = res.get(&(fig, s)) else {
                continue;
            };
            let vals: Vec<String> = v
                .iter()
                .map(|m| m.get(key).map(|x| format!("{x:.1}")).unwrap_or("?".into()))
                .collect();
            let _ = writeln!(
                out,
                "- {} {} {key}: {}",
                fig.name(),
                s.name(),
                vals.join(", ")
            );
        }
    }
    out
}
