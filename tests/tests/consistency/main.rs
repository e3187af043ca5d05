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

use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `p` relative to the root, for messages.
fn rel(p: &Path) -> String {
    p.strip_prefix(root())
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Every file under `dir` (recursively) that `pred` accepts, sorted.
fn files(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p, pred));
            } else if pred(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Fails with one line per problem.
fn fail_if(errors: Vec<String>, what: &str) {
    if !errors.is_empty() {
        panic!(
            "{what}: {} problem(s)\n  - {}\n",
            errors.len(),
            errors.join("\n  - ")
        );
    }
}
