//! Protobuf payloads of vsock-plugin's control plane (rust-protobuf 3, pure-Rust codegen).
//!
//! Modules are named after the `.proto` file stems, as Soong's `rust_protobuf` names them:
//! [`config`] (`VmConfig`, `PluginConfig`) and [`control`] (capabilities, status, connections,
//! metrics, policy, routes, events). The compatibility rules (zero = old default, `UNSPECIFIED = 0`,
//! `required_features`, append-only field numbers) are stated in the `.proto` files and enforced by
//! [`check_required_features`] and the tests.

// Cargo: build.rs generates the messages into OUT_DIR. Soong: `rust_protobuf`
// (libvsock_plugin_proto_messages) generates the same modules as a crate of their own.
#[cfg(not(soong))]
include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
#[cfg(soong)]
pub use vsock_plugin_proto_messages::*;

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
use protobuf::{Message, MessageDyn, MessageFull};

/// Major version of the control protocol: bumped only for an incompatible redesign.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Minor version: bumped with each appended feature bit or field.
pub const PROTOCOL_MINOR: u32 = 0;

/// Largest payload any decoder here accepts (bounds allocation on hostile input).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// Feature bits of [`control::Feature`] as masks.
pub mod features {
    use crate::control::Feature;
    pub const POLICY_LIMITS: u64 = Feature::FEATURE_POLICY_LIMITS as u64;
    pub const CONNECTION_FILTER: u64 = Feature::FEATURE_CONNECTION_FILTER as u64;
    pub const EVENTS: u64 = Feature::FEATURE_EVENTS as u64;
    /// Every bit this version of the schema defines.
    pub const ALL: u64 = POLICY_LIMITS | CONNECTION_FILTER | EVENTS;
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Longer than [`MAX_PAYLOAD_LEN`].
    TooLong(usize),
    /// Not a valid encoding of the expected message.
    Malformed(String),
    /// `required_features` has bits the consumer does not implement (the unknown bits).
    UnsupportedFeatures(u64),
    /// Well-formed but inconsistent or out of range.
    Invalid(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooLong(n) => {
                write!(
                    f,
                    "payload of {n} bytes exceeds the limit of {MAX_PAYLOAD_LEN}"
                )
            }
            PayloadError::Malformed(e) => write!(f, "malformed payload: {e}"),
            PayloadError::UnsupportedFeatures(bits) => {
                write!(f, "unsupported required features {bits:#x}")
            }
            PayloadError::Invalid(e) => write!(f, "invalid payload: {e}"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Decode `bytes` as `M`, refusing oversized or malformed input. Unknown fields are kept in the
/// message's unknown-field set and never acted on.
///
/// Negative values in repeated enum fields are refused ([`PayloadError::Invalid`]): rust-protobuf
/// 3.7.2 sizes a packed negative enum value at 5 bytes but writes 10, so such a message decodes
/// while its re-encoding fails (F4). No schema here defines a negative enum value, so refusing
/// them loses nothing, and no accepted message can break a later `encode`.
pub fn decode<M: MessageFull>(bytes: &[u8]) -> Result<M, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_LEN {
        return Err(PayloadError::TooLong(bytes.len()));
    }
    let m = M::parse_from_bytes(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    match negative_repeated_enum(&m, 0) {
        Some(field) => Err(PayloadError::Invalid(format!(
            "negative value in repeated enum field {field}"
        ))),
        None => Ok(m),
    }
}

/// The first repeated enum field holding a negative value, in `m` or any nested message (the
/// nesting depth is bounded by the parser's recursion limit; `depth` is a second bound).
fn negative_repeated_enum(m: &dyn MessageDyn, depth: u32) -> Option<String> {
    if depth > 100 {
        return None;
    }
    let d = m.descriptor_dyn();
    for f in d.fields() {
        let values: Vec<ReflectValueRef> = match f.get_reflect(m) {
            ReflectFieldRef::Repeated(r) => (0..r.len()).map(|i| r.get(i)).collect(),
            ReflectFieldRef::Optional(o) => o.value().into_iter().collect(),
            ReflectFieldRef::Map(_) => Vec::new(),
        };
        for v in values {
            let found = match v {
                ReflectValueRef::Enum(_, n) if f.is_repeated() && n < 0 => {
                    Some(format!("{}.{}", d.full_name(), f.name()))
                }
                ReflectValueRef::Message(sub) => negative_repeated_enum(&*sub, depth + 1),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// Encode `m` (deterministic for a given message: fields in number order).
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    // Writing to a Vec only fails for messages over 2 GiB, which nothing here builds.
    m.write_to_bytes().unwrap_or_default()
}

/// The `flags & ~mask -> EINVAL` rule: `Err` with the unknown bits when `required` has any bit
/// outside `supported`.
pub fn check_required_features(required: u64, supported: u64) -> Result<(), PayloadError> {
    match required & !supported {
        0 => Ok(()),
        unknown => Err(PayloadError::UnsupportedFeatures(unknown)),
    }
}

/// Test-only schemas of simulated older/newer peers (see `protos/testing/skew.proto`).
#[doc(hidden)]
pub mod testing {
    pub use crate::skew::*;
}
