//! `ctl` over binder RPC: exact tables, JSON, errors.

mod common;

use common::*;
use vsock_plugin_ipc::ctl::{self, CtlError};
use vsock_plugin_ipc::testing::FakeDevice;
use vsock_plugin_ipc::AllowList;

fn run(f: &Fixture, args: &[&str]) -> Result<String, CtlError> {
    let uri = f.uri.to_string();
    let mut a = vec!["--uri", uri.as_str()];
    a.extend_from_slice(args);
    ctl::run(&a)
}

#[test]
fn caps_table() {
    let f = serve();
    assert_eq!(
        run(&f, &["caps"]).unwrap(),
        format!(
            "protocol 1.0\nfeatures connection-filter,events (0x6)\nserver {}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn status_table_and_json() {
    let f = serve();
    assert_eq!(
        run(&f, &["status"]).unwrap(),
        "uptime 61.000s  version test\n\
         CID  STATE             IOTLB        FEATURES            CONNS  GEN  SOCKET\n\
         3    running           off          0x0000000100000003  2      0    /run/vm3/vhost.sock\n\
         4    waiting_frontend  translating  0x0000000100000003  1      0    /run/vm4/vhost.sock\n"
    );
    let json = run(&f, &["--json", "status"]).unwrap();
    assert!(json.starts_with(r#"{"uptimeMs": "61000", "vms": [{"guestCid": "3", "state": "DEVICE_STATE_RUNNING", "negotiatedFeatures": "4294967299", "protocolFeatures": "32768", "iotlbMode": "IOTLB_MODE_OFF", "connections": 2, "config": {"#), "{json}");
    assert!(json.ends_with("\"version\": \"test\"}\n"), "{json}");
}

#[test]
fn connections_table_filtered() {
    let f = serve();
    assert_eq!(
        run(&f, &["connections"]).unwrap(),
        "CID  GUEST_PORT  HOST_PORT  STATE        ROUTE           OPENED_BY  FROM_GUEST  TO_GUEST  CREDIT\n\
         3    1024        5000       established  unix            guest      100         200       65536\n\
         3    1025        6000       connecting   binder_service  guest      0           0         65536\n\
         4    2048        5000       closing      unix            guest      4096        8192      65536\n"
    );
    assert_eq!(
        run(&f, &["--json", "connections", "--cid", "4"]).unwrap(),
        "{\"connections\": [{\"guestCid\": \"4\", \"guestPort\": 2048, \"hostPort\": 5000, \"state\": \"CONNECTION_STATE_CLOSING\", \
         \"hostInitiated\": false, \"bytesFromGuest\": \"4096\", \"bytesToGuest\": \"8192\", \"bufAlloc\": 262144, \"fwdCnt\": 4096, \
         \"peerBufAlloc\": 65536, \"peerFwdCnt\": 8192, \"route\": \"ROUTE_KIND_UNIX\"}]}\n"
    );
}

#[test]
fn metrics_table() {
    let f = serve();
    let out = run(&f, &["metrics"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "COUNTER                        CID  VALUE");
    assert_eq!(lines[1], "rx_packets                     3    42");
    assert_eq!(lines[2], "tx_packets                     3    7");
    assert_eq!(lines[3], "control.routes.unix            -    0");
    assert_eq!(lines.len(), 14);
}

#[test]
fn policy_commands() {
    let f = serve();
    assert_eq!(
        run(
            &f,
            &["policy", "deny", "--cid", "3", "--port", "22", "--reason", "no ssh"]
        )
        .unwrap(),
        "ok\n"
    );
    assert_eq!(
        run(&f, &["--json", "policy", "allow", "--port", "80"]).unwrap(),
        "{}\n"
    );
    assert_eq!(
        run(&f, &["policy", "list"]).unwrap(),
        "CID  PORT  ACTION  MAX_CONNS  REASON\n\
         3    22    deny    -          no ssh\n\
         *    80    allow   -\n"
    );
    assert_eq!(
        run(&f, &["route", "3", "22"]).unwrap(),
        "CID  PORT  ROUTE   DETAIL\n3    22    denied  no ssh\n"
    );
    // The server does not enforce limits: the client does not even send them.
    assert_eq!(
        run(
            &f,
            &["policy", "allow", "--port", "80", "--max-connections", "2"]
        )
        .unwrap_err(),
        CtlError::Call(
            "the server does not enforce policy limits (no FEATURE_POLICY_LIMITS)".into()
        )
    );
    assert_eq!(run(&f, &["policy", "clear"]).unwrap(), "ok\n");
    assert_eq!(
        run(&f, &["--json", "policy", "list"]).unwrap(),
        "{\"rules\": []}\n"
    );
}

#[test]
fn policy_limits_against_a_server_that_enforces_them() {
    let f = serve_with(
        FakeDevice {
            limits: true,
            ..FakeDevice::sample()
        },
        AllowList::new([my_uid()]),
    );
    assert_eq!(
        run(
            &f,
            &["policy", "allow", "--port", "80", "--max-connections", "2"]
        )
        .unwrap(),
        "ok\n"
    );
    assert_eq!(f.device.policy.lock().unwrap()[0].limits.max_connections, 2);
    assert_eq!(
        run(&f, &["policy", "list"]).unwrap(),
        "CID  PORT  ACTION  MAX_CONNS  REASON\n*    80    allow   2\n"
    );
}

#[test]
fn reset_and_errors() {
    let f = serve();
    assert_eq!(run(&f, &["reset", "3", "1024", "5000"]).unwrap(), "ok\n");
    assert_eq!(
        run(&f, &["reset", "3", "1024", "5000"]).unwrap_err(),
        CtlError::Call(
            "resetConnection: NOT_FOUND: not found: no connection cid 3 1024->5000".into()
        )
    );
    // Usage errors (clap's wording, one line), checked before anything is sent.
    let e = run(&f, &["frobnicate"]).unwrap_err();
    assert_eq!(
        e,
        CtlError::Usage("unrecognized subcommand 'frobnicate'".into())
    );
    assert_eq!(e.exit_code(), 2);
    assert_eq!(
        run(&f, &["route", "3"]).unwrap_err(),
        CtlError::Usage("the following required arguments were not provided: <PORT>".into())
    );
    assert_eq!(
        run(&f, &["reset", "x", "1", "2"]).unwrap_err(),
        CtlError::Usage("invalid value 'x' for '<CID>': invalid digit found in string".into())
    );
    assert_eq!(
        run(&f, &[]).unwrap_err(),
        CtlError::Usage("no command".into())
    );
    assert_eq!(
        run(&f, &["policy", "allow", "--max-connections", "-1"]).unwrap_err(),
        CtlError::Usage("unexpected argument '-1' found".into())
    );
    assert!(ctl::run(&["--help"]).unwrap().contains("policy"));
    assert!(ctl::help().contains("[default: $VSOCK_PLUGIN_CONTROL, else binder://default]"));
    assert_eq!(
        ctl::run(&["--uri", "tcp://x", "status"])
            .unwrap_err()
            .exit_code(),
        2
    );
    let missing = format!("unix://{}/nothing.sock#x", f.dir.path().display());
    assert!(matches!(
        ctl::run(&["--uri", missing.as_str(), "status"]).unwrap_err(),
        CtlError::Connect(_)
    ));
}
