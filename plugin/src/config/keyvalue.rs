//! A serde deserializer for `key=value,key=value` option strings (placeholder: being written).
use serde::{Deserialize, Deserializer};

/// Deserializes `a+b+c` into a list of names.
pub fn plus_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(s.split('+').map(str::to_string).collect())
}
