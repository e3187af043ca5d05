//! IOTLB UPDATE/INVALIDATE sequences (32-byte `vhost_iotlb_msg` payloads, as IOTLB_MSG carries
//! them) against the device IOTLB, with a small entry cap.
//!
//! Invariants after every message:
//! - entries <= cap, and the tracked entries are disjoint;
//! - an address translates exactly when it lies in a tracked entry (nothing uncounted);
//! - no translation outside what was mapped: a translating address was covered by an UPDATE
//!   and not invalidated since, and it translates to the GPA that UPDATE gave it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, Iommu, Permissions};
use vsock_plugin::iotlb::message::{parse_request, IotlbRequest, MSG_SIZE};
use vsock_plugin::iotlb::VhostIommu;

const CAP: usize = 8;

/// What the guest mapped and has not invalidated: disjoint `(iova, len, gpa)`, newest wins.
#[derive(Default)]
struct Model(Vec<(u64, u64, u64)>);

impl Model {
    fn cut(&mut self, iova: u64, len: u64) {
        let end = iova + len;
        self.0 = self
            .0
            .iter()
            .flat_map(|&(a, l, g)| {
                let a_end = a + l;
                if a_end <= iova || a >= end {
                    return vec![(a, l, g)];
                }
                let mut keep = Vec::new();
                if a < iova {
                    keep.push((a, iova - a, g));
                }
                if a_end > end {
                    keep.push((end, a_end - end, g + (end - a)));
                }
                keep
            })
            .collect();
    }

    fn gpa(&self, at: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|&&(a, l, _)| at >= a && at - a < l)
            .map(|&(a, _, g)| g + (at - a))
    }
}

fuzz_target!(|data: &[u8]| {
    let iommu = VhostIommu::new(CAP);
    let mut model = Model::default();
    let mut probes = Vec::new();
    // Each 33-byte record: one message, then a selector byte for the probe addresses.
    for rec in data.chunks(MSG_SIZE + 1) {
        let (msg, sel) = rec.split_at(rec.len().min(MSG_SIZE));
        match parse_request(msg) {
            Ok(IotlbRequest::Update {
                iova, size, uaddr, ..
            }) => {
                // Pretend the frontend address resolved to one guest-physical piece at uaddr.
                iommu.map(&[(iova, uaddr, size)], Permissions::ReadWrite);
                model.cut(iova, size);
                model.0.push((iova, size, uaddr));
                probes.extend([iova, iova + size - 1, iova.wrapping_sub(1), iova + size]);
            }
            Ok(IotlbRequest::Invalidate { iova, size }) => {
                iommu.invalidate(iova, size);
                model.cut(iova, size);
                probes.extend([iova, iova + size - 1, iova.wrapping_sub(1)]);
            }
            Err(_) => {}
        }
        if let Some(&s) = sel.first() {
            probes.push((s as u64) << 12);
        }
        let ranges = iommu.installed_ranges();
        assert!(
            ranges.len() <= CAP,
            "{} entries with cap {CAP}",
            ranges.len()
        );
        assert_eq!(iommu.entries(), ranges.len());
        let mut sorted = ranges.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping entries {w:?}");
        }
        for &at in probes.iter().rev().take(16) {
            let tracked = ranges.iter().any(|&(a, l)| at >= a && at - a < l);
            let hit = iommu
                .translate(GuestAddress(at), 1, Permissions::Read)
                .ok()
                .and_then(|mut it| it.next())
                .map(|r| r.base.0);
            let _ = iommu.take_fail();
            assert_eq!(
                hit.is_some(),
                tracked,
                "iova {at:#x}: translation vs entries"
            );
            if let Some(gpa) = hit {
                assert_eq!(
                    Some(gpa),
                    model.gpa(at),
                    "iova {at:#x} outside what was mapped"
                );
            }
        }
    }
});
