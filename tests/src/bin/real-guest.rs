//! Real-guest test harness: boots Debian 6.1/6.12 kernels under QEMU against a vhost-user vsock
//! backend (default: our `vsock-plugin`) and runs the cases. See `tests/real-guest/run` and `--help`.
fn main() -> std::process::ExitCode {
    vsock_plugin_tests::real_guest::runner::main()
}
