//! Protobuf payloads of the control plane (generated in pure-Rust mode, no protoc). The schemas
//! arrive with the control-plane issue.
