//! Cuttlefish's `vhost_device_vsock` sandbox policy as a seccomp filter, and a launcher that runs
//! a program under it (`seccomp-run`), naming every call outside the policy. x86_64 only (the
//! policy is written in x86_64 syscall numbers, as Cuttlefish's host tools are).

pub mod launcher;
pub mod names;
pub mod policy;
