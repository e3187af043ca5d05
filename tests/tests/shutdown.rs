//! Half-close, RST and full close in both directions.

mod common;
use common::*;

use std::io::Write;
use std::net::Shutdown;

#[test]
fn guest_shutdown_send_gives_host_eof_but_host_can_still_write() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6000);
    vm.driver.send(id, b"last words").unwrap();
    vm.driver.shutdown(id, SHUTDOWN_SEND).unwrap();
    let (bytes, ended) = read_to_eof(&mut host, secs(3));
    assert_eq!(bytes, b"last words");
    assert!(ended, "host did not see EOF after guest SHUTDOWN(SEND)");
    host.write_all(b"still talking").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 13, secs(5)).unwrap(),
        b"still talking"
    );
    let c = vm.driver.conn(id);
    assert_eq!(c.state, ConnState::Established, "{:?}", c.history);
}

#[test]
fn host_shutdown_write_gives_guest_shutdown_send_and_guest_can_still_send() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6001);
    host.write_all(b"bye").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    assert_eq!(vm.driver.recv_exact(id, 3, secs(5)).unwrap(), b"bye");
    assert!(
        vm.driver
            .pump_until(secs(3), |d| d.conn(id).peer_shutdown & SHUTDOWN_SEND != 0)
            .unwrap(),
        "no SHUTDOWN(SEND) after host shutdown(Write): {:?}",
        vm.driver.conn(id).history
    );
    assert_eq!(vm.driver.conn(id).state, ConnState::Established);
    vm.driver.send(id, b"reply after half-close").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 22, secs(5)).unwrap(),
        b"reply after half-close"
    );
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6002);
    vm.driver.reset(id).unwrap();
    let (bytes, ended) = read_to_eof(&mut host, secs(3));
    assert!(ended, "host socket open after guest RST");
    assert!(bytes.is_empty());
}

#[test]
fn host_full_close_gives_guest_shutdown_or_rst() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, host, _l) = guest_to_host(&mut vm, &p, 6003);
    drop(host);
    let ok = vm
        .driver
        .pump_until(secs(5), |d| {
            let c = d.conn(id);
            c.state == ConnState::Reset || c.peer_shutdown & (SHUTDOWN_RCV | SHUTDOWN_SEND) == 3
        })
        .unwrap();
    assert!(ok, "after host close: {:?}", vm.driver.conn(id).history);
}

#[test]
fn guest_full_shutdown_closes_host_and_ends_with_rst() {
    let p = plugin(&["--shutdown-timeout-ms", "500"]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6004);
    vm.driver
        .shutdown(id, SHUTDOWN_RCV | SHUTDOWN_SEND)
        .unwrap();
    let (_, ended) = read_to_eof(&mut host, secs(3));
    assert!(ended, "host socket open after guest SHUTDOWN(RCV|SEND)");
    // The device finishes the close with RST (at the latest after the shutdown timeout).
    assert!(
        vm.driver
            .pump_until(secs(3), |d| d.conn(id).state == ConnState::Reset)
            .unwrap(),
        "{:?}",
        vm.driver.conn(id).history
    );
}

#[test]
fn data_after_rst_is_answered_with_rst() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6005);
    vm.driver.reset(id).unwrap();
    let _ = read_to_eof(&mut host, secs(3));
    // A stray RW on the dead connection must not reach anyone and gets RST.
    let h = vm.driver.header(id, OP_RW, 3, 0);
    let conn = vm.driver.conns.remove(&id).unwrap();
    vm.driver.send_packet(&h, b"zzz").unwrap();
    let pkt = vm
        .driver
        .expect_packet_where(secs(2), "RST", |p| p.hdr.op != OP_CREDIT_UPDATE);
    assert_eq!(
        (pkt.hdr.op, pkt.hdr.dst_port),
        (OP_RST, id.local_port),
        "{pkt:?}"
    );
    drop(conn);
}
