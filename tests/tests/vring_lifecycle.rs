//! Ring lifecycle: enable/disable, stop (GET_VRING_BASE) and resume, call-fd replacement, rx
//! buffers too small for a header, frontends of other VMs.

mod common;
use common::*;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn disabled_rx_ring_supplies_nothing_until_re_enabled() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 10000);
    vm.driver.pump_for(ms(50)).unwrap();
    assert_eq!(vm.client.set_vring_enable(0, false, true).unwrap(), Some(0));
    let used_before = vm.driver.rxq.used_idx();
    host.write_all(b"while disabled").unwrap();
    std::thread::sleep(ms(400));
    assert_eq!(
        vm.driver.rxq.used_idx(),
        used_before,
        "rx ring used while disabled"
    );
    assert_eq!(vm.client.set_vring_enable(0, true, true).unwrap(), Some(0));
    vm.driver.rxq.notify();
    assert_eq!(
        vm.driver.recv_exact(id, 14, secs(5)).unwrap(),
        b"while disabled"
    );
}

#[test]
fn stop_with_get_vring_base_then_resume() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 10001);
    vm.driver.send(id, b"before").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"before"
    );
    assert!(vm.driver.wait_tx_done(secs(2)).unwrap());
    vm.driver.pump_for(ms(100)).unwrap();

    // QEMU's stop: disable, then GET_VRING_BASE on each ring.
    assert_eq!(vm.client.set_vring_enable(0, false, true).unwrap(), Some(0));
    assert_eq!(vm.client.set_vring_enable(1, false, true).unwrap(), Some(0));
    let (i0, rx_base) = vm.client.get_vring_base(0).unwrap();
    let (i1, tx_base) = vm.client.get_vring_base(1).unwrap();
    assert_eq!((i0, i1), (0, 1));
    assert_eq!(
        tx_base as u16,
        vm.driver.txq.avail_idx(),
        "tx base = every published chain consumed"
    );
    assert_eq!(
        rx_base as u16,
        vm.driver.rxq.used_idx(),
        "rx base = used idx (no chain held back)"
    );

    // Suspended: no guest memory writes, no interrupts, but messages are answered.
    let used_rx = vm.driver.rxq.used_idx();
    host.write_all(b"during suspend").unwrap();
    std::thread::sleep(ms(400));
    assert_eq!(vm.driver.rxq.used_idx(), used_rx, "rx used while stopped");
    assert!(!vm.driver.rxq.wait_call(ms(1)), "interrupt while stopped");
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);

    // Resume (crosvm wake / QEMU start): base, addr, kick, enable.
    let setups = vm.driver.vring_setups();
    for (s, base) in setups.iter().zip([rx_base, tx_base]) {
        vm.client
            .set_vring_num(s.index, s.size as u32, false)
            .unwrap();
        vm.client.set_vring_base(s.index, base, false).unwrap();
        vm.client.set_vring_addr(s, false).unwrap();
        vm.client
            .set_vring_kick(s.index, Some(s.kick), false)
            .unwrap();
        vm.client
            .set_vring_call(s.index, Some(s.call), false)
            .unwrap();
        assert_eq!(
            vm.client.set_vring_enable(s.index, true, true).unwrap(),
            Some(0)
        );
    }
    vm.driver.kick_all();
    assert_eq!(
        vm.driver.recv_exact(id, 14, secs(5)).unwrap(),
        b"during suspend"
    );
    vm.driver.send(id, b"after").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"after");
}

#[test]
fn set_vring_call_can_be_replaced_while_running() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 10002);
    vm.driver.pump_for(ms(50)).unwrap();
    let new_call = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.client
        .set_vring_call(0, Some(new_call.as_raw_fd()), false)
        .unwrap();
    // A round trip so the replacement is processed before the data.
    vm.client.get_features().unwrap();
    let old_call = std::mem::replace(&mut vm.driver.rxq.call, new_call);
    let _ = old_call.read();
    // used_event = last used: the next completion must interrupt.
    vm.driver.pump().unwrap();
    host.write_all(b"ring!").unwrap();
    assert!(
        split_queue::wait_fd(vm.driver.rxq.call.as_raw_fd(), secs(3)),
        "no interrupt on the replacement call eventfd"
    );
    assert!(
        old_call.read().is_err(),
        "the old call eventfd was signalled after replacement"
    );
    assert_eq!(vm.driver.recv_exact(id, 5, secs(5)).unwrap(), b"ring!");
}

#[test]
fn rx_buffer_smaller_than_a_header_is_never_overrun() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.rx_layout = vec![16];
    opts.driver.rx_buffers = 1;
    let mut vm = vm_with(&p, opts);
    let bufs = vm.driver.rx_buffers();
    assert_eq!(bufs.len(), 1);
    let b = bufs[0].1[0];
    // Guard bytes right after the 16-byte buffer.
    vm.mem.fill(b.gpa + 16, 256, 0xa5);
    // A REQUEST to a port without listener makes the device want to send a 44-byte RST.
    vm.driver
        .send_packet(&hdr(3, 50000, 10003, OP_REQUEST), &[])
        .unwrap();
    std::thread::sleep(ms(500));
    let used = vm.mem.load_u16(vm.driver.rxq.used + 2, Ordering::Acquire);
    if used > 0 {
        let len = vm.mem.load_u32(vm.driver.rxq.used + 8, Ordering::Acquire);
        assert!(len <= 16, "used len {len} for a 16-byte buffer");
    }
    assert!(
        vm.mem.read_vec(b.gpa + 16, 256).iter().all(|&x| x == 0xa5),
        "the device wrote past the 16-byte rx buffer"
    );
    p.assert_alive();
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);
    drop(vm);
    assert_serves_new_frontend(&p);
}

#[test]
fn one_frontend_leaving_does_not_disturb_another_vm() {
    let p = PluginProcess::multi(&[(3, ""), (4, "")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let (ida, mut ha, _la) = guest_to_host_at(&mut a, &p.vms[0], 10004);
    let (idb, mut hb, _lb) = guest_to_host_at(&mut b, &p.vms[1], 10004);
    drop(a);
    let (_, ended) = read_to_eof(&mut ha, secs(3));
    assert!(
        ended,
        "VM 3's host socket still open after its frontend left"
    );
    let _ = ida;
    b.driver.send(idb, b"still here").unwrap();
    assert_eq!(
        read_exact_timeout(&mut hb, 10, secs(5)).unwrap(),
        b"still here"
    );
    hb.write_all(b"yes").unwrap();
    assert_eq!(b.driver.recv_exact(idb, 3, secs(5)).unwrap(), b"yes");
    // And VM 3 can come back.
    let mut a2 = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let (id2, mut h2, _l2) = guest_to_host_at(&mut a2, &p.vms[0], 10005);
    a2.driver.send(id2, b"back").unwrap();
    assert_eq!(read_exact_timeout(&mut h2, 4, secs(5)).unwrap(), b"back");
}
