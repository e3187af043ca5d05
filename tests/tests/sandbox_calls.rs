//! Calls Cuttlefish's sandbox policy for `vhost_device_vsock` does not allow, measured without
//! strace (cuttlefish/README.md lists every syscall the plugin makes, from strace):
//! - glibc reserving a 64 MiB `PROT_NONE` malloc arena per thread (the plugin limits glibc to one
//!   arena): seen in `/proc/PID/maps` as large inaccessible anonymous regions;
//! - env_logger probing stderr with `ioctl(TCGETS)` to choose colours (the plugin never colours):
//!   seen as ANSI escapes on a terminal.

mod common;
use common::*;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use vsock_plugin_tests::frontend::plugin_process::plugin_binary;

/// Anonymous `---p` regions of at least 1 MiB in `pid`'s address space (thread guard pages are
/// one page; a glibc arena reservation is up to 64 MiB).
fn big_inaccessible_regions(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let Some((a, b)) = f[0].split_once('-') else {
                return false;
            };
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            f[1] == "---p" && f.len() == 5 && size >= 1 << 20
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn worker_threads_reserve_no_malloc_arenas() {
    let vms: Vec<(u64, &str)> = (3..7).map(|cid| (cid, "")).collect();
    let p = PluginProcess::multi(&vms).unwrap();
    // Traffic on every VM: each worker thread allocates.
    for (k, vm_paths) in p.vms.iter().enumerate() {
        let mut vm =
            Vm::start(&vm_paths.socket, VmOptions::qemu().cid(vm_paths.guest_cid)).unwrap();
        let port = 13000 + k as u32;
        let l = listen(&vm_paths.port_path(port));
        let id = vm.driver.connect(HOST_CID, port, TYPE_STREAM).unwrap();
        let mut host = accept_timeout(&l, secs(5)).unwrap();
        let data = pattern(k as u64, 100_000);
        vm.driver.send(id, &data).unwrap();
        assert_eq!(
            read_exact_timeout(&mut host, data.len(), secs(10)).unwrap(),
            data
        );
    }
    let regions = big_inaccessible_regions(p.pid().unwrap());
    // Before the fix: one ~64 MiB reservation per thread that allocated (4 here).
    assert!(
        regions.is_empty(),
        "PROT_NONE reservations (malloc arenas):\n{}",
        regions.join("\n")
    );
}

#[test]
fn log_output_on_a_terminal_has_no_colour_probe() {
    // A pseudo-terminal as the plugin's stderr.
    // SAFETY: plain libc calls; fds owned at once.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(master >= 0);
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    assert_eq!(unsafe { libc::grantpt(master.as_raw_fd()) }, 0);
    assert_eq!(unsafe { libc::unlockpt(master.as_raw_fd()) }, 0);
    let mut name = [0 as libc::c_char; 128];
    assert_eq!(
        unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) },
        0
    );
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .unwrap();
    let dir = TempDir::new().unwrap();
    let mut child = Command::new(plugin_binary())
        .args([
            "--guest-cid",
            "3",
            "--socket",
            dir.join("v.sock").to_str().unwrap(),
            "--uds-path",
            dir.join("h.sock").to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(slave)
        .spawn()
        .unwrap();
    // Read what it logged at start-up.
    let mut out = Vec::new();
    let mut f = File::from(master);
    let deadline = std::time::Instant::now() + secs(10);
    while !String::from_utf8_lossy(&out).contains("hybrid vsock")
        && std::time::Instant::now() < deadline
    {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } > 0 {
            let mut b = [0u8; 4096];
            match f.read(&mut b) {
                Ok(n) if n > 0 => out.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("hybrid vsock"), "no start-up log: {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "colour escapes on a terminal (the logger probed it): {text:?}"
    );
}
