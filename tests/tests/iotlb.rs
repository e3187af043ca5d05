//! IOTLB contract (shared/reference/iotlb-contract.md §8): bit 33 never turns translation on,
//! translation is an explicit opt-in, and every mismatch fails loudly.
//!
//! Translated sessions here use identity IOVAs (IOVA = guest-physical address) so the guest
//! driver needs no changes; the IOTLB still starts empty and every access has to be mapped by an
//! UPDATE first. `IommuServer` plays QEMU: it answers each MISS by sending UPDATEs on the main
//! channel (NEED_REPLY, waiting for the ack) and only then replying on the backend channel.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vsock_plugin_tests::frontend::iotlb::{self, *};

const BASE: u64 = F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES;

fn send_iotlb(c: &mut VhostUserClient, msg: &[u8]) -> u64 {
    iotlb::send_iotlb(c, msg).expect("IOTLB_MSG reply")
}

fn gpa(mem: &GuestMemory, va: u64) -> u64 {
    gpa_of(mem, va).expect("VA inside guest memory")
}

/// A cold translated session (misses go to the test IOMMU); `err` is the tx queue's error fd.
fn translated_handshake(
    c: &mut VhostUserClient,
    mem: &GuestMemory,
    vrings: &[VringSetup],
    err: Option<&EventFd>,
) -> std::io::Result<Negotiated> {
    handshake_translated(c, mem, vrings, err.map(|e| e.as_raw_fd()), false)
}

/// How the test IOMMU answers misses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// UPDATE covering all guest RAM read-write, then reply 0 (QEMU's order).
    MapAll,
    /// Map all RAM read-only, then reply 0 (a write access can never succeed).
    MapReadOnly,
    /// Never answer.
    Silent,
}

struct IommuServer {
    misses: Arc<Mutex<Vec<(u64, u8)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(VhostUserClient, UnixStream)>>,
}

impl IommuServer {
    fn start(mut client: VhostUserClient, mem: &GuestMemory, answer: Answer) -> IommuServer {
        let backend: UnixStream = client.backend_channel.take().expect("backend channel");
        backend.set_read_timeout(Some(ms(50))).unwrap();
        let regions: Vec<(u64, u64, u64)> = mem
            .regions()
            .iter()
            .map(|r| (r.gpa, r.size, r.frontend_va()))
            .collect();
        let misses = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (misses.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut backend = backend;
            while !s.load(Ordering::Acquire) {
                let mut hdr = [0u8; 12];
                match backend.read_exact(&mut hdr) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                }
                let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
                assert_eq!(
                    (word(0), word(4) & 0xf, word(8)),
                    (1, 0x9, 32),
                    "BACKEND_IOTLB_MSG with NEED_REPLY"
                );
                let mut body = [0u8; 32];
                backend.read_exact(&mut body).unwrap();
                assert_eq!(body[25], IOTLB_MISS);
                let iova = u64::from_ne_bytes(body[0..8].try_into().unwrap());
                m.lock().unwrap().push((iova, body[24]));
                if answer == Answer::Silent {
                    continue;
                }
                let perm = if answer == Answer::MapReadOnly {
                    PERM_RO
                } else {
                    PERM_RW
                };
                for &(gpa, size, va) in &regions {
                    assert_eq!(
                        send_iotlb(&mut client, &iotlb_msg(gpa, size, va, perm, IOTLB_UPDATE)),
                        0
                    );
                }
                let mut reply = Vec::new();
                reply.extend_from_slice(&1u32.to_ne_bytes());
                reply.extend_from_slice(&0x5u32.to_ne_bytes());
                reply.extend_from_slice(&8u32.to_ne_bytes());
                reply.extend_from_slice(&0u64.to_ne_bytes());
                backend.write_all(&reply).unwrap();
            }
            (client, backend)
        });
        IommuServer {
            misses,
            stop,
            handle: Some(handle),
        }
    }

    fn misses(&self) -> Vec<(u64, u8)> {
        self.misses.lock().unwrap().clone()
    }

    fn finish(mut self) -> VhostUserClient {
        self.stop.store(true, Ordering::Release);
        let (mut client, backend) = self
            .handle
            .take()
            .unwrap()
            .join()
            .expect("IOMMU server thread");
        client.backend_channel = Some(backend);
        client
    }
}

fn translated_vm(p: &PluginProcess, err: Option<&EventFd>) -> Vm {
    let client = VhostUserClient::connect(&p.vm().socket).unwrap();
    Vm::build(client, VmOptions::qemu(), |c, mem, v| {
        translated_handshake(c, mem, v, err)
    })
    .expect("translated handshake")
}

fn offers(extra: &[&str]) -> (u64, u64) {
    let p = plugin(extra);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    (
        c.get_features().unwrap(),
        c.get_protocol_features().unwrap(),
    )
}

#[test]
fn t1_t2_t3_offers_per_profile() {
    let (f, pf) = offers(&[]);
    assert_eq!(
        (f & F_ACCESS_PLATFORM, pf & PF_BACKEND_REQ),
        (0, 0),
        "default"
    );
    let (f, pf) = offers(&["--access-platform"]);
    assert_eq!(
        (f & F_ACCESS_PLATFORM, pf & PF_BACKEND_REQ),
        (F_ACCESS_PLATFORM, 0),
        "access-platform never offers BACKEND_REQ"
    );
    let (f, pf) = offers(&["--iotlb", "required"]);
    assert_eq!(f & F_ACCESS_PLATFORM, F_ACCESS_PLATFORM);
    assert_eq!(
        pf & (PF_BACKEND_REQ | PF_REPLY_ACK),
        PF_BACKEND_REQ | PF_REPLY_ACK
    );
}

#[test]
fn t4_unoffered_bit33_is_refused_and_changes_nothing() {
    let p = plugin(&[]);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    let pf = c.get_protocol_features().unwrap();
    c.set_protocol_features(pf, false).unwrap();
    assert_ne!(
        c.set_features(BASE | F_ACCESS_PLATFORM, true).unwrap(),
        Some(0)
    );
    assert_eq!(
        c.set_features(BASE, true).unwrap(),
        Some(0),
        "a correct SET_FEATURES still works"
    );
    p.assert_alive();
}

#[test]
fn t5_iotlb_msg_in_untranslated_session_gets_nonzero_and_close() {
    for extra in [&[][..], &["--access-platform"][..]] {
        let p = plugin(extra);
        let mut vm = qemu_vm(&p);
        let status = send_iotlb(
            &mut vm.client,
            &iotlb_msg(0x1000, 0x1000, 0x1000, PERM_RW, IOTLB_UPDATE),
        );
        assert_ne!(status, 0, "{extra:?}");
        assert!(
            vm.client.closed_within(secs(2)),
            "the session must end: the frontend expects translation"
        );
        assert_logged(&p, "does not translate");
        // The plugin survives and serves the next frontend untranslated.
        let mut vm2 = qemu_vm(&p);
        let (_id, mut host, _l) = guest_to_host(&mut vm2, &p, 7000);
        host.write_all(b"ping").unwrap();
        p.assert_alive();
    }
}

#[test]
fn t6_access_platform_crosvm_pvm_shape_is_passthrough() {
    // crosvm forwards bit 33 for protected VMs but sends VAs and GPAs and never IOTLB messages.
    let p = plugin(&["--access-platform"]);
    let mut opts = VmOptions::crosvm();
    opts.crosvm.features_mask |= F_ACCESS_PLATFORM;
    let mut vm = vm_with(&p, opts);
    assert_ne!(
        vm.negotiated.features & F_ACCESS_PLATFORM,
        0,
        "bit 33 negotiated"
    );
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 7001);
    vm.driver.send(id, b"guest bytes").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 11, secs(5)).unwrap(),
        b"guest bytes"
    );
    host.write_all(b"host bytes").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 10, secs(5)).unwrap(),
        b"host bytes"
    );
    assert_logged(&p, "untranslated");
}

#[test]
fn t7_required_without_bit33_is_refused_and_rings_stay_idle() {
    let p = plugin(&["--iotlb", "required"]);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    let pf = c.get_protocol_features().unwrap();
    c.set_protocol_features(pf, false).unwrap();
    assert_ne!(c.set_features(BASE, true).unwrap(), Some(0));
    assert_logged(&p, "required");
    p.assert_alive();
}

#[test]
fn t8_t16_translated_session_misses_first_then_moves_data() {
    let p = plugin(&["--iotlb", "required"]);
    let vm = translated_vm(&p, None);
    let Vm {
        client,
        mem,
        mut driver,
        ..
    } = vm;
    let desc_iova = gpa(&mem, driver.vring_setups()[1].desc_va);
    let server = IommuServer::start(client, &mem, Answer::MapAll);
    let l = listen(&p.vm().port_path(7002));
    let id = driver
        .connect(2, 7002, TYPE_STREAM)
        .expect("connect through a translated session");
    let mut host = accept_timeout(&l, secs(5)).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut reader = host.try_clone().unwrap();
    let n = data.len();
    let got = std::thread::spawn(move || read_exact_timeout(&mut reader, n, secs(10)).unwrap());
    driver.send(id, &data).unwrap();
    assert_eq!(got.join().unwrap(), data);
    host.write_all(&data[..100_000]).unwrap();
    assert_eq!(
        driver.recv_exact(id, 100_000, secs(10)).unwrap(),
        &data[..100_000]
    );
    let misses = server.misses();
    assert!(!misses.is_empty(), "the IOTLB starts empty");
    assert!(
        misses
            .iter()
            .any(|&(iova, perm)| iova == desc_iova && perm == PERM_RO),
        "a MISS for the tx descriptor table (RO): {misses:x?}"
    );
    // After the whole RAM was mapped, no more misses were needed.
    assert!(misses.len() <= 3, "{misses:x?}");
    server.finish();
}

#[test]
fn t9_invalid_updates_are_refused_without_state_change() {
    let p = plugin(&["--iotlb", "required"]);
    let mut vm = translated_vm(&p, None);
    let va = vm.mem.regions()[1].frontend_va();
    let c = &mut vm.client;
    for bad in [
        iotlb_msg(0x10000, 0, va, PERM_RW, IOTLB_UPDATE),
        iotlb_msg(u64::MAX - 0x10, 0x1000, va, PERM_RW, IOTLB_UPDATE),
        iotlb_msg(0x10000, 0x1000, u64::MAX - 0x10, PERM_RW, IOTLB_UPDATE),
        iotlb_msg(0x10000, 0x1000, 0x1000, PERM_RW, IOTLB_UPDATE), // not inside the memory table
        iotlb_msg(0x10000, 0x1000, va, 0, IOTLB_UPDATE),
        iotlb_msg(0x10000, 0x1000, va, 4, IOTLB_UPDATE),
        iotlb_msg(0x10000, 0x1000, va, PERM_RW, 5),
        iotlb_msg(0x10000, 0x1000, va, PERM_RW, IOTLB_MISS),
        iotlb_msg(0x10000, 0, 0, 0, IOTLB_INVALIDATE),
    ] {
        assert_ne!(send_iotlb(c, &bad), 0, "{bad:02x?}");
    }
    assert_ne!(
        c.request_bytes(FrontendReq::IOTLB_MSG, &[0u8; 31], &[], true)
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        send_iotlb(c, &iotlb_msg(0x10000, 0x1000, va, PERM_WO, IOTLB_UPDATE)),
        0
    );
    assert_eq!(
        send_iotlb(c, &iotlb_msg(0, u64::MAX, 0, 0, IOTLB_INVALIDATE)),
        0
    );
    p.assert_alive();
}

#[test]
fn t11_read_only_mapping_for_a_device_write_stops_the_queue() {
    let p = plugin(&["--iotlb", "required", "--iotlb-miss-timeout-ms", "1000"]);
    let err = EventFd::new(EFD_NONBLOCK).unwrap();
    let Vm {
        client,
        mem,
        mut driver,
        ..
    } = translated_vm(&p, Some(&err));
    let server = IommuServer::start(client, &mem, Answer::MapReadOnly);
    // The used ring needs write access: with only read-only mappings the tx queue cannot run.
    let _ = driver.connect_start(2, 7003, TYPE_STREAM);
    let deadline = Instant::now() + secs(5);
    while err.read().is_err() && Instant::now() < deadline {
        std::thread::sleep(ms(20));
    }
    assert!(
        Instant::now() < deadline,
        "VRING_ERR signalled for the tx queue"
    );
    let misses = server.misses();
    assert!(
        misses.iter().any(|&(_, perm)| perm == PERM_WO),
        "a MISS asked for write access: {misses:x?}"
    );
    assert_logged(&p, "permission");
    let mut client = server.finish();
    assert_eq!(
        client.get_vring_base(1).unwrap(),
        (1, 0),
        "the descriptor was not consumed"
    );
    p.assert_alive();
}

#[test]
fn t13_t17_unanswered_miss_times_out_and_nothing_is_consumed() {
    let p = plugin(&["--iotlb", "required", "--iotlb-miss-timeout-ms", "300"]);
    let err = EventFd::new(EFD_NONBLOCK).unwrap();
    let Vm {
        client,
        mem,
        mut driver,
        ..
    } = translated_vm(&p, Some(&err));
    let server = IommuServer::start(client, &mem, Answer::Silent);
    let _ = driver.connect_start(2, 7004, TYPE_STREAM);
    std::thread::sleep(ms(800));
    assert_eq!(err.read().ok(), Some(1), "VRING_ERR after the miss timeout");
    assert_eq!(
        server.misses().len(),
        1,
        "one MISS, not a storm: {:x?}",
        server.misses()
    );
    let mut client = server.finish();
    assert_eq!(
        client.get_vring_base(1).unwrap(),
        (1, 0),
        "the descriptor was not consumed"
    );
    assert_logged(&p, "no IOTLB mapping");
    p.assert_alive();
}

#[test]
fn t14_stopping_all_rings_flushes_the_iotlb() {
    let p = plugin(&["--iotlb", "required"]);
    let vm = translated_vm(&p, None);
    let Vm {
        client,
        mem,
        mut driver,
        ..
    } = vm;
    let server = IommuServer::start(client, &mem, Answer::MapAll);
    let l = listen(&p.vm().port_path(7005));
    let _id = driver.connect(2, 7005, TYPE_STREAM).unwrap();
    let _host = accept_timeout(&l, secs(5)).unwrap();
    let before = server.misses().len();
    let mut client = server.finish();
    // Suspend (all rings stopped), then restart them at the same place.
    let bases: Vec<u32> = (0..2)
        .map(|q| client.get_vring_base(q).unwrap().1)
        .collect();
    let setups = driver.vring_setups();
    for v in &setups {
        let iova = with_iovas(&mem, v).unwrap();
        client
            .set_vring_base(v.index, bases[v.index as usize], true)
            .unwrap();
        client.set_vring_addr(&iova, true).unwrap();
        client.set_vring_kick(v.index, Some(v.kick), true).unwrap();
    }
    let server = IommuServer::start(client, &mem, Answer::MapAll);
    let l2 = listen(&p.vm().port_path(7006));
    let _id2 = driver.connect(2, 7006, TYPE_STREAM).unwrap();
    let _host2 = accept_timeout(&l2, secs(5)).unwrap();
    assert!(
        before >= 1 && !server.misses().is_empty(),
        "mappings did not survive the stop: {:x?}",
        server.misses()
    );
    server.finish();
}

#[test]
fn bit33_acked_with_access_platform_never_translates_qemu_shape() {
    // Regression for the 2022 crosvm/Android breakage: bit 33 alone must not switch translation
    // on. With access-platform a session acking bit 33 moves data with GPAs and VAs (no IOTLB).
    let p = plugin(&["--access-platform"]);
    let mut opts = VmOptions::qemu();
    opts.qemu.features_mask |= F_ACCESS_PLATFORM;
    let mut vm = vm_with(&p, opts);
    assert_ne!(vm.negotiated.features & F_ACCESS_PLATFORM, 0);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 7007);
    vm.driver.send(id, b"no iotlb").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 8, secs(5)).unwrap(),
        b"no iotlb"
    );
}

#[test]
fn t10_after_an_invalidate_ack_the_old_mapping_is_never_used() {
    // Guest pointers never outlive one call on the worker thread that also acks the INVALIDATE,
    // so once the ack arrives the device must go back to the frontend for every access.
    let p = plugin(&["--iotlb", "required"]);
    let Vm {
        client,
        mem,
        mut driver,
        ..
    } = translated_vm(&p, None);
    let server = IommuServer::start(client, &mem, Answer::MapAll);
    let l = listen(&p.vm().port_path(7008));
    let id = driver.connect(2, 7008, TYPE_STREAM).unwrap();
    let mut host = accept_timeout(&l, secs(5)).unwrap();
    driver.send(id, b"before").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"before"
    );
    let mut client = server.finish();
    assert_eq!(
        send_iotlb(&mut client, &iotlb_msg(0, u64::MAX, 0, 0, IOTLB_INVALIDATE)),
        0
    );
    let server = IommuServer::start(client, &mem, Answer::MapAll);
    driver.send(id, b"after").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"after");
    assert!(
        !server.misses().is_empty(),
        "data after the INVALIDATE needed new mappings"
    );
    server.finish();
}
