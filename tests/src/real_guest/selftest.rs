//! The kernel's own vsock selftest, `tools/testing/vsock/vsock_test`, between two guests served by
//! one backend process: every byte crosses the backend's sibling (VM-to-VM) path.
//!
//! `setup` builds `vsock_test` statically from the `linux-source-<series>` package of the same
//! Debian version as each kernel (`<kernel root>/vsock_test`, its `--list` in `vsock_test.list`),
//! so each kernel line runs its own test list. Three guests on one backend:
//!
//! - CID 3 runs the server side; CID 4 (same group as 3) the client side of each test;
//! - CID 5 is in another group: the negative control. The same test between 3 and 5 must fail
//!   to connect, which proves the traffic above went through the backend's group routing and
//!   not some other path.
//!
//! vsock_test coordinates its two sides over TCP. Each guest has QEMU user-mode networking only
//! (`-netdev user`): the server's control port is forwarded from 127.0.0.1 on the host
//! (`hostfwd`), and the clients reach it at 10.0.2.2 (the host's loopback, seen from the guest).
//! No other real socket exists on the host.
//!
//! Each test runs alone (both sides started per test, every other id `--skip`ped: `--pick` is
//! newer than 6.12), bounded in time on both sides, so one hanging test costs its own row only.
//! `SOCK_STREAM SHUT_RD` is then repeated [`SHUT_RD_REPEATS`] times: it expects the peer's
//! `shutdown(SHUT_RD)` (a SHUTDOWN packet on the sibling path) to arrive before a TCP message
//! sent after it.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cases::{CaseResult, Fail};
use super::group::Group;
use super::initramfs;
use super::kernels::Kernel;
use super::proto::escape;
use super::qemu::{OpError, QemuConfig, Vm};

/// Every test of this kernel's vsock_test, one report row each (`vsock_test <id> <name>`).
pub const CASE: &str = "vsock_test";
/// `SOCK_STREAM SHUT_RD` [`SHUT_RD_REPEATS`] times in a row, all must pass.
pub const SHUT_RD_CASE: &str = "vsock_test_shut_rd_repeat";
/// The negative control: the same pair of guests in different groups must not connect.
pub const CROSS_GROUP_CASE: &str = "vsock_test_cross_group";
pub const CASES: [&str; 3] = [CASE, SHUT_RD_CASE, CROSS_GROUP_CASE];

pub const SHUT_RD_REPEATS: usize = 20;
const SHUT_RD_NAME: &str = "SOCK_STREAM SHUT_RD";
/// A test whose client must connect to the server; used for the negative control.
const CONNECT_TEST_NAME: &str = "SOCK_STREAM client close";
/// Bound on one test, each side (the slowest test takes ~10 s under TCG).
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The server's TCP control port inside its guest.
const GUEST_CONTROL_PORT: u16 = 1234;

const SERVER_CID: u32 = 3;
const CLIENT_CID: u32 = 4;
const OTHER_GROUP_CID: u32 = 5;

/// One report row: case name as shown, how long it took, the result.
pub type Row = (String, Duration, CaseResult);

/// The tests `vsock_test --list` printed: `(id, name)`.
pub fn test_list(kernel: &Kernel) -> Result<Vec<(u32, String)>, String> {
    let path = kernel.root.join("vsock_test.list");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (re-run tests/real-guest/setup)", path.display()))?;
    Ok(parse_list(&text))
}

fn parse_list(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, name.trim().to_string()))
        })
        .collect()
}

/// `--skip` for every test but `id` (works on every vsock_test version).
fn only(list: &[(u32, String)], id: u32) -> String {
    list.iter()
        .filter(|(i, _)| *i != id)
        .map(|(i, _)| format!(" --skip={i}"))
        .collect()
}

struct Pair<'a> {
    list: &'a [(u32, String)],
    host_port: u16,
}

impl Pair<'_> {
    /// Runs test `id` with `server` and `client` (whose CIDs are given); Ok(detail) when both
    /// sides exit 0 within the bound.
    fn run(
        &self,
        server: &mut Vm,
        server_cid: u32,
        client: &mut Vm,
        client_cid: u32,
        id: u32,
    ) -> Result<String, String> {
        let skip = only(self.list, id);
        let limit = TEST_TIMEOUT.as_millis();
        let scmd = format!(
            "exec /bin/vsock_test --mode=server --control-host=0.0.0.0 \
             --control-port={GUEST_CONTROL_PORT} --peer-cid={client_cid}{skip}"
        );
        let ccmd = format!(
            "exec /bin/vsock_test --mode=client --control-host=10.0.2.2 --control-port={} \
             --peer-cid={server_cid}{skip}",
            self.host_port
        );
        let case = format!("vsock_test_{id}");
        let sid = server
            .start_op(
                &case,
                "exec",
                &format!(
                    "cmd={} timeout_ms={limit} ready_on={}",
                    escape(&scmd),
                    escape("Control socket listening")
                ),
            )
            .map_err(|e| format!("server: {e}"))?;
        if let Err(e) = server.wait_ready(sid, Duration::from_secs(30)) {
            return Err(format!("server did not listen: {}", op_text(&e)));
        }
        let client_res = client.run_op(
            &case,
            "exec",
            &format!("cmd={} timeout_ms={limit}", escape(&ccmd)),
            TEST_TIMEOUT + Duration::from_secs(15),
        );
        let server_res = server.wait_result(sid, TEST_TIMEOUT + Duration::from_secs(15));
        match (&client_res, &server_res) {
            (Ok(_), Ok(_)) => Ok(String::new()),
            _ => Err(format!(
                "client: {}; server: {}",
                side(&client_res),
                side(&server_res)
            )),
        }
    }
}

/// The client's half of a [`Pair::run`] error ("client: …; server: …").
fn client_part(e: &str) -> &str {
    e.split_once("; server: ").map_or(e, |(c, _)| c)
}

fn op_text(e: &OpError) -> String {
    super::proto::unescape(&e.to_string())
}

/// The useful part of one side's result: its exit status and its last output lines.
fn side(r: &Result<String, OpError>) -> String {
    let text = match r {
        Ok(d) => super::proto::unescape(d),
        Err(e) => op_text(e),
    };
    let status = text
        .split_whitespace()
        .find(|w| w.starts_with("status="))
        .unwrap_or("status=?")
        .to_string();
    let out = text.split_once("out=").map(|x| x.1).unwrap_or(&text);
    let tail: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{status} [{}]", tail.join(" | "))
}

/// Boots the three guests on one backend and runs the selected cases; one row per vsock_test
/// test for [`CASE`], one row each for the other two.
pub fn run(
    kernel: &Kernel,
    qemu: &QemuConfig,
    busybox: &Path,
    agent: &Path,
    backend_template: &str,
    dir: &Path,
    selected: &[&'static str],
) -> Vec<Row> {
    let all_fail = |msg: String| -> Vec<Row> {
        selected
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    Duration::ZERO,
                    Err(Fail {
                        msg: msg.clone(),
                        lost: true,
                    }),
                )
            })
            .collect()
    };
    let list = match test_list(kernel) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return all_fail("vsock_test.list is empty".into()),
        Err(e) => return all_fail(e),
    };
    let _ = std::fs::create_dir_all(dir);
    let initrd = dir.join("initrd.cpio");
    let binary = match std::fs::read(kernel.root.join("vsock_test")) {
        Ok(b) => b,
        Err(e) => return all_fail(format!("vsock_test binary: {e} (re-run setup)")),
    };
    if let Err(e) = initramfs::build_with(
        kernel,
        busybox,
        agent,
        &initrd,
        &[("virtio_net", "")],
        &[("bin/vsock_test", 0o755, binary)],
    ) {
        return all_fail(format!("initramfs: {e}"));
    }
    let host_port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return all_fail(format!("no free loopback port: {e}")),
    };
    let members = [
        (SERVER_CID, "g1"),
        (CLIENT_CID, "g1"),
        (OTHER_GROUP_CID, "g2"),
    ];
    let mut group = match Group::boot(dir, backend_template, &members, |cid| {
        let mut cfg = qemu.clone();
        cfg.initrd = initrd.clone();
        cfg.user_net = Some(if cid == SERVER_CID {
            format!("hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_CONTROL_PORT}")
        } else {
            String::new()
        });
        cfg
    }) {
        Ok(g) => g,
        Err(e) => return all_fail(e),
    };
    for (vm, (cid, _)) in group.vms.iter_mut().zip(&members) {
        let net = "ip link set lo up && ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up";
        if let Err(e) = vm.run_op(
            "net",
            "exec",
            &format!("cmd={} timeout_ms=10000", escape(net)),
            Duration::from_secs(20),
        ) {
            return all_fail(format!("guest {cid}: network setup: {}", op_text(&e)));
        }
    }
    let [server, client, other] = &mut group.vms[..] else {
        return all_fail("three guests expected".into());
    };
    let pair = Pair {
        list: &list,
        host_port,
    };
    let mut rows = Vec::new();
    if selected.contains(&CASE) {
        for (id, name) in &list {
            let t = Instant::now();
            let res = pair
                .run(server, SERVER_CID, client, CLIENT_CID, *id)
                .map(|_| "ok".to_string())
                .map_err(|msg| Fail { msg, lost: false });
            rows.push((format!("{CASE} {id:>2} {name}"), t.elapsed(), res));
        }
    }
    if selected.contains(&SHUT_RD_CASE) {
        let t = Instant::now();
        let res = match list.iter().find(|(_, n)| n == SHUT_RD_NAME) {
            None => Ok(format!(
                "{SHUT_RD_NAME:?} is not in this kernel's vsock_test"
            )),
            Some((id, _)) => {
                let mut failures = Vec::new();
                for round in 1..=SHUT_RD_REPEATS {
                    if let Err(e) = pair.run(server, SERVER_CID, client, CLIENT_CID, *id) {
                        failures.push(format!("run {round}: {e}"));
                    }
                }
                if failures.is_empty() {
                    Ok(format!("{SHUT_RD_REPEATS}/{SHUT_RD_REPEATS} passed"))
                } else {
                    Err(Fail {
                        msg: format!(
                            "{} of {SHUT_RD_REPEATS} failed: {}",
                            failures.len(),
                            failures.join("; ")
                        ),
                        lost: false,
                    })
                }
            }
        };
        rows.push((SHUT_RD_CASE.to_string(), t.elapsed(), res));
    }
    if selected.contains(&CROSS_GROUP_CASE) {
        let t = Instant::now();
        let res = match list.iter().find(|(_, n)| n == CONNECT_TEST_NAME) {
            None => Err(format!("{CONNECT_TEST_NAME:?} missing from the test list")),
            Some((id, _)) => match pair.run(server, SERVER_CID, other, OTHER_GROUP_CID, *id) {
                Ok(_) => Err(format!(
                    "{CONNECT_TEST_NAME:?} passed between guests in different groups: the \
                     traffic did not go through the backend's group routing"
                )),
                // perror("connect") in the client: "connect: Connection reset by peer".
                Err(e) if client_part(&e).contains("connect: ") => Ok(format!(
                    "{CONNECT_TEST_NAME:?} between groups g1 and g2 failed as it must: {e}"
                )),
                Err(e) => Err(format!("failed, but not at connect: {e}")),
            },
        }
        .map_err(|msg| Fail { msg, lost: false });
        rows.push((CROSS_GROUP_CASE.to_string(), t.elapsed(), res));
    }
    if !group.finish() {
        for r in rows.iter_mut() {
            r.2 = Err(Fail {
                msg: "backend exited".into(),
                lost: true,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parses_ids_and_names() {
        let l =
            parse_list("ID\tTest name\n0\tSOCK_STREAM connection reset\n17\tSOCK_STREAM SHUT_RD\n");
        assert_eq!(
            l,
            vec![
                (0, "SOCK_STREAM connection reset".to_string()),
                (17, "SOCK_STREAM SHUT_RD".to_string())
            ]
        );
        assert_eq!(only(&l, 17), " --skip=0");
    }

    #[test]
    fn the_negative_control_looks_at_the_clients_connect_error_only() {
        let refused = "client: status=1 [2 - SOCK_STREAM client close...connect: Connection reset \
                       by peer]; server: status=1 [accept timed out]";
        assert!(client_part(refused).contains("connect: "));
        // A client that connected its control socket and failed later is not a refusal.
        let other = "client: status=1 [Control socket connected to 10.0.2.2:4000. | 2 - x...recv: \
                     Timeout]; server: status=1 [connect: nothing]";
        assert!(!client_part(other).contains("connect: "));
    }
}
