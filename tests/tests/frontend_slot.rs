//! The single vhost-user frontend slot: a connection that connects and closes, connects and stays
//! silent (a readiness probe), or sends a little and goes quiet must never keep the real VMM out,
//! and a frontend that drips a message must not hold its VM's loop (per-message deadline).
//! Policy: plugin/src/vhost_user/slot.rs.

mod common;
use common::*;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A QEMU handshake on `p`'s socket with a client that waits up to `wait` for each reply.
fn qemu_vm_waiting(p: &PluginProcess, wait: Duration) -> Vm {
    let mut client = VhostUserClient::connect(&p.vm().socket).expect("connect");
    client.timeout = wait;
    Vm::start_with(client, VmOptions::qemu()).expect("QEMU handshake")
}

/// The VM is really served: a guest→host transfer both ways.
fn assert_transfers(vm: &mut Vm, p: &PluginProcess, port: u32) {
    let (id, mut host, _l) = guest_to_host(vm, p, port);
    vm.driver.send(id, b"served").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"served"
    );
    host.write_all(b"back").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 4, secs(5)).unwrap(), b"back");
}

/// Lets the plugin accept `probe` into the slot before the VMM comes.
fn settle() {
    std::thread::sleep(ms(300));
}

/// A probe connects and stays silent (Cuttlefish-style readiness check on the vhost-user
/// socket): the VMM connecting next is served at once, and the probe is closed.
#[test]
fn silent_probe_yields_the_slot_to_the_vmm() {
    let p = plugin(&[]);
    let probe = UnixStream::connect(&p.vm().socket).unwrap();
    settle();
    let t = Instant::now();
    // Before the fix the probe kept the slot: this handshake timed out after 5 s.
    let mut vm = qemu_vm_waiting(&p, secs(5));
    let took = t.elapsed();
    assert_eq!(
        vm.negotiated.config.as_deref(),
        Some(&3u64.to_le_bytes()[..])
    );
    assert_transfers(&mut vm, &p, 12000);
    let mut probe = VhostUserClient::from_stream(probe);
    assert!(
        probe.closed_within(secs(5)),
        "the probe still holds a socket"
    );
    assert_logged(&p, "replaces the current one (silent");
    eprintln!("VMM handshake after a silent probe: {took:?}");
}

/// A probe sends half a header and stays: still silent (no whole message), so replaced at once.
#[test]
fn probe_with_a_partial_header_yields_the_slot() {
    let p = plugin(&[]);
    let mut probe = UnixStream::connect(&p.vm().socket).unwrap();
    probe.write_all(&[1, 0, 0, 0, 1]).unwrap();
    settle();
    let mut vm = qemu_vm_waiting(&p, secs(5));
    assert_transfers(&mut vm, &p, 12001);
}

/// A probe connects and closes at once, several times: the VMM is served right after.
#[test]
fn probe_connect_close_then_vmm_served() {
    let p = plugin(&[]);
    for _ in 0..5 {
        drop(UnixStream::connect(&p.vm().socket).unwrap());
    }
    let mut vm = qemu_vm_waiting(&p, secs(5));
    assert_transfers(&mut vm, &p, 12002);
    p.assert_alive();
}

/// A connection that spoke (GET_FEATURES) but never took ownership (no SET_OWNER) keeps the slot
/// only until it has been quiet for the idle bound; then the waiting VMM is served.
#[test]
fn talkative_probe_without_set_owner_yields_after_the_idle_bound() {
    let p = plugin(&[]);
    let mut probe = VhostUserClient::connect(&p.vm().socket).unwrap();
    assert_ne!(probe.get_features().unwrap(), 0);
    let t = Instant::now();
    let mut vm = qemu_vm_waiting(&p, secs(30));
    let took = t.elapsed();
    // The bound is 5 s from the probe's last message; never earlier.
    assert!(
        took >= ms(4500),
        "served after {took:?}, before the idle bound"
    );
    assert_transfers(&mut vm, &p, 12003);
    assert!(probe.closed_within(secs(5)));
    assert_logged(&p, "without establishing a session");
    eprintln!("VMM served {took:?} after the talkative probe's last message");
}

/// An established frontend (SET_OWNER) is never displaced: a later connection waits, unserved,
/// and the first keeps working.
#[test]
fn established_frontend_keeps_the_slot() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let mut late = VhostUserClient::connect(&p.vm().socket).unwrap();
    late.timeout = ms(500);
    assert!(
        late.get_features().is_err(),
        "a second frontend was served while the first holds the slot"
    );
    std::thread::sleep(secs(6)); // past the idle bound: established frontends have none
    assert_transfers(&mut vm, &p, 12004);
}

/// A frontend dripping one message byte by byte is dropped once the message is 2 s old (not
/// per read: each byte arrives well within 2 s), while another VM's transfer goes on; the slot
/// is then free for a new frontend.
#[test]
fn slow_drip_message_is_dropped_after_the_deadline_other_vms_unaffected() {
    let p = PluginProcess::multi(&[(3, ""), (4, "")]).unwrap();
    let mut other = Vm::start(&p.vms[1].socket, VmOptions::qemu().cid(4)).unwrap();
    let l = listen(&p.vms[1].port_path(12005));
    let canary = other.driver.connect(HOST_CID, 12005, TYPE_STREAM).unwrap();
    let mut canary_host = accept_timeout(&l, secs(5)).unwrap();

    let mut dripper = owned_client(&p);
    // GET_FEATURES header, one byte every 400 ms: 12 bytes would take 4.4 s.
    let mut header = Vec::new();
    header.extend_from_slice(&1u32.to_ne_bytes());
    header.extend_from_slice(&1u32.to_ne_bytes());
    header.extend_from_slice(&0u32.to_ne_bytes());
    let t = Instant::now();
    let mut dropped_at = None;
    let mut canary_rounds = 0;
    for b in &header {
        if dripper.stream().write_all(&[*b]).is_err() {
            dropped_at = Some(t.elapsed());
            break;
        }
        // The other VM keeps moving data meanwhile.
        let msg = format!("canary {canary_rounds:04}");
        other.driver.send(canary, msg.as_bytes()).unwrap();
        assert_eq!(
            read_exact_timeout(&mut canary_host, msg.len(), secs(5)).unwrap(),
            msg.as_bytes()
        );
        canary_rounds += 1;
        std::thread::sleep(ms(400));
    }
    let closed = dripper.closed_within(secs(10));
    let elapsed = t.elapsed();
    assert!(closed, "the dripping frontend was never dropped");
    // Before the fix (2 s per read) the message was accepted after 4.4 s and answered.
    assert!(
        dropped_at.is_none_or(|d| d >= ms(1900)),
        "dropped before the deadline: {dropped_at:?}"
    );
    assert!(elapsed >= ms(1900), "dropped after {elapsed:?}");
    assert!(
        canary_rounds >= 4,
        "other VM made {canary_rounds} round trips"
    );
    assert_logged(&p, "still incomplete");
    // The slot is free again.
    let mut vm = qemu_vm(&p);
    assert_transfers(&mut vm, &p, 12006);
    eprintln!("dripper dropped after {elapsed:?}; other VM did {canary_rounds} round trips");
}

/// Issue 12 item 6: a connection that waited in the backlog while the VMM ran becomes the holder
/// when the VMM disconnects; the reconnecting VMM is served at once, not after that stale
/// connection times out.
#[test]
fn stale_backlog_connection_does_not_delay_the_reconnecting_vmm() {
    let p = plugin(&[]);
    let vm = qemu_vm(&p);
    let stale = UnixStream::connect(&p.vm().socket).unwrap();
    settle();
    drop(vm);
    settle();
    let t = Instant::now();
    let mut vm = qemu_vm_waiting(&p, secs(5));
    let took = t.elapsed();
    assert_transfers(&mut vm, &p, 12007);
    assert!(VhostUserClient::from_stream(stale).closed_within(secs(5)));
    eprintln!("reconnecting VMM served after {took:?}");
}
