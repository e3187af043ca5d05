//! `vsock-plugin`: parse the command line, start one worker per VM, run until killed.
//! `vsock-plugin ctl …` talks to a running plugin's control plane instead.

use std::process::ExitCode;

use vsock_plugin::config::cli::{parse_args, Command, USAGE};
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
    bound_malloc_arenas();
    let (configs, process) = match parse_args(std::env::args().skip(1)) {
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
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let iotlb = if vsock_plugin::iotlb::TRANSLATION_BUILT {
                "built in"
            } else {
                "not built (iotlb=off only)"
            };
            println!(
                "vsock-plugin {}\nIOTLB translation: {iotlb}",
                env!("CARGO_PKG_VERSION")
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
    match Plugin::start_with(configs, &process) {
        Ok(plugin) => {
            // Every vhost-user, hybrid and control socket listens now.
            readiness.signal();
            plugin.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-plugin: {e}");
            ExitCode::from(1)
        }
    }
}
