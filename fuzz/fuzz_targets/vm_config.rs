//! `--vm` strings (crosvm-style key=value lists) and whole command lines through the CLI parser.
//! Invariants: no panic; a command line that parses yields VMs that pass validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsock_plugin::config::cli::{parse_args, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One `--vm` value, then the same bytes read as NUL-separated argv.
    let runs = [
        vec!["--vm".to_string(), text.to_string()],
        text.split('\0').map(str::to_string).collect::<Vec<_>>(),
    ];
    for args in runs {
        // `--config` would read a file named by the input: that is the config_file target.
        if args
            .iter()
            .any(|a| a.starts_with("--config") || a.starts_with("--control"))
        {
            continue;
        }
        if let Ok(Command::Run(vms, _)) = parse_args(args) {
            for vm in &vms {
                assert!(vm.validate().is_ok(), "accepted an invalid VM: {vm:?}");
            }
        }
    }
});
