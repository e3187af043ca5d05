//! Rate-limited logging for lines that a guest, a host client or a frontend can trigger at will
//! (a malformed packet, a refused connect, a failed accept): each call site of [`log_limited!`]
//! writes at most [`LINES_PER_WINDOW`] lines per [`WINDOW`], process-wide; the lines it drops are
//! counted and the count is appended to the next line it writes
//! (`... (N similar lines suppressed)`), so a flood costs a bounded amount of log and still shows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may write per window.
pub const LINES_PER_WINDOW: u32 = 10;
/// Length of a rate window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The budget of one call site.
pub struct LogLimit(Mutex<Window>);

struct Window {
    start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit(Mutex::new(Window {
            start: None,
            lines: 0,
            suppressed: 0,
        }))
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines suppressed since
    /// the last one written, or `None` (suppressed, counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update of three counters.
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            w.start = Some(now);
            w.lines = 0;
        }
        if w.lines >= LINES_PER_WINDOW {
            w.suppressed += 1;
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `log_limited!(Warn, "format", args...)`: like `log::warn!`, rate-limited per call site.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if log::log_enabled!(log::Level::$level) {
            match LIMIT.admit() {
                Some(0) => log::log!(log::Level::$level, $($arg)+),
                Some(n) => log::log!(
                    log::Level::$level,
                    "{} ({n} similar lines suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_budget_per_window_and_counts_the_rest() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(l.admit_at(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(l.admit_at(t0 + WINDOW), Some(25));
        assert_eq!(l.admit_at(t0 + WINDOW), Some(0));
    }
}
