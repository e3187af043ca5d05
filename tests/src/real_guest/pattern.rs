//! `real-guest --pattern`: what a real guest's driver does to the device, read from the plugin's
//! data-path trace (`vsock_plugin::datapath` at trace level, see `DATAPATH_LOG` in the plugin):
//! `kick q=Q n=N` per kick-eventfd read (N = guest kicks since the last read), `tx pass` / `rx
//! pass` lines with the chains (packets) and payload bytes of one pass and whether the used ring
//! was signalled. The measurement records the backend log's length at every phase boundary, so
//! each phase (guest→host bulk, host→guest bulk, round trips) is read from its own slice.

use std::path::Path;

/// Totals of one queue over one phase.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct QueueTotals {
    /// Guest kicks (sum of the eventfd counters) and the reads that collected them.
    pub kicks: u64,
    pub kick_reads: u64,
    /// Device passes that used at least one chain, the chains and payload bytes, and how many
    /// passes signalled the used ring (the guest asked for an interrupt).
    pub passes: u64,
    pub chains: u64,
    pub payload: u64,
    pub signals: u64,
}

/// The rx queue (0) and the tx queue (1) over one phase.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Pattern {
    pub rx: QueueTotals,
    pub tx: QueueTotals,
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Pattern {
    /// Adds up the data-path lines of `log`.
    pub fn parse(log: &str) -> Pattern {
        let mut p = Pattern::default();
        for line in log.lines().filter(|l| l.contains("vsock_plugin::datapath")) {
            if let Some(at) = line.find("kick q=") {
                let l = &line[at..];
                let q = match field(l, "q=") {
                    Some(0) => &mut p.rx,
                    Some(1) => &mut p.tx,
                    _ => continue,
                };
                q.kicks += field(l, "n=").unwrap_or(0);
                q.kick_reads += 1;
            } else if let Some(at) = line.find("x pass chains=") {
                let l = &line[at - 1..];
                let q = if l.starts_with('t') {
                    &mut p.tx
                } else {
                    &mut p.rx
                };
                q.passes += 1;
                q.chains += field(l, "chains=").unwrap_or(0);
                q.payload += field(l, "payload=").unwrap_or(0);
                q.signals += field(l, "signal=").unwrap_or(0);
            }
        }
        p
    }

    /// Reads bytes `from..to` of the backend log.
    pub fn read(log: &Path, from: u64, to: u64) -> Pattern {
        let all = std::fs::read(log).unwrap_or_default();
        let (a, b) = (from as usize, (to as usize).min(all.len()));
        Pattern::parse(&String::from_utf8_lossy(all.get(a..b).unwrap_or_default()))
    }

    pub fn is_empty(&self) -> bool {
        *self == Pattern::default()
    }
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "—".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

/// One markdown row per queue: the phase, the queue, and the per-packet figures.
pub fn rows(phase: &str, p: &Pattern) -> Vec<String> {
    [("tx (guest→device)", &p.tx), ("rx (device→guest)", &p.rx)]
        .iter()
        .map(|(name, q)| {
            format!(
                "| {phase} | {name} | {} | {} | {} | {} | {} | {} | {} |",
                q.chains,
                q.kicks,
                ratio(q.chains, q.kicks),
                ratio(q.chains, q.passes),
                ratio(q.payload, q.chains),
                ratio(q.signals, q.chains),
                ratio(q.kick_reads, q.kicks.max(1)),
            )
        })
        .collect()
}

pub const HEADER: &str = "| phase | queue | packets | guest kicks | packets per kick | packets per device pass | payload bytes per packet | used-ring signals per packet | eventfd reads per kick |\n|---|---|---:|---:|---:|---:|---:|---:|---:|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_lines_add_up_per_queue() {
        let log = "\
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] kick q=1 n=3
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] tx pass chains=4 payload=16384 signal=1
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] rx pass chains=1 payload=0 signal=0
[2026-12-05T02:00:00Z WARN vsock_plugin::worker] not ours: tx pass chains=99
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] kick q=0 n=1
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] kick q=1 n=2
[2026-12-05T02:00:00Z TRACE vsock_plugin::datapath] tx pass chains=2 payload=8192 signal=0
";
        let p = Pattern::parse(log);
        assert_eq!(
            p.tx,
            QueueTotals {
                kicks: 5,
                kick_reads: 2,
                passes: 2,
                chains: 6,
                payload: 24576,
                signals: 1
            }
        );
        assert_eq!(
            p.rx,
            QueueTotals {
                kicks: 1,
                kick_reads: 1,
                passes: 1,
                chains: 1,
                payload: 0,
                signals: 0
            }
        );
        let r = rows("g2h", &p);
        assert!(
            r[0].starts_with(
                "| g2h | tx (guest→device) | 6 | 5 | 1.20 | 3.00 | 4096.00 | 0.17 | 0.40 |"
            ),
            "{}",
            r[0]
        );
    }
}
