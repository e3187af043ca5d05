//! Small helpers: the stream checksum, the data pattern, process/thread CPU and memory readings,
//! percentiles and the machine description.

use std::time::Duration;

/// A streaming, position-sensitive 64-bit checksum: four independent multiply-rotate lanes over
/// 32-byte stripes (any chunking of the same byte stream gives the same value), folded with the
/// byte count at the end. Several GB/s per core, so verifying never limits a transfer.
#[derive(Clone, Debug)]
pub struct Sum64 {
    lanes: [u64; 4],
    tail: [u8; 32],
    tail_len: usize,
    total: u64,
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;

impl Default for Sum64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sum64 {
    pub fn new() -> Self {
        Sum64 {
            lanes: [P1, P2, P1 ^ P2, P1.rotate_left(17)],
            tail: [0; 32],
            tail_len: 0,
            total: 0,
        }
    }

    #[inline(always)]
    fn stripe(lanes: &mut [u64; 4], s: &[u8]) {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(s[8 * k..8 * k + 8].try_into().unwrap());
            *lane = (*lane ^ w).wrapping_mul(P1).rotate_left(31);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.tail_len > 0 {
            let take = (32 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 32 {
                return;
            }
            let t = self.tail;
            Self::stripe(&mut self.lanes, &t);
            self.tail_len = 0;
        }
        let mut chunks = data.chunks_exact(32);
        for s in &mut chunks {
            Self::stripe(&mut self.lanes, s);
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The checksum of everything seen (the state is not consumed).
    pub fn value(&self) -> u64 {
        let mut lanes = self.lanes;
        let mut t = [0u8; 32];
        t[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        t[31] ^= 0x80 | self.tail_len as u8;
        Self::stripe(&mut lanes, &t);
        let mut h = self.total.wrapping_mul(P2);
        for l in lanes {
            h = (h ^ l).wrapping_mul(P2).rotate_left(27);
        }
        h ^ (h >> 29)
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }
}

/// The bytes every transfer moves: a pseudo-random buffer whose period (1 MiB + 4093 bytes) is
/// not a multiple of any write size, stored with a 64 KiB wrap-around copy so that any write of
/// up to 64 KiB at stream offset `off` is the contiguous slice `at(off, len)`.
pub struct Pattern {
    buf: Vec<u8>,
    period: usize,
}

pub const MAX_WRITE: usize = 64 * 1024;

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let period = (1 << 20) + 4093;
        let mut buf = vec![0u8; period + MAX_WRITE];
        let mut x = seed | 1;
        for b in buf[..period].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            b.copy_from_slice(&bytes[..b.len()]);
        }
        let (head, tail) = buf.split_at_mut(period);
        tail.copy_from_slice(&head[..MAX_WRITE]);
        Pattern { buf, period }
    }

    /// The `len` (≤ 64 KiB) stream bytes starting at stream offset `off`.
    #[inline]
    pub fn at(&self, off: u64, len: usize) -> &[u8] {
        debug_assert!(len <= MAX_WRITE);
        let s = (off % self.period as u64) as usize;
        &self.buf[s..s + len]
    }

    /// Checksum of the first `total` stream bytes (what the sender sent).
    pub fn checksum(&self, total: u64) -> u64 {
        let mut h = Sum64::new();
        let mut off = 0u64;
        while off < total {
            let n = (total - off).min(MAX_WRITE as u64) as usize;
            h.update(self.at(off, n));
            off += n as u64;
        }
        h.value()
    }
}

/// CPU time of a process: `utime`/`stime` from `/proc/<pid>/stat` (all threads, including exited
/// ones, in clock ticks of 10 ms) and the nanosecond run time summed over the live threads'
/// `/proc/<pid>/task/*/schedstat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcCpu {
    pub user: f64,
    pub sys: f64,
    /// Sum of the live threads' run time (ns resolution), seconds.
    pub run: f64,
}

impl ProcCpu {
    /// CPU seconds: the precise schedstat sum when it agrees with the tick count (no thread
    /// exited in between), else the tick count.
    pub fn total(&self) -> f64 {
        let ticks = self.user + self.sys;
        if self.run > 0.0 && (self.run - ticks).abs() <= 0.03 + 0.1 * ticks {
            self.run
        } else {
            ticks
        }
    }

    /// System-time share (from the ticks).
    pub fn sys_share(&self) -> f64 {
        let t = self.user + self.sys;
        if t > 0.0 {
            self.sys / t
        } else {
            0.0
        }
    }

    pub fn since(&self, before: &ProcCpu) -> ProcCpu {
        ProcCpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
            run: self.run - before.run,
        }
    }
}

fn proc_run_secs(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for e in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 * 1e-9
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` (fields 14 and 15 of `/proc/<pid>/stat`), in seconds.
pub fn proc_cpu(pid: u32) -> Option<ProcCpu> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 → index 11.
    let tck = clk_tck();
    Some(ProcCpu {
        user: f.get(11)?.parse::<f64>().ok()? / tck,
        sys: f.get(12)?.parse::<f64>().ok()? / tck,
        run: proc_run_secs(pid),
    })
}

/// A `kB` field of `/proc/<pid>/status` (VmHWM, VmRSS, RssAnon...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Number of threads of `pid`.
pub fn proc_threads(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "Threads")
}

/// CPU time (user + sys) of the calling thread, in seconds.
pub fn thread_cpu() -> f64 {
    // SAFETY: zeroed rusage is valid; RUSAGE_THREAD is Linux-specific and always available here.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises RLIMIT_NOFILE to the hard limit (1,000 connections need ~1,000 fds in the host side
/// and in the backend, which inherits the limit).
pub fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 16);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The `q`-quantile (0..=1) of `v` (nearest rank on a sorted copy).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let idx = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn secs_f(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `nproc`, CPU model, kernel, load average: the machine line of the report.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("nproc {nproc}, CPU {model}, kernel {kernel}")
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// UTC date and time, `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (t.div_euclid(86400), t.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum64_is_independent_of_chunking_and_sensitive_to_order() {
        let p = Pattern::new(7);
        let data = p.at(123, 5000).to_vec();
        let mut a = Sum64::new();
        a.update(&data);
        let mut b = Sum64::new();
        for c in data.chunks(7) {
            b.update(c);
        }
        assert_eq!(a.value(), b.value());
        let mut swapped = data.clone();
        swapped.swap(10, 4000);
        let mut c = Sum64::new();
        c.update(&swapped);
        assert_ne!(a.value(), c.value());
        let mut d = Sum64::new();
        d.update(&data[..4999]);
        assert_ne!(a.value(), d.value());
    }

    #[test]
    fn pattern_checksum_matches_streamed_writes() {
        let p = Pattern::new(3);
        let total = 3 * ((1 << 20) + 4093) as u64 + 777;
        let mut h = Sum64::new();
        let mut off = 0u64;
        while off < total {
            let n = (total - off).min(4096) as usize;
            h.update(p.at(off, n));
            off += n as u64;
        }
        assert_eq!(h.value(), p.checksum(total));
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn utc_format() {
        assert_eq!(utc_now().len(), "2026-11-21 11:30:45 UTC".len());
    }
}
