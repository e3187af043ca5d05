//! Command-line errors: exit status 2 and exactly one line on stderr.

mod common;
use common::*;

fn assert_usage_error(args: &[&str]) {
    let (status, stderr) =
        vsock_plugin_tests::frontend::plugin_process::run_plugin_to_exit(args, secs(5));
    let status = status.unwrap_or_else(|| panic!("{args:?}: still running after 5 s"));
    assert_eq!(
        status.code(),
        Some(2),
        "{args:?}: {status}, stderr {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: stderr should be one line, got {stderr:?}"
    );
}

#[test]
fn guest_cid_not_a_number() {
    assert_usage_error(&[
        "--guest-cid",
        "abc",
        "--socket",
        "/tmp/vp-x.sock",
        "--uds-path",
        "/tmp/vp-x.vsock",
    ]);
}

#[test]
fn guest_cid_reserved_values() {
    for cid in ["0", "1", "2", "4294967295", "4294967296"] {
        assert_usage_error(&[
            "--guest-cid",
            cid,
            "--socket",
            "/tmp/vp-x.sock",
            "--uds-path",
            "/tmp/vp-x.vsock",
        ]);
    }
}

#[test]
fn unknown_vm_key() {
    assert_usage_error(&[
        "--vm",
        "guest-cid=3,socket=/tmp/vp-x.sock,uds-path=/tmp/vp-x.vsock,bogus=1",
    ]);
}

#[test]
fn unknown_option() {
    assert_usage_error(&["--frobnicate"]);
}

#[test]
fn missing_uds_path() {
    assert_usage_error(&["--guest-cid", "3", "--socket", "/tmp/vp-x.sock"]);
}

#[test]
fn bad_values() {
    assert_usage_error(&[
        "--guest-cid",
        "3",
        "--socket",
        "/tmp/vp-x.sock",
        "--uds-path",
        "/tmp/vp-x.vsock",
        "--queue-size",
        "1000",
    ]);
    assert_usage_error(&[
        "--guest-cid",
        "3",
        "--socket",
        "/tmp/vp-x.sock",
        "--uds-path",
        "/tmp/vp-x.vsock",
        "--ok-reply",
        "maybe",
    ]);
    assert_usage_error(&[
        "--guest-cid",
        "3",
        "--socket",
        "/tmp/vp-x.sock",
        "--uds-path",
        "/tmp/vp-x.vsock",
        "--seqpacket",
        "perhaps",
    ]);
    assert_usage_error(&[
        "--guest-cid",
        "3",
        "--socket",
        "/tmp/vp-x.sock",
        "--uds-path",
        "/tmp/vp-x.vsock",
        "--sandbox",
        "strict",
    ]);
}

#[test]
fn duplicate_guest_cid_across_vms() {
    assert_usage_error(&[
        "--vm",
        "guest-cid=3,socket=/tmp/vp-a.sock,uds-path=/tmp/vp-a.vsock",
        "--vm",
        "guest-cid=3,socket=/tmp/vp-b.sock,uds-path=/tmp/vp-b.vsock",
    ]);
}

/// `--version` tells an operator whether this build can translate (Soong builds cannot yet);
/// the cargo build under test does.
#[test]
fn version_names_the_iotlb_capability() {
    let out =
        std::process::Command::new(vsock_plugin_tests::frontend::plugin_process::plugin_binary())
            .arg("--version")
            .output()
            .expect("run vsock-plugin --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "vsock-plugin {}\nIOTLB translation: built in\n\
             snapshot/restore: VHOST_USER_PROTOCOL_F_DEVICE_STATE, state format v1\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}
