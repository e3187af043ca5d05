//! `vsock-plugin`: parse the command line, start one worker per VM, run until killed.
//! `vsock-plugin ctl …` talks to a running plugin's control plane instead.

use std::process::ExitCode;

use vsock_plugin::config::cli::{help, parse_args, Command};
use vsock_plugin::readiness::Readiness;
use vsock_plugin::Plugin;

fn init_logging() {
    #[cfg(target_os = "android")]
    android_logger::init_once(
        android_logger::Config::default()
            .with_tag("vsock_plugin")
            .with_max_level(log::LevelFilter::Info),
    );
    // No colours, so no terminal probe (an `ioctl(TCGETS)` on stderr, which Cuttlefish's
    // sandbox policy does not allow); logs go to a file or a pipe anyway.
    #[cfg(not(target_os = "android"))]
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .write_style(env_logger::WriteStyle::Never)
        // Microseconds, so the data-path trace can time a round trip inside the plugin.
        .format_timestamp_micros()
        .init();
}

/// One glibc malloc arena for the whole process. Otherwise every thread's first allocation
/// reserves a 64 MiB `PROT_NONE` region (`mmap(PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`,
/// outside Cuttlefish's sandbox policy) and arena trimming adds `madvise` calls. The worker
/// threads allocate little on their data paths, so one arena costs nothing measurable.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called first thing in main, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    vsock_plugin::panic_exit::install();
    bound_malloc_arenas();
    let (configs, process) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(configs, process)) => (configs, process),
        Ok(Command::Ctl(args)) => {
            return match vsock_plugin_ipc::ctl::run(&args) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vsock-plugin ctl: {e}");
                    ExitCode::from(e.exit_code().clamp(1, 255) as u8)
                }
            };
        }
        Ok(Command::Help) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let iotlb = if vsock_plugin::iotlb::TRANSLATION_BUILT {
                "built in"
            } else {
                "not built (iotlb=off only)"
            };
            println!(
                "vsock-plugin {}\nIOTLB translation: {iotlb}\nsnapshot/restore: \
                 VHOST_USER_PROTOCOL_F_DEVICE_STATE, state format v{}",
                env!("CARGO_PKG_VERSION"),
                vsock_plugin::snapshot::format::FORMAT_VERSION
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vsock-plugin: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let socket_fds: Vec<i32> = configs.iter().filter_map(|c| c.socket_fd).collect();
    let readiness = match Readiness::take(
        process.ready_fd,
        &socket_fds,
        std::env::var_os("NOTIFY_SOCKET"),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vsock-plugin: {e}");
            return ExitCode::from(2);
        }
    };
    for c in &configs {
        log::info!(
            "guest CID {}: vhost-user {}, hybrid vsock {}",
            c.guest_cid,
            c.socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("fd {}", c.socket_fd.unwrap_or(-1))),
            c.uds_path.display()
        );
    }
    if process.sandbox == vsock_plugin::sandbox::SandboxMode::Full {
        raise_fd_limit();
    }
    // Installed before anything starts: a SIGTERM from now on is not lost.
    stop_signals::ignore_terminal_stop();
    let signals = match stop_signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vsock-plugin: cannot handle SIGTERM/SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    match Plugin::start_with(configs, &process) {
        Ok(plugin) => {
            // Every vhost-user, hybrid and control socket listens now.
            readiness.signal();
            let handle = plugin.shutdown_handle();
            let waiter = std::thread::Builder::new()
                .name("vsock-signals".into())
                .spawn(move || {
                    if let Some(sig) = signals.wait() {
                        log::info!("signal {sig}: stopping (draining buffered bytes)");
                        handle.drain();
                    }
                    // No thread ends before the process does (see sandbox::threads_may_exit).
                    vsock_plugin::sandbox::park_forever();
                });
            if let Err(e) = waiter {
                log::warn!("no signal thread ({e}): SIGTERM/SIGINT will not drain");
            }
            plugin.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-plugin: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, delivered to a thread that drains the plugin. The handler does the one
/// async-signal-safe thing it must: `write(2)` to an eventfd, which the signal thread reads.
/// (Not `sigwait`: its `rt_sigtimedwait` is outside Cuttlefish's sandbox policy, which allows
/// `rt_sigaction`, `write` and `read`.)
mod stop_signals {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicI32, Ordering};

    use vmm_sys_util::eventfd::EventFd;

    static FD: AtomicI32 = AtomicI32::new(-1);
    static LAST: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(sig: libc::c_int) {
        LAST.store(sig, Ordering::Relaxed);
        let fd = FD.load(Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a live local to our eventfd,
        // which stays open for the life of the process (leaked in `install`).
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    pub struct StopSignals(&'static EventFd);

    impl StopSignals {
        /// Blocks until SIGTERM or SIGINT arrived (at any time since `install`); the signal.
        pub fn wait(&self) -> Option<i32> {
            self.0.read().ok()?;
            Some(LAST.load(Ordering::Relaxed))
        }
    }

    /// SIGTSTP is ignored: Cuttlefish suspends host processes with SIGTSTP around
    /// `cvd snapshot_take`, but a vhost-user backend must keep answering the VMM (crosvm's sleep
    /// and DEVICE_STATE save come while everything else is stopped). SIGSTOP still stops it.
    pub fn ignore_terminal_stop() {
        // SAFETY: SIG_IGN for SIGTSTP; no handler runs.
        unsafe { libc::signal(libc::SIGTSTP, libc::SIG_IGN) };
    }

    pub fn install() -> std::io::Result<StopSignals> {
        // Never closed: the handler may run at any time and must not write to a reused fd.
        let efd: &'static EventFd = Box::leak(Box::new(EventFd::new(libc::EFD_CLOEXEC)?));
        FD.store(efd.as_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: sigaction is plain data, initialised here; the handler only does
            // async-signal-safe work.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(StopSignals(efd))
    }
}

/// Raises the soft open-file limit to the hard one: each connection holds a host fd, and the
/// defaults (max-connections 1024 per VM) exceed the usual soft limit of 1024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
