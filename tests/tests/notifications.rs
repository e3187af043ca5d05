//! Notifications as a Linux guest uses them with EVENT_IDX: the driver kicks only when the
//! device's `avail_event` asks for it and sleeps on the call eventfds without ever polling the
//! rings. A device that forgets to publish `avail_event` or to interrupt past `used_event` stalls
//! these tests (each wait is bounded).

mod common;
use common::*;

use std::io::{Read, Write};
use vsock_plugin_tests::frontend::split_queue::KickPolicy;
use vsock_plugin_tests::real_guest::proto::Sha256;

fn linux_like(mut o: VmOptions) -> VmOptions {
    o.driver.interrupt_only = true;
    o.driver.kick_policy = KickPolicy::EventIdx;
    o
}

fn round_trips(vm: &mut Vm, p: &PluginProcess, port: u32) {
    let (id, mut host, _l) = guest_to_host(vm, p, port);
    for k in 0..200u32 {
        let msg = format!("ping {k}");
        vm.driver.send(id, msg.as_bytes()).unwrap();
        let got = read_exact_timeout(&mut host, msg.len(), secs(3))
            .unwrap_or_else(|e| panic!("round {k}: guest → host: {e}"));
        assert_eq!(got, msg.as_bytes());
        let reply = format!("pong {k}");
        host.write_all(reply.as_bytes()).unwrap();
        let got = vm
            .driver
            .recv_exact(id, reply.len(), secs(3))
            .unwrap_or_else(|e| panic!("round {k}: host → guest: {e}"));
        assert_eq!(got, reply.as_bytes());
    }
    // Bulk both ways, 2 MiB each, one after the other.
    let data = pattern(51, 2 << 20);
    let want = sha(&data);
    let mut h2 = host.try_clone().unwrap();
    let reader = std::thread::spawn(move || read_exact_timeout(&mut h2, 2 << 20, secs(30)));
    vm.driver.send(id, &data).unwrap();
    let got = reader.join().unwrap().expect("host read");
    assert_eq!(sha(&got), want, "guest → host bulk");
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        host.write_all(&d2).unwrap();
        host
    });
    let got = vm.driver.recv_exact(id, data.len(), secs(30)).unwrap();
    assert_eq!(sha(&got), want, "host → guest bulk");
    let mut host = writer.join().unwrap();
    let _ = host.set_nonblocking(true);
    let _ = host.read(&mut [0u8; 1]);
    let tx = &vm.driver.txq;
    eprintln!(
        "tx kicks sent {} suppressed {}; rx kicks sent {} suppressed {}",
        tx.kicks_sent,
        tx.kicks_suppressed,
        vm.driver.rxq.kicks_sent,
        vm.driver.rxq.kicks_suppressed
    );
}

#[test]
fn qemu_guest_with_event_idx_kicks_and_interrupt_only_waits() {
    let p = plugin(&[]);
    let mut vm = vm_with(&p, linux_like(VmOptions::qemu()));
    assert_ne!(vm.negotiated.features & F_EVENT_IDX, 0);
    round_trips(&mut vm, &p, 12000);
}

#[test]
fn crosvm_guest_with_event_idx_kicks_and_interrupt_only_waits() {
    let p = plugin(&[]);
    let mut vm = vm_with(&p, linux_like(VmOptions::crosvm()));
    round_trips(&mut vm, &p, 12001);
}

#[test]
fn host_initiated_connection_with_interrupt_only_waits() {
    let p = plugin(&[]);
    let mut vm = vm_with(&p, linux_like(VmOptions::qemu()));
    let (id, mut s) = host_to_guest(&mut vm, &p, 12002);
    s.write_all(b"over interrupts").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 15, secs(3)).unwrap(),
        b"over interrupts"
    );
}

#[test]
fn transport_reset_event_arrives_by_interrupt() {
    let p = plugin(&[]);
    let mut o = linux_like(VmOptions::crosvm());
    o.crosvm.protocol_mask |= PF_RESET_DEVICE;
    let mut vm = vm_with(&p, o.clone());
    let (_id, _host, _l) = guest_to_host(&mut vm, &p, 12003);
    vm.client.reset_device().unwrap();
    // The guest waits for interrupts (linux_like): the event must arrive by one, on the running
    // rings or on the rings the frontend re-activates. No event at all is a failure.
    assert_eq!(event_after_reset(&mut vm, &o), Some(EVENT_TRANSPORT_RESET));
}

/// With one rx buffer the device runs out of buffers constantly; it must ask for a kick
/// (`avail_event`) when it does, or a Linux guest never tells it about the re-posted buffer.
#[test]
fn rx_ring_running_dry_is_refilled_by_event_idx_kicks() {
    let p = plugin(&[]);
    let mut o = linux_like(VmOptions::qemu());
    o.driver.rx_buffers = 1;
    o.driver.rx_layout = vec![44, 1000];
    let mut vm = vm_with(&p, o);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 12004);
    let data = pattern(52, 100_000);
    let d2 = data.clone();
    let w = std::thread::spawn(move || host.write_all(&d2).map(|_| host));
    let got = vm.driver.recv_exact(id, data.len(), secs(10));
    let got = got.unwrap_or_else(|e| panic!("{e}; rings: {}", vm.driver.describe_rings()));
    assert!(got == data);
    w.join().unwrap().unwrap();
}

/// The same traffic as above with the default polling driver (baseline for the two tests above).
#[test]
fn same_traffic_with_polling_driver() {
    let p = plugin(&[]);
    let mut vm = vm_with(&p, VmOptions::qemu());
    round_trips(&mut vm, &p, 12005);
}

fn sha(d: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(d);
    h.finish().to_vec()
}
