//! Repository consistency: the files of this repository agree with each other and with the code.
//! Nothing here runs the plugin; behaviour tests are the other targets of tests/tests/.
//!
//! - [`soong`]: `Android.bp`, `TEST_MAPPING` and AOSP's crate set against the cargo workspace;
//! - [`cuttlefish`]: `cuttlefish/` configs, flag lists, scripts' syntax, the kernel fragment
//!   (against the Debian kernels' configs `tests/real-guest/setup` downloads: `#[ignore]`d here,
//!   run by `tests/run` after setup);
//! - [`readme`]: README.md's option table against the command line's definitions.

mod cuttlefish;
mod readme;
mod soong;
