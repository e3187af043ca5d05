//! Support for running the plugin under `seccomp-run` (`tests/src/bin/seccomp-run/`: Cuttlefish's
//! `vhost_device_vsock` sandbox policy as a seccomp filter, and a launcher naming every call outside
//! it). The policy and launcher live in that binary, not here, so this library (also a Soong module)
//! needs no `seccompiler`.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `dir/NAME`, an executable script running `plugin plugin_args... "$@"` under
/// `seccomp-run launcher_args...`, to stand in for the plugin binary (`VSOCK_PLUGIN_BIN`, or a
/// real-guest `--backend`). The script `exec`s, so its pid is the launcher's; killing the launcher
/// kills the plugin (`PR_SET_PDEATHSIG`).
pub fn write_wrapper(
    dir: &Path,
    name: &str,
    seccomp_run: &Path,
    launcher_args: &[&str],
    plugin: &Path,
    plugin_args: &[&str],
) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = vec![q(&seccomp_run.to_string_lossy())];
    line.extend(launcher_args.iter().map(|a| q(a)));
    line.push("--".into());
    line.push(q(&plugin.to_string_lossy()));
    line.extend(plugin_args.iter().map(|a| q(a)));
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec {} \"$@\"\n", line.join(" ")),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}
