//! `tests/demo`: starts the plugin, boots a small Linux guest (Debian's 6.12 cloud kernel, QEMU/TCG)
//! against it and shows one guest→host and one host→guest exchange through it, then prints the
//! command lines to use the plugin with crosvm and QEMU. Run through `tests/demo` (which does the
//! setup and the release builds first).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vsock_plugin_tests::real_guest::backend::{Backend, VmSpec};
use vsock_plugin_tests::real_guest::proto::{escape, unescape};
use vsock_plugin_tests::real_guest::qemu::{QemuConfig, Vm};
use vsock_plugin_tests::real_guest::util::{file_tail, indent, which};
use vsock_plugin_tests::real_guest::{cases, host, initramfs, kernels};

const USAGE: &str = "usage: vsock-demo [--kernel 6.12|6.1] [--keep] [--qemu PATH] [--accel tcg|kvm]
Boots a guest against target/release/vsock-plugin and moves a line each way through it.";

const G2H_PORT: u32 = 1234;
const H2G_PORT: u32 = 5000;

struct Failure {
    msg: String,
}

impl<T: Into<String>> From<T> for Failure {
    fn from(s: T) -> Failure {
        Failure { msg: s.into() }
    }
}

fn step(msg: &str) {
    println!("demo: {msg}");
    let _ = std::io::stdout().flush();
}

fn main() -> ExitCode {
    let mut line = "6.12".to_string();
    let mut keep = false;
    let mut qemu = None;
    let mut accel = "tcg".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kernel" => line = args.next().unwrap_or_default(),
            "--keep" => keep = true,
            "--qemu" => qemu = args.next().map(PathBuf::from),
            "--accel" => accel = args.next().unwrap_or_default(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("vsock-demo: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let dir = PathBuf::from(format!("/tmp/vsock-demo-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let started = Instant::now();
    let mut st = State {
        dir: dir.clone(),
        backend: None,
        vm: None,
    };
    let res = run(&mut st, &exe_dir, &line, qemu, &accel);
    let ok = res.is_ok();
    if let Some(vm) = st.vm.as_mut() {
        vm.shutdown(Duration::from_secs(10));
    }
    if let Some(b) = st.backend.as_mut() {
        b.stop();
    }
    match res {
        Ok(()) => {
            println!(
                "demo: done in {:.1} s. It worked.",
                started.elapsed().as_secs_f64()
            );
            explain(&exe_dir);
            if keep {
                println!("\n(logs kept in {})", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Err(f) => {
            println!("\ndemo: FAILED: {}", f.msg);
            println!(
                "--- guest console ({}), last 30 lines ---\n{}",
                dir.join("vm/console.log").display(),
                indent(&file_tail(&dir.join("vm/console.log"), 30), "  | ")
            );
            println!(
                "--- QEMU log, last 10 lines ---\n{}",
                indent(&file_tail(&dir.join("vm/qemu.log"), 10), "  | ")
            );
            println!(
                "--- plugin log ({}), last 30 lines ---\n{}",
                dir.join("plugin.log").display(),
                indent(&file_tail(&dir.join("plugin.log"), 30), "  | ")
            );
            println!("(everything is in {})", dir.display());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct State {
    dir: PathBuf,
    backend: Option<Backend>,
    vm: Option<Vm>,
}

fn run(
    st: &mut State,
    exe_dir: &Path,
    line: &str,
    qemu: Option<PathBuf>,
    accel: &str,
) -> Result<(), Failure> {
    let qemu = qemu
        .or_else(|| which("qemu-system-x86_64"))
        .ok_or("qemu-system-x86_64 not found (tests/real-guest/setup installs it)")?;
    let all = kernels::load(&kernels::default_cache_dir())?;
    let k = all
        .iter()
        .find(|k| k.line == line)
        .ok_or_else(|| format!("no kernel line {line} in the cache"))?;
    let agent = exe_dir
        .parent()
        .map(|t| t.join("x86_64-unknown-linux-gnu/release/vsock-guest-agent"))
        .filter(|p| p.is_file())
        .ok_or("static guest agent not built (tests/demo builds it)")?;
    let plugin = exe_dir.join("vsock-plugin");
    if !plugin.is_file() {
        return Err(format!("{} not built", plugin.display()).into());
    }

    // 1. Guest image.
    let t = Instant::now();
    let initrd = st.dir.join("initrd.cpio");
    let mods = initramfs::build(k, Path::new("/bin/busybox"), &agent, &initrd)?;
    step(&format!(
        "guest: Debian kernel {} + a busybox initramfs with the vsock modules ({}) and a small agent ({:.1} s)",
        k.describe(),
        mods.join(" "),
        t.elapsed().as_secs_f64()
    ));

    // 2. The plugin.
    let spec = VmSpec {
        cid: 3,
        socket: st.dir.join("vm3.vhost"),
        uds: st.dir.join("vm3.vsock"),
        groups: "default".into(),
    };
    let argv: Vec<String> = vec![
        plugin.display().to_string(),
        "--guest-cid".into(),
        "3".into(),
        "--socket".into(),
        spec.socket.display().to_string(),
        "--uds-path".into(),
        spec.uds.display().to_string(),
    ];
    // The control plane (binder RPC on a Unix socket) lets `vsock-plugin ctl` show what happened.
    let control = format!("unix://{}#vsock", st.dir.join("control.sock").display());
    let mut with_control = argv.clone();
    with_control.extend(["--control".to_string(), control.clone()]);
    step(&format!(
        "starting the plugin:\n        {}",
        with_control.join(" ")
    ));
    let log = st.dir.join("plugin.log");
    let mut have_control = true;
    st.backend = Some(match Backend::start(with_control, &log, &[&spec.socket]) {
        Ok(b) => b,
        Err(e) => {
            step(&format!(
                "(the plugin did not start with --control: {}; starting it without)",
                e.lines().next().unwrap_or("")
            ));
            have_control = false;
            Backend::start(argv, &log, &[&spec.socket])?
        }
    });
    step(&format!(
        "plugin up (pid {}), listening for a VMM on {}",
        st.backend.as_ref().unwrap().pid(),
        spec.socket.display()
    ));

    // 3. The guest.
    let cfg = QemuConfig {
        qemu: qemu.clone(),
        accel: accel.into(),
        mem_mb: 512,
        kernel: k.vmlinuz(),
        initrd: initrd.clone(),
        ..Default::default()
    };
    step(&format!(
        "booting the guest: {} -accel {accel} -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on \
         -numa node,memdev=mem -chardev socket,id=vhost,path={} -device {} -kernel … -initrd …",
        qemu.display(),
        spec.socket.display(),
        cfg.vsock_device("vhost")
    ));
    let t = Instant::now();
    let vm = st.vm.insert(Vm::start(
        "guest",
        &cfg,
        &spec.socket,
        &st.dir.join("vm"),
        Duration::from_secs(90),
    )?);
    step(&format!(
        "guest up in {:.1} s: Linux {}, its virtio-vsock device (served by the plugin) says CID {}",
        t.elapsed().as_secs_f64(),
        vm.hello.release,
        vm.hello.cid
    ));
    if vm.hello.cid != "3" {
        return Err(format!("the guest reads CID {:?}, expected 3", vm.hello.cid).into());
    }

    // 4. Guest → host: host service on <uds>_1234, guest connects to CID 2 port 1234.
    let l = host::listen(&spec.uds, G2H_PORT)?;
    let lpath = host::port_path(&spec.uds, G2H_PORT);
    step(&format!(
        "guest → host: a host service listens on {} (the plugin maps guest connections to CID 2 \
         port {G2H_PORT} there); the guest connects to CID 2 port {G2H_PORT}",
        lpath.display()
    ));
    let srv = std::thread::spawn(move || -> Result<String, String> {
        let mut s = host::accept(&l, Duration::from_secs(20))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 4096 {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => line.push(b[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        s.write_all(b"hello guest, this is the host service on the other end of the plugin\n")
            .map_err(|e| format!("reply: {e}"))?;
        Ok(String::from_utf8_lossy(&line).into_owned())
    });
    let text = format!(
        "hello host, this is Linux {} (CID 3) over AF_VSOCK",
        vm.hello.release
    );
    let guest = vm.run_op(
        "demo",
        "say",
        &format!("cid=2 port={G2H_PORT} text={}", escape(&text)),
        Duration::from_secs(30),
    );
    if guest.is_err() {
        let _ = UnixStream::connect(host::port_path(&spec.uds, G2H_PORT));
    }
    let got = srv
        .join()
        .unwrap_or_else(|_| Err("host thread panicked".into()));
    let guest = guest.map_err(|e| format!("guest → host: {e}"))?;
    let got = got.map_err(|e| format!("guest → host, host side: {e}"))?;
    step(&format!("  host received: \"{got}\""));
    let reply = cases::field(&guest, "reply")
        .map(unescape)
        .unwrap_or_default();
    step(&format!("  guest got the host's reply: \"{reply}\""));
    if got != text || reply.is_empty() {
        return Err(
            format!("guest → host: sent {text:?}, host got {got:?}, reply {reply:?}").into(),
        );
    }

    // 5. Host → guest: the guest listens on port 5000, the host connects through <uds>.
    let answer = format!(
        "hello host, Linux {} answering on vsock port {H2G_PORT}",
        vm.hello.release
    );
    let id = vm
        .start_op(
            "demo",
            "answer",
            &format!("port={H2G_PORT} text={}", escape(&answer)),
        )
        .map_err(|e| e.to_string())?;
    vm.wait_ready(id, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    step(&format!(
        "host → guest: the guest listens on vsock port {H2G_PORT}; the host connects to {} and sends \
         \"connect {H2G_PORT}\"",
        spec.uds.display()
    ));
    let host_side = (|| -> Result<String, String> {
        let mut s = UnixStream::connect(&spec.uds)
            .map_err(|e| format!("connect {}: {e}", spec.uds.display()))?;
        s.write_all(format!("connect {H2G_PORT}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let ok = host::read_line(&mut s, Duration::from_secs(10))
            .map_err(|e| format!("waiting for OK: {e}"))?
            .unwrap_or_default();
        step(&format!("  plugin answered: \"{ok}\""));
        if ok != format!("OK {H2G_PORT}") {
            return Err(format!("expected \"OK {H2G_PORT}\", got {ok:?}"));
        }
        s.write_all(b"hello guest, this is the host\n")
            .map_err(|e| format!("write: {e}"))?;
        let r = host::read_line(&mut s, Duration::from_secs(10))
            .map_err(|e| format!("waiting for the guest's answer: {e}"))?
            .unwrap_or_default();
        Ok(r)
    })();
    let guest = vm.wait_result(id, Duration::from_secs(30));
    let r = host_side.map_err(|e| format!("host → guest: {e}"))?;
    let guest = guest.map_err(|e| format!("host → guest, guest side: {e}"))?;
    let got = cases::field(&guest, "got")
        .map(unescape)
        .unwrap_or_default();
    step(&format!("  guest received: \"{got}\""));
    step(&format!("  host received the guest's answer: \"{r}\""));
    if r != answer {
        return Err(format!("host → guest: expected {answer:?}, got {r:?}").into());
    }

    // 6. What the plugin counted (best effort: the demo is about the data path).
    if have_control {
        for what in ["status", "metrics"] {
            let out = std::process::Command::new(&plugin)
                .args(["ctl", "--uri", &control, what])
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let lines: Vec<&str> = text
                        .lines()
                        .filter(|l| what == "status" || !l.contains(" - "))
                        .collect();
                    step(&format!(
                        "vsock-plugin ctl --uri {control} {what}\n{}",
                        indent(&lines.join("\n"), "        ")
                    ));
                }
                Ok(o) => step(&format!(
                    "(ctl {what} failed: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => step(&format!("(ctl {what}: {e})")),
            }
        }
    }

    // 7. What the plugin logged.
    let log = std::fs::read_to_string(st.dir.join("plugin.log")).unwrap_or_default();
    let interesting: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("==="))
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("INFO"))
        .collect();
    if !interesting.is_empty() {
        let from = interesting.len().saturating_sub(8);
        step(&format!(
            "plugin log (last {} of {} lines):\n{}",
            interesting.len() - from,
            interesting.len(),
            indent(&interesting[from..].join("\n"), "        ")
        ));
    }
    let vm = st.vm.as_mut().unwrap();
    let t = Instant::now();
    let clean = vm.shutdown(Duration::from_secs(10));
    step(&format!(
        "guest powered off ({:.1} s{})",
        t.elapsed().as_secs_f64(),
        if clean { "" } else { ", had to be killed" }
    ));
    st.vm = None;
    if !st.backend.as_mut().unwrap().alive() {
        return Err("the plugin exited".into());
    }
    Ok(())
}

fn explain(exe_dir: &Path) {
    let plugin = exe_dir.join("vsock-plugin");
    let plugin = plugin.display();
    println!(
        r#"
What happened:
  - QEMU ran the guest's virtio-vsock device as `vhost-user-vsock-pci`: it handed the guest's memory
    (a shared memfd) and virtqueues to the plugin over the vhost-user socket; the plugin did all the
    vsock work, QEMU none.
  - guest → host: the guest's connect to CID 2 port {G2H_PORT} became a Unix connection to
    <uds-path>_{G2H_PORT} (here a listener in this program).
  - host → guest: a host program connected to <uds-path>, wrote "connect {H2G_PORT}", got "OK {H2G_PORT}",
    and from then on talked to the guest's socket on vsock port {H2G_PORT}.

Next, with your own VMM (CID 3; paths are examples):
  mkdir -p /run/vsock
  {plugin} --guest-cid 3 --socket /run/vsock/vm3.vhost --uds-path /run/vsock/vm3.vsock

  crosvm run --vhost-user type=vsock,socket=/run/vsock/vm3.vhost ... bzImage

  qemu-system-x86_64 -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=c0,path=/run/vsock/vm3.vhost -device vhost-user-vsock-pci,chardev=c0 ...

  host → guest:  socat - UNIX-CONNECT:/run/vsock/vm3.vsock   then type "connect 5000"
  guest → host:  listen on /run/vsock/vm3.vsock_1234; the guest connects to CID 2 port 1234

More: {plugin} --help; {plugin} ctl --help (control plane); the whole suite: tests/run
"#
    );
}
