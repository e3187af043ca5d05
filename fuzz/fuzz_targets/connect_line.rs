//! Hybrid-vsock CONNECT lines from a host client, fed in fuzzer-chosen pieces.
//! Invariants: a line is accepted only within MAX_LINE bytes, as UTF-8 `connect <port>`
//! (case-insensitive keyword, optional `\r`), the port is the number the line said, the bytes
//! after the newline come back untouched, and the canonical line for that port parses the same.
//! (Which spellings of a number are accepted, e.g. `+5000`, is issue 12 item 12: not asserted.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsock_plugin::host::connect_line::{ConnectLine, LineState, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    // First byte: where to split the input into two reads.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(bytes.len());
    let mut line = ConnectLine::default();
    let mut state = line.push(&bytes[..cut]);
    let mut pushed = cut;
    if state == LineState::Incomplete {
        state = line.push(&bytes[cut..]);
        pushed = bytes.len();
    }
    if let LineState::Connect { port, rest } = state {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .expect("accepted without a newline");
        assert!(nl < MAX_LINE, "accepted a line of {} bytes", nl + 1);
        assert_eq!(
            rest,
            &bytes[nl + 1..pushed],
            "stream bytes after the line changed"
        );
        let text = std::str::from_utf8(&bytes[..nl]).expect("accepted non-UTF-8");
        let text = text.strip_suffix('\r').unwrap_or(text);
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        assert_eq!(words.len(), 2, "{text:?}");
        assert!(
            words[0].eq_ignore_ascii_case("connect"),
            "keyword {:?}",
            words[0]
        );
        assert_eq!(words[1].parse::<u32>().ok(), Some(port));
        let canonical = format!("connect {port}\n");
        assert_eq!(
            ConnectLine::default().push(canonical.as_bytes()),
            LineState::Connect { port, rest: vec![] }
        );
    }
});
