//! Builds the guest's initramfs: busybox, the static agent, the virtio/vsock modules of one kernel
//! (decompressed, in `modprobe --show-depends` order) and an `/init` that loads them, runs the agent
//! and powers off. Written directly as an uncompressed `newc` cpio archive (no cpio/gzip needed; the
//! kernel unpacks it faster than a compressed one).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kernels::Kernel;

/// Modules whose dependency chains are loaded, in this order.
pub const TOP_MODULES: [&str; 2] = ["virtio_pci", "vmw_vsock_virtio_transport"];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
while read -r m args; do
  insmod /lib/modules/$m.ko $args || echo "init: insmod $m failed"
done < /lib/modules/order
echo "init: kernel $(uname -r), modules: $(cut -d' ' -f1 /lib/modules/order | tr '\n' ' ')"
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d/device" ] && echo "init: $d device=$(cat $d/device) features=$(cat $d/features)"
done
/bin/vsock-guest-agent /dev/ttyS1
echo "init: agent exited with status $?"
sync
poweroff -f
"#;

/// Builds `out` for `kernel`; returns the module load order.
pub fn build(
    kernel: &Kernel,
    busybox: &Path,
    agent: &Path,
    out: &Path,
) -> Result<Vec<String>, String> {
    build_with(kernel, busybox, agent, out, &[], &[])
}

/// [`build`] plus `extra_modules` (module, insmod parameters; loaded after the vsock modules with
/// their dependencies) and `extra_files` (path in the image, mode, contents).
pub fn build_with(
    kernel: &Kernel,
    busybox: &Path,
    agent: &Path,
    out: &Path,
    extra_modules: &[(&str, &str)],
    extra_files: &[(&str, u32, Vec<u8>)],
) -> Result<Vec<String>, String> {
    let mut a = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "lib",
        "lib/modules",
    ] {
        a.dir(d);
    }
    a.node("dev/console", 0o020600, 5, 1);
    a.file("init", 0o755, INIT.as_bytes());
    a.file("bin/busybox", 0o755, &read(busybox)?);
    a.file("bin/vsock-guest-agent", 0o755, &read(agent)?);

    for (path, mode, body) in extra_files {
        a.file(path, *mode, body);
    }
    let mut order = Vec::new();
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let tops = TOP_MODULES
        .iter()
        .map(|m| (*m, ""))
        .chain(extra_modules.iter().copied());
    for (top, params) in tops {
        for path in module_chain(kernel, top)? {
            let name = module_name(&path);
            if seen.insert(name.clone()) {
                a.file(
                    &format!("lib/modules/{name}.ko"),
                    0o644,
                    &decompress(&path)?,
                );
                let p = if module_name(&path) == top.replace('-', "_") {
                    params
                } else {
                    ""
                };
                lines.push(format!("{name} {p}").trim_end().to_string());
                order.push(name);
            }
        }
    }
    let mut list = lines.join("\n");
    list.push('\n');
    a.file("lib/modules/order", 0o644, list.as_bytes());
    std::fs::write(out, a.finish()).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(order)
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn modprobe() -> &'static str {
    ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("modprobe")
}

/// Module files to insmod for `module`, dependencies first (empty if built in).
fn module_chain(kernel: &Kernel, module: &str) -> Result<Vec<PathBuf>, String> {
    let out = Command::new(modprobe())
        .arg("-d")
        .arg(&kernel.root)
        .args(["-S", &kernel.release, "--show-depends", module])
        .output()
        .map_err(|e| format!("modprobe: {e} (install kmod)"))?;
    if !out.status.success() {
        return Err(format!(
            "modprobe --show-depends {module} for {}: {}",
            kernel.release,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .filter_map(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .collect())
}

fn module_name(p: &Path) -> String {
    let f = p.file_name().unwrap_or_default().to_string_lossy();
    f.split(".ko").next().unwrap_or(&f).to_string()
}

fn decompress(p: &Path) -> Result<Vec<u8>, String> {
    let s = p.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        "xz"
    } else if s.ends_with(".zst") {
        "zstd"
    } else if s.ends_with(".gz") {
        "gzip"
    } else {
        return read(p);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(p)
        .output()
        .map_err(|e| format!("{tool}: {e} (install {tool})"))?;
    if !out.status.success() {
        return Err(format!("{tool} -dc {s} failed"));
    }
    Ok(out.stdout)
}

/// A `newc` cpio archive in memory.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, mode, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        while self.data.len() % 512 != 0 {
            self.data.push(0);
        }
        self.data
    }
}
