//! The hybrid-vsock handshake of a host client: `connect <port>\n`, keyword case-insensitive
//! (Firecracker's and Cuttlefish's clients differ in case), optional `\r` before the newline.
//!
//! The line may arrive in pieces; bytes after the newline in the same read belong to the stream
//! and are handed back so they reach the guest. A line longer than [`MAX_LINE`] or a malformed one
//! ends the client (clean close).

/// Longest accepted CONNECT line, newline included ("connect 4294967295\r\n" is 20 bytes).
pub const MAX_LINE: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum LineState {
    /// No newline yet; keep reading.
    Incomplete,
    /// A well-formed request for guest `port`; `rest` are stream bytes that followed the line.
    Connect { port: u32, rest: Vec<u8> },
    /// Not a CONNECT line (or too long): close the client.
    Invalid(String),
}

/// Accumulates a client's bytes until its CONNECT line is complete.
#[derive(Debug, Default)]
pub struct ConnectLine {
    buf: Vec<u8>,
}

impl ConnectLine {
    /// Adds bytes read from the client and says what they amount to so far.
    pub fn push(&mut self, bytes: &[u8]) -> LineState {
        self.buf.extend_from_slice(bytes);
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            return if self.buf.len() >= MAX_LINE {
                LineState::Invalid(format!("no newline within {MAX_LINE} bytes"))
            } else {
                LineState::Incomplete
            };
        };
        if nl >= MAX_LINE {
            return LineState::Invalid(format!("line longer than {MAX_LINE} bytes"));
        }
        let rest = self.buf.split_off(nl + 1);
        match parse(&self.buf[..nl]) {
            Ok(port) => LineState::Connect { port, rest },
            Err(why) => LineState::Invalid(why),
        }
    }
}

fn parse(line: &[u8]) -> Result<u32, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8".to_string())?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(kw), Some(port), None) if kw.eq_ignore_ascii_case("connect") => parse_port(port),
        _ => Err(format!("expected `connect <port>`, got {text:?}")),
    }
}

/// A guest port: decimal digits only (no sign), below `VMADDR_PORT_ANY` (`u32::MAX`), which
/// names no port.
fn parse_port(port: &str) -> Result<u32, String> {
    let bad = || format!("bad port {port:?} in CONNECT line");
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u32>() {
        Ok(p) if p != u32::MAX => Ok(p),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_split_and_with_data() {
        assert_eq!(
            ConnectLine::default().push(b"connect 5000\n"),
            LineState::Connect {
                port: 5000,
                rest: vec![]
            }
        );
        assert_eq!(
            ConnectLine::default().push(b"CONNECT 7\r\n"),
            LineState::Connect {
                port: 7,
                rest: vec![]
            }
        );
        let mut l = ConnectLine::default();
        assert_eq!(l.push(b"con"), LineState::Incomplete);
        assert_eq!(l.push(b"nect 50"), LineState::Incomplete);
        assert_eq!(
            l.push(b"00\nHELLO"),
            LineState::Connect {
                port: 5000,
                rest: b"HELLO".to_vec()
            }
        );
    }

    #[test]
    fn rejects_malformed_and_long_lines() {
        for bad in [
            &b"connect abc\n"[..],
            b"connect\n",
            b"connect 1 2\n",
            b"hello 5\n",
            b"connect 99999999999\n",
            b"connect +5000\n",
            b"connect 4294967295\n",
            b"connect -1\n",
            b"\xff\n",
        ] {
            assert!(
                matches!(ConnectLine::default().push(bad), LineState::Invalid(_)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ConnectLine::default().push(&[b'x'; 300]),
            LineState::Invalid(_)
        ));
        let mut l = ConnectLine::default();
        assert_eq!(l.push(&[b' '; 40]), LineState::Incomplete);
        assert!(matches!(l.push(&[b' '; 40]), LineState::Invalid(_)));
    }
}
