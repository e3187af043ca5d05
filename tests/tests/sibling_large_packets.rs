//! Regression: a sibling packet larger than the receiving guest's rx buffer (Linux posts 4 KiB
//! buffers; a 6.12 guest sends up to 64 KiB per packet) used to wait in the inbox forever. It
//! is now split across buffers, bytes intact and in order.

mod common;
use common::*;

#[test]
fn a_64k_sibling_packet_reaches_a_guest_with_4k_rx_buffers() {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::qemu().cid(4)).unwrap();
    assert_eq!(
        b.driver.cfg.rx_layout,
        vec![4096],
        "the receiver posts 4 KiB buffers"
    );
    b.driver.listen(9100);
    let id = a.driver.connect_start(4, 9100, TYPE_STREAM).unwrap();
    let req = b
        .driver
        .wait_request(9100, secs(5))
        .unwrap()
        .expect("REQUEST relayed");
    let bid = b.driver.accept_request(&req).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(5)).unwrap(),
        ConnState::Established
    );

    let data: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 253) as u8).collect();
    let hdr = a.driver.header(id, OP_RW, data.len() as u32, 0);
    a.driver.send_packet(&hdr, &data).unwrap();
    assert_eq!(b.driver.recv_exact(bid, data.len(), secs(5)).unwrap(), data);
    p.assert_alive();
}
