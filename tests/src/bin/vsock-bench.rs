//! `vsock-bench`: throughput, latency, setup rate, CPU and memory of the plugin, the reference
//! `vhost-device-vsock` and a raw Unix socketpair, driven by one userspace VMM + guest driver.
//! See `vsock_plugin_tests::bench` for what each figure measures.
fn main() -> std::process::ExitCode {
    vsock_plugin_tests::bench::main()
}
