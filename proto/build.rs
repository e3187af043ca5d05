//! Generates the protobuf modules with rust-protobuf's pure-Rust parser (no protoc).

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("protos")
        .inputs([
            "protos/config.proto",
            "protos/control.proto",
            "protos/device_state.proto",
            "protos/testing/skew.proto",
        ])
        .cargo_out_dir("protos")
        .run_from_script();
    println!("cargo:rerun-if-changed=protos");
}
