//! The guest kernels `tests/real-guest/setup` unpacked, read from its `kernels.tsv` manifest.

use std::path::{Path, PathBuf};

/// One unpacked Debian kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Kernel line as selected with `--kernel`: `6.1`, `6.12`.
    pub line: String,
    /// Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Exact Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Directory the package was extracted to (`boot/`, `lib/modules/`).
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// One line for the test output: exact package and version.
    pub fn describe(&self) -> String {
        format!(
            "{} {} (uname -r {})",
            self.package, self.version, self.release
        )
    }
}

/// Where setup caches downloads: `$VSOCK_REAL_GUEST_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/vsock-plugin`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VSOCK_REAL_GUEST_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("vsock-plugin")
}

/// Reads `<cache>/kernels.tsv` (`line package version release root`, tab-separated).
pub fn load(cache: &Path) -> Result<Vec<Kernel>, String> {
    load_manifest(cache, "kernels.tsv")
}

/// Reads another manifest of the same format, e.g. `generic.tsv` (`setup --generic`).
pub fn load_manifest(cache: &Path, name: &str) -> Result<Vec<Kernel>, String> {
    let path = cache.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run tests/real-guest/setup first)", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            return Err(format!("{}: bad line {line:?}", path.display()));
        }
        let k = Kernel {
            line: f[0].into(),
            package: f[1].into(),
            version: f[2].into(),
            release: f[3].into(),
            root: f[4].into(),
        };
        if !k.vmlinuz().is_file() {
            return Err(format!("{} missing (re-run setup)", k.vmlinuz().display()));
        }
        out.push(k);
    }
    if out.is_empty() {
        return Err(format!("{}: no kernels", path.display()));
    }
    Ok(out)
}
