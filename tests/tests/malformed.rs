//! Malformed input: each case on its own; afterwards the plugin must still be alive and serve a new
//! frontend on the same socket path.

mod common;
use common::*;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserMemoryRegion, VhostUserVringState,
};
use vm_memory::ByteValued;

fn mem_table_bytes(regions: &[VhostUserMemoryRegion], n: u32) -> Vec<u8> {
    let mut v = VhostUserMemory::new(n).as_slice().to_vec();
    for r in regions {
        v.extend_from_slice(r.as_slice());
    }
    v
}

#[test]
fn unknown_request_id() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    c.send_raw(
        9999,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &[1, 2, 3, 4, 5, 6, 7, 8],
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "request 9999");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn header_size_above_4096() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let payload = vec![0u8; 8192];
    let _ = c.send_raw_sized(
        FrontendReq::SET_VRING_NUM as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        8192,
        &payload,
        &[],
    );
    expect_rejected(&mut c, "header size 8192");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn payload_shorter_than_its_type() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    // SET_VRING_NUM needs 8 bytes (index, num); send 4.
    c.send_raw(
        FrontendReq::SET_VRING_NUM as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &0u32.to_ne_bytes(),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_NUM with 4 payload bytes");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_mem_table_with_fewer_fds_than_regions() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let mem = GuestMemory::new(&[(0, 1 << 20), (1 << 30, 1 << 20)]).unwrap();
    let r: Vec<_> = mem
        .regions()
        .iter()
        .map(|r| VhostUserMemoryRegion::new(r.gpa, r.size, r.frontend_va(), 0))
        .collect();
    c.send_raw(
        FrontendReq::SET_MEM_TABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &mem_table_bytes(&r, 2),
        &[mem.regions()[0].fd()],
    )
    .unwrap();
    expect_rejected(&mut c, "2 regions, 1 fd");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_mem_table_with_more_fds_than_regions() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let mem = GuestMemory::new(&[(0, 1 << 20), (1 << 30, 1 << 20)]).unwrap();
    let r0 = mem.regions()[0].frontend_va();
    c.send_raw(
        FrontendReq::SET_MEM_TABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &mem_table_bytes(&[VhostUserMemoryRegion::new(0, 1 << 20, r0, 0)], 1),
        &[mem.regions()[0].fd(), mem.regions()[1].fd()],
    )
    .unwrap();
    expect_rejected(&mut c, "1 region, 2 fds");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_mem_table_with_zero_regions() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    c.send_raw(
        FrontendReq::SET_MEM_TABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &mem_table_bytes(&[], 0),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "0 regions");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_mem_table_region_size_overflows() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let mem = GuestMemory::single(1 << 20).unwrap();
    let r = VhostUserMemoryRegion::new(0x1000, u64::MAX - 0x10, mem.regions()[0].frontend_va(), 0);
    c.send_raw(
        FrontendReq::SET_MEM_TABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &mem_table_bytes(&[r], 1),
        &[mem.regions()[0].fd()],
    )
    .unwrap();
    expect_rejected(&mut c, "region size u64::MAX - 0x10");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_mem_table_region_larger_than_its_fd() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let mem = GuestMemory::single(1 << 20).unwrap();
    // 1 MiB memfd described as 1 GiB: mmap may succeed, but the region must not be trusted
    // blindly; at minimum the plugin must not crash.
    let r = VhostUserMemoryRegion::new(0, 1 << 30, mem.regions()[0].frontend_va(), 1 << 40);
    c.send_raw(
        FrontendReq::SET_MEM_TABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &mem_table_bytes(&[r], 1),
        &[mem.regions()[0].fd()],
    )
    .unwrap();
    expect_rejected(&mut c, "mmap_offset 2^40 beyond the memfd");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_vring_num_not_a_power_of_two_zero_or_too_large() {
    let p = plugin(&[]);
    for num in [100u32, 0, 65536, 32769] {
        let mut c = owned_client(&p);
        let ack = c.set_vring_num(0, num, true);
        match ack {
            Ok(Some(v)) => assert_ne!(v, 0, "SET_VRING_NUM {num} accepted"),
            Ok(None) => unreachable!(),
            Err(_) => assert!(
                c.closed_within(secs(2)),
                "SET_VRING_NUM {num}: no reply, not closed"
            ),
        }
    }
    // 32768 itself is fine.
    let mut c = owned_client(&p);
    assert_eq!(c.set_vring_num(0, 32768, true).unwrap(), Some(0));
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_vring_num_above_configured_queue_size() {
    let p = plugin(&["--queue-size", "256"]);
    let mut c = owned_client(&p);
    assert_eq!(c.set_vring_num(0, 256, true).unwrap(), Some(0));
    let ack = c.set_vring_num(1, 512, true);
    assert!(
        !matches!(ack, Ok(Some(0))),
        "SET_VRING_NUM 512 accepted with --queue-size 256"
    );
}

#[test]
fn set_vring_addr_outside_the_memory_table() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    let mem = GuestMemory::single(1 << 20).unwrap();
    assert_eq!(c.set_mem_table(&mem, true).unwrap(), Some(0));
    assert_eq!(c.set_vring_num(0, 128, true).unwrap(), Some(0));
    let va = mem.regions()[0].frontend_va();
    let bogus = VringSetup {
        index: 0,
        size: 128,
        // Just past the end of the only region.
        desc_va: va + (1 << 20),
        avail_va: va + (1 << 20) + 0x800,
        used_va: va + (1 << 20) + 0x1000,
        kick: -1,
        call: -1,
        err: None,
    };
    c.send_raw(
        FrontendReq::SET_VRING_ADDR as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        vhost::vhost_user::message::VhostUserVringAddr::new(
            0,
            vhost::vhost_user::message::VhostUserVringAddrFlags::empty(),
            bogus.desc_va,
            bogus.used_va,
            bogus.avail_va,
            0,
        )
        .as_slice(),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_ADDR outside the memory table");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn vring_index_7() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    c.send_raw(
        FrontendReq::SET_VRING_NUM as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        VhostUserVringState::new(7, 128).as_slice(),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_NUM index 7");
    drop(c);

    let mut c = owned_client(&p);
    let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    use std::os::fd::AsRawFd;
    c.send_raw(
        FrontendReq::SET_VRING_KICK as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &7u64.to_ne_bytes(),
        &[efd.as_raw_fd()],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_KICK index 7");
    drop(c);

    let mut c = owned_client(&p);
    c.send_raw(
        FrontendReq::SET_VRING_ENABLE as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        VhostUserVringState::new(7, 1).as_slice(),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_ENABLE index 7");
    drop(c);
    assert_serves_new_frontend(&p);
}

#[test]
fn set_vring_kick_without_fd_and_without_nofd_bit() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    c.send_raw(
        FrontendReq::SET_VRING_KICK as u32,
        FLAG_VERSION | FLAG_NEED_REPLY,
        &0u64.to_ne_bytes(),
        &[],
    )
    .unwrap();
    expect_rejected(&mut c, "SET_VRING_KICK without fd");
    drop(c);
    assert_serves_new_frontend(&p);
}

/// Two VMs; VM 0 puts a tx descriptor outside guest memory. Its tx queue stops and its error
/// eventfd fires; VM 1 keeps working.
#[test]
fn tx_descriptor_outside_guest_memory() {
    let p = PluginProcess::multi(&[(3, ""), (4, "")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::qemu().cid(4)).unwrap();
    let l = listen(&p.vms[0].port_path(2000));

    let head = a
        .driver
        .txq
        .push(&[Buf {
            gpa: 0x7000_0000_0000,
            len: 44,
            writable: false,
        }])
        .unwrap();
    a.driver.txq.notify();
    assert!(
        a.driver.txq.wait_err(secs(2)),
        "SET_VRING_ERR eventfd not signalled for a descriptor outside guest memory (head {head})"
    );
    // That queue stopped: a valid REQUEST on it is not processed.
    let h = hdr(3, 50000, 2000, OP_REQUEST);
    let _ = a.driver.send_packet(&h, &[]);
    assert!(
        a.driver.recv_packet(ms(500)).unwrap().is_none(),
        "the failed tx queue still produced replies"
    );
    assert!(
        accept_timeout(&l, ms(100)).is_err(),
        "the failed tx queue still connected"
    );

    // The other VM is unaffected.
    let (id, mut host, _l) = guest_to_host_at(&mut b, &p.vms[1], 2001);
    b.driver.send(id, b"fine").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 4, secs(5)).unwrap(), b"fine");
    p.assert_alive();
}

#[test]
fn tx_descriptor_chain_loop() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    // Descriptor 5 -> 6 -> 5 ... (NEXT flags forming a cycle), published as head 5.
    let buf = vm.mem.alloc(64, 8);
    vm.mem
        .write(buf, &hdr(3, 50000, 2000, OP_REQUEST).to_bytes());
    vm.driver.txq.write_desc(5, buf, 20, 1, 6);
    vm.driver.txq.write_desc(6, buf + 20, 24, 1, 5);
    vm.driver.txq.publish_raw(5);
    vm.driver.txq.notify();
    // No hang, no crash: the plugin stays responsive on the vhost-user socket.
    assert!(vm.driver.txq.wait_err(secs(2)) || p.is_alive());
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);
    drop(vm);
    assert_serves_new_frontend(&p);
}

#[test]
fn rw_header_len_larger_than_the_descriptors() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 2002);
    // RW claiming 1000 bytes, only 10 present in the chain.
    let mut h = vm.driver.header(id, OP_RW, 1000, 0);
    h.len = 1000;
    vm.driver
        .send_packet_with(&h, b"0123456789", &TxLayout::HeaderSeparate(1))
        .unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + ms(500);
    while std::time::Instant::now() < deadline {
        match read_some(&mut host, ms(50)) {
            ReadOutcome::Data(d) => got.extend_from_slice(&d),
            ReadOutcome::Timeout => {}
            _ => break,
        }
    }
    assert!(
        got.is_empty() || got == b"0123456789",
        "host received {} bytes for a packet with 10 payload bytes: {:02x?}",
        got.len(),
        &got[..got.len().min(64)]
    );
    assert!(got.len() <= 10);
    drop(vm);
    assert_serves_new_frontend(&p);
}

#[test]
fn request_with_wrong_src_cid_is_dropped() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(2003));
    let mut h = hdr(7, 50000, 2003, OP_REQUEST);
    vm.driver.send_packet(&h, &[]).unwrap();
    assert!(
        accept_timeout(&l, ms(500)).is_err(),
        "a REQUEST with src_cid 7 from guest 3 created a host connection"
    );
    if let Some(pkt) = vm.driver.recv_packet(ms(100)).unwrap() {
        assert_ne!(
            pkt.hdr.op, OP_RESPONSE,
            "RESPONSE to a spoofed REQUEST: {pkt:?}"
        );
    }
    // The correct one works.
    h.src_cid = 3;
    vm.driver.send_packet(&h, &[]).unwrap();
    let (resp, skipped) = vm
        .driver
        .recv_until(secs(2), |p| p.hdr.dst_port == 50000)
        .unwrap();
    let resp = resp.unwrap_or_else(|| panic!("no reply to a valid REQUEST; saw {skipped:?}"));
    assert_eq!(resp.hdr.op, OP_RESPONSE, "{resp:?}");
    assert!(accept_timeout(&l, secs(2)).is_ok());
}
