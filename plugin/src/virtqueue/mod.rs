//! Virtqueues: the split rings a frontend hands over ([`vring`]) and the buffers of one
//! descriptor chain ([`chain`]).
pub mod chain;
pub(crate) mod guest_io;
pub mod vring;
