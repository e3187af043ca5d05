//! `--vm key=value,...`: one VM in one argument, in the style of crosvm's and vhost-device-vsock's
//! `--vm`. The keys are the single-VM options without their dashes ([`super::vm_args`]), so both
//! forms share names, value parsers and defaults.
//!
//! Syntax:
//! - entries are separated by `,`; each entry is `key=value`, or a bare `key` (what the option
//!   alone means: `seqpacket` is `seqpacket=on`, `access-platform` is `access-platform=true`);
//! - a value may be double-quoted to hold `,` (`socket="/run/a,b"`); inside quotes `\"` and `\\`
//!   are the only escapes. An unquoted value is taken literally up to the next `,`;
//! - keys must be non-empty and unique; `guest-cid`, `uds-path` and one of `socket` /
//!   `socket-fd` are required.

use clap::{Command, FromArgMatches, Parser};

use super::vm_args::{self, Form, VmArgs};
use super::VmConfig;

/// The `--vm` value as its own command line (`--key=value ...`), parsed by the VM options.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct VmSpecArgs {
    #[command(flatten)]
    vm: VmArgs,
}

/// Parses one `--vm` value into a VM (not yet validated); the error is one line naming the key.
pub(super) fn parse(spec: &str) -> Result<VmConfig, String> {
    let arguments = vm_args::vm_arguments();
    let needs_value = |key: &str| {
        arguments.iter().any(|a| {
            a.get_long() == Some(key) && a.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
    };
    let mut args = Vec::new();
    for (key, value) in tokenize(spec)? {
        args.push(match value {
            Some(v) => format!("--{key}={v}"),
            // Caught here: clap would take the next entry as this option's value.
            None if needs_value(&key) => {
                return Err(format!("key {key:?} needs a value ({key}=...)"))
            }
            None => format!("--{key}"),
        });
    }
    let command: Command = <VmSpecArgs as clap::CommandFactory>::command();
    let matches = command
        .try_get_matches_from(&args)
        .map_err(|e| vm_args::message(&e, Form::Keys))?;
    let parsed =
        VmSpecArgs::from_arg_matches(&matches).map_err(|e| vm_args::message(&e, Form::Keys))?;
    parsed.vm.into_config(&matches, Form::Keys)
}

/// Splits `key=value,key,...` into entries; `None` is a bare key.
fn tokenize(input: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    if input.is_empty() {
        return Ok(entries);
    }
    let empty_entry = || format!("empty entry (stray ',') in {input:?}");
    let mut rest = input;
    loop {
        let key_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let (key, after_key) = rest.split_at(key_end);
        let value = match after_key.strip_prefix('=') {
            Some(after_eq) => match after_eq.strip_prefix('"') {
                Some(quoted) => {
                    let (v, after) = unquote(quoted)
                        .ok_or_else(|| format!("unterminated quoted value for key {key:?}"))?;
                    if !after.is_empty() && !after.starts_with(',') {
                        return Err(format!(
                            "unexpected characters after the quoted value for key {key:?}"
                        ));
                    }
                    rest = after;
                    Some(v)
                }
                None => {
                    let end = after_eq.find(',').unwrap_or(after_eq.len());
                    rest = &after_eq[end..];
                    Some(after_eq[..end].to_string())
                }
            },
            None => {
                rest = after_key;
                None
            }
        };
        if key.is_empty() {
            return Err(match value {
                None => empty_entry(),
                Some(v) => format!("empty key in entry {:?}", format!("={v}")),
            });
        }
        if entries.iter().any(|(k, _)| k == key) {
            return Err(format!("duplicate key {key:?}"));
        }
        entries.push((key.to_string(), value));
        match rest.strip_prefix(',') {
            None => return Ok(entries), // `rest` is empty: every other stop is at `,`.
            Some("") => return Err(empty_entry()),
            Some(r) => rest = r,
        }
    }
}

/// Reads a quoted value after its opening `"`; returns the unescaped value and what follows the
/// closing quote, or `None` if there is no closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            other => out.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IotlbMode, Toggle};

    fn err(spec: &str) -> String {
        match parse(spec) {
            Ok(vm) => panic!("{spec:?} parsed as {vm:?}"),
            Err(e) => e,
        }
    }

    const BASE: &str = "guest-cid=3,socket=/s,uds-path=/u";

    #[test]
    fn quoted_values_and_bare_keys() {
        let vm =
            parse(r#"guest-cid=3,socket="/a,b\"c\\d\e",uds-path="",seqpacket,access-platform"#)
                .unwrap();
        assert_eq!(vm.socket.unwrap().to_str(), Some("/a,b\"c\\d\\e"));
        assert_eq!(vm.uds_path.to_str(), Some(""));
        assert_eq!((vm.seqpacket, vm.access_platform), (Toggle::On, true));
        let vm = parse(&format!(
            "{BASE},seqpacket=off,access-platform=false,iotlb=auto"
        ))
        .unwrap();
        assert_eq!(
            (vm.seqpacket, vm.access_platform, vm.iotlb),
            (Toggle::Off, false, IotlbMode::Auto)
        );
        // A value holding '=' or starting with '-' is taken as it is.
        let vm = parse("guest-cid=3,socket=-a=b,uds-path=/u").unwrap();
        assert_eq!(vm.socket.unwrap().to_str(), Some("-a=b"));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(err(""), "missing required key \"guest-cid\"");
        assert_eq!(
            err(&format!("{BASE},")),
            format!("empty entry (stray ',') in \"{BASE},\"")
        );
        assert_eq!(err(",a=1"), "empty entry (stray ',') in \",a=1\"");
        assert_eq!(err("=1"), "empty key in entry \"=1\"");
        assert_eq!(
            err("socket=\"/a"),
            "unterminated quoted value for key \"socket\""
        );
        assert_eq!(
            err("socket=\"/a\"x"),
            "unexpected characters after the quoted value for key \"socket\""
        );
        assert_eq!(
            err(&format!("{BASE},socket=/t")),
            "duplicate key \"socket\""
        );
        assert_eq!(
            err("guest-cid=3,socket,uds-path=/u"),
            "key \"socket\" needs a value (socket=...)"
        );
        assert_eq!(
            err(&format!("{BASE},access-platform=yes")),
            "invalid value \"yes\" for key \"access-platform\": expected true or false"
        );
        assert_eq!(
            err(&format!("{BASE},socket-fd=-2147483649")),
            "invalid value \"-2147483649\" for key \"socket-fd\": out of range \
             (expected -2147483648..=2147483647)"
        );
        assert_eq!(
            err(&format!("{BASE},queue-size=-1")),
            "invalid value \"-1\" for key \"queue-size\": out of range (expected 0..=65535)"
        );
        assert!(err("help").starts_with("unknown key \"help\""));
        assert!(err("vm=x").starts_with("unknown key \"vm\""));
    }

    /// Odd input is an error of one line, never a panic.
    #[test]
    fn odd_input_is_one_error_line() {
        for input in [
            ",",
            ",,",
            "=",
            "==",
            "\"",
            "=\"",
            "socket=\"",
            "socket=\"\\",
            "é=1",
            "guest-cid=3,é",
            "socket=\u{0}",
            "guest-cid=1=2",
            "a\"b=1",
            "socket=\"\"\"",
            "-x",
            "--help",
            "guest-cid=3,guest-cid=4",
            "guest-cid=3,--socket=/s",
        ] {
            let e = err(input);
            assert!(!e.is_empty() && !e.contains('\n'), "{input:?}: {e:?}");
        }
        assert_eq!(
            parse("guest-cid=+5,socket=/s,uds-path=/u")
                .unwrap()
                .guest_cid,
            5
        );
    }
}
