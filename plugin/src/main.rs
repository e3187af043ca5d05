//! `vsock-plugin`: parse the command line, start one worker per VM, run until killed.

use std::process::ExitCode;

use vsock_plugin::config::cli::{parse_args, Command, USAGE};
use vsock_plugin::Plugin;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let configs = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(configs)) => configs,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("vsock-plugin {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
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
    match Plugin::start(configs) {
        Ok(plugin) => {
            plugin.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-plugin: {e}");
            ExitCode::from(1)
        }
    }
}
