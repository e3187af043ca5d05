//! A panic in any thread ends the whole process with [`PANIC_EXIT_STATUS`], after logging it
//! through `log` (logcat on Android) and the standard panic message on stderr. Without this, a
//! worker thread that panicked would leave its VM's device dead while the process (and every other
//! VM) went on, and the exit status at the end would say nothing: crosvm's and Cuttlefish's
//! restarters must see a failed backend instead.

/// `EX_SOFTWARE` (sysexits.h): an internal error.
pub const PANIC_EXIT_STATUS: i32 = 70;

/// Installs the hook; call once, first thing in `main`.
pub fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        log::error!(
            "panic in thread {}: {info}; exiting with status {PANIC_EXIT_STATUS}",
            thread.name().unwrap_or("(unnamed)")
        );
        default(info);
        std::process::exit(PANIC_EXIT_STATUS);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "VSOCK_PLUGIN_PANIC_EXIT_CHILD";

    /// Runs in a child process only (see below): a panic on another thread must end the process.
    #[test]
    fn child_panics_on_a_worker_thread() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        install();
        let h = std::thread::Builder::new()
            .name("vsock-vm".into())
            .spawn(|| panic!("worker failed"))
            .unwrap();
        let _ = h.join();
        // Reached only if the hook did not end the process.
        std::process::exit(0);
    }

    #[test]
    fn a_panic_on_any_thread_ends_the_process_with_status_70() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "panic_exit::tests::child_panics_on_a_worker_thread",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(PANIC_EXIT_STATUS), "{stderr}");
        assert!(
            stderr.contains("thread 'vsock-vm'") && stderr.contains("worker failed"),
            "{stderr}"
        );
    }
}
