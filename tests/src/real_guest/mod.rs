//! Real-guest tests: boots stock Debian kernels under QEMU (TCG) against a vhost-user vsock backend
//! and runs the guest side of each case in `vsock-guest-agent`. Entry point: `tests/real-guest/run`
//! (setup, builds, then the `real-guest` binary, i.e. [`runner::main`]).
pub mod backend;
pub mod binder;
pub mod cases;
pub mod group;
pub mod host;
pub mod initramfs;
pub mod iommu;
pub mod kernels;
pub mod measure;
pub mod pattern;
pub mod proto;
pub mod qemu;
pub mod runner;
pub mod selftest;
pub mod util;
