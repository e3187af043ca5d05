//! The guest-reachable namespace of each VM: a guest connection to host port P goes to
//! `<uds-path>_P`, so any socket of this process named like that would be reachable by the guest
//! with the plugin's own identity (a confused deputy: the control plane trusts the plugin's uid,
//! and another VM's vhost-user or hybrid socket would be taken over). Such a configuration is
//! refused at start-up; at connect time the device also refuses any target whose listener is this
//! process (`host::unix::peer_is_this_process`), for paths created later or reached by symlink.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::VmConfig;

/// A socket of this process that a guest could reach through its `<uds-path>_<port>` mapping.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {path:?} is inside the guest-reachable namespace of guest-cid {cid} \
     (<uds-path>_<port> = {uds:?}_{port}): that guest could connect to it; choose another path"
)]
pub struct NamespaceError {
    pub what: String,
    pub path: PathBuf,
    pub cid: u64,
    pub uds: PathBuf,
    pub port: u32,
}

/// The path of a `unix://PATH#NAME` control URI (None for binder:// and abstract sockets).
pub fn control_socket_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("unix://")?;
    let end = rest.find(['#', '?']).unwrap_or(rest.len());
    Some(PathBuf::from(&rest[..end]))
}

/// Refuses configurations where a vhost-user socket, a hybrid socket or the control socket lies
/// at some VM's `<uds-path>_<port>`. Linear in the total length of the paths.
pub fn check(vms: &[VmConfig], control: Option<&str>) -> Result<(), NamespaceError> {
    // "<uds-path>_" of every VM → its index.
    let prefixes: HashMap<Vec<u8>, usize> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            let mut p = vm.uds_path.as_os_str().as_bytes().to_vec();
            p.push(b'_');
            (p, i)
        })
        .collect();
    let mut sockets: Vec<(String, &Path)> = Vec::new();
    for vm in vms {
        if let Some(s) = &vm.socket {
            sockets.push((
                format!("the vhost-user socket of guest-cid {}", vm.guest_cid),
                s,
            ));
        }
        sockets.push((
            format!("the hybrid socket (uds-path) of guest-cid {}", vm.guest_cid),
            &vm.uds_path,
        ));
    }
    let control_path = control.and_then(control_socket_path);
    if let Some(p) = &control_path {
        sockets.push(("the control socket".to_string(), p));
    }
    for (what, path) in sockets {
        let bytes = path.as_os_str().as_bytes();
        for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'_') {
            let Some(&vm) = prefixes.get(&bytes[..=i]) else {
                continue;
            };
            if let Some(port) = canonical_port(&bytes[i + 1..]) {
                return Err(NamespaceError {
                    what,
                    path: path.to_path_buf(),
                    cid: vms[vm].guest_cid,
                    uds: vms[vm].uds_path.clone(),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// The port whose `<uds-path>_<port>` ends in `digits`, as the device formats it (decimal, no
/// sign, no leading zero).
fn canonical_port(digits: &[u8]) -> Option<u32> {
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(cid: u64, socket: &str, uds: &str) -> VmConfig {
        VmConfig::with_defaults(cid, Some(socket.into()), None, uds.into())
    }

    #[test]
    fn refuses_own_sockets_inside_a_guest_namespace() {
        let ok = [vm(3, "/d/a.vhost", "/d/a"), vm(4, "/d/b.vhost", "/d/b")];
        assert_eq!(check(&ok, Some("unix:///d/ctl#x")), Ok(()));
        // Names that no port formats to are not reachable.
        let odd = [vm(3, "/d/a_x", "/d/a"), vm(4, "/d/a_05", "/d/a_1x")];
        assert_eq!(check(&odd, Some("unix:///d/a_99999999999#x")), Ok(()));

        let e = check(
            &[vm(3, "/d/a.vhost", "/d/a"), vm(4, "/d/a_5000", "/d/b")],
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.cid, e.port, e.path.clone()),
            (3, 5000, PathBuf::from("/d/a_5000"))
        );
        assert!(
            e.to_string().contains("vhost-user socket of guest-cid 4"),
            "{e}"
        );

        let e = check(&[vm(3, "/d/a.vhost", "/d/a")], Some("unix:///d/a_9999#ctl")).unwrap_err();
        assert_eq!((e.cid, e.port), (3, 9999));
        assert!(
            e.to_string()
                .starts_with("the control socket \"/d/a_9999\""),
            "{e}"
        );

        let e = check(
            &[vm(3, "/d/a.vhost", "/d/a"), vm(4, "/d/b.vhost", "/d/a_7")],
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("hybrid socket (uds-path) of guest-cid 4"),
            "{e}"
        );
        assert_eq!(
            check(&[vm(3, "/d/a_0", "/d/a")], None).map_err(|e| e.port),
            Err(0)
        );
    }

    #[test]
    fn control_paths() {
        assert_eq!(
            control_socket_path("unix:///run/c.sock#n"),
            Some("/run/c.sock".into())
        );
        assert_eq!(
            control_socket_path("unix:///run/c.sock?profile=x#n"),
            Some("/run/c.sock".into())
        );
        assert_eq!(control_socket_path("binder://n"), None);
        assert_eq!(control_socket_path("unix-abstract://n#x"), None);
    }
}
