//! A minimal serde deserializer for flat `key=value,key=value` option strings, in the style of
//! crosvm's `serde_keyvalue` (which is not published on crates.io).
//!
//! Syntax:
//! - entries are separated by `,`; each entry is `key=value`, or a bare `key` (which only a `bool`
//!   accepts, meaning `true`);
//! - a value may be double-quoted to hold `,` (`socket="/run/a,b"`); inside quotes `\"` and `\\`
//!   are the only escapes. An unquoted value is taken literally up to the next `,`;
//! - keys must be non-empty and unique; an empty input has no entries.
//!
//! Values are strings until the target type asks for something: integers (decimal), `bool`
//! (`true`/`false`), strings, paths, `Option<_>` (present means `Some`), and unit enum variants by
//! their serde name. Nested values (lists, maps, structs) are not supported; [`plus_list`] reads
//! `a+b+c` into a `Vec<String>`.
//!
//! Every error names the key and the problem, e.g.
//! `invalid value "abc" for key "guest-cid": expected an unsigned integer`.

use std::fmt::Display;
use std::num::IntErrorKind;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

/// Why a `key=value,...` string could not be deserialized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    /// An entry of the form `=value`.
    #[error("empty key in entry {entry:?}")]
    EmptyKey { entry: String },
    /// `,,`, or a leading or trailing `,`.
    #[error("empty entry (stray ',') in {input:?}")]
    EmptyEntry { input: String },
    /// The same key given twice.
    #[error("duplicate key {key:?}")]
    DuplicateKey { key: String },
    /// A key the target does not have.
    #[error("unknown key {key:?} (valid keys: {})", .expected.join(", "))]
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
    },
    /// A required key that was not given.
    #[error("missing required key {key:?}")]
    MissingKey { key: &'static str },
    /// A bare `key` (no `=`) where the target needs a value.
    #[error("key {key:?} needs a value ({key}=...)")]
    MissingValue { key: String },
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value for key {key:?}")]
    UnterminatedQuote { key: String },
    /// Something other than `,` right after a closing quote.
    #[error("unexpected characters after the quoted value for key {key:?}")]
    TrailingAfterQuote { key: String },
    /// A value the target type does not accept (malformed, out of range, unknown variant, ...).
    #[error("invalid value {value:?}{}: {problem}", for_key(.key))]
    InvalidValue {
        key: Option<String>,
        value: String,
        problem: String,
    },
    /// Any other error raised by a `Deserialize` implementation.
    #[error("{}{message}", key_prefix(.key))]
    Custom {
        key: Option<String>,
        message: String,
    },
}

fn for_key(key: &Option<String>) -> String {
    match key {
        Some(k) => format!(" for key {k:?}"),
        None => String::new(),
    }
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key {k:?}: "),
        None => String::new(),
    }
}

impl KeyValueError {
    /// The key the error is about, if there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            KeyValueError::EmptyKey { .. } | KeyValueError::EmptyEntry { .. } => None,
            KeyValueError::DuplicateKey { key }
            | KeyValueError::UnknownKey { key, .. }
            | KeyValueError::MissingValue { key }
            | KeyValueError::UnterminatedQuote { key }
            | KeyValueError::TrailingAfterQuote { key } => Some(key),
            KeyValueError::MissingKey { key } => Some(key),
            KeyValueError::InvalidValue { key, .. } | KeyValueError::Custom { key, .. } => {
                key.as_deref()
            }
        }
    }

    /// Attaches the key (and its raw value) to an error raised while deserializing that value.
    fn in_key(self, k: &str, raw: Option<&str>) -> Self {
        match self {
            KeyValueError::InvalidValue {
                key: None,
                value,
                problem,
            } => KeyValueError::InvalidValue {
                key: Some(k.to_string()),
                value: raw.map_or(value, str::to_string),
                problem,
            },
            KeyValueError::Custom { key: None, message } => KeyValueError::Custom {
                key: Some(k.to_string()),
                message,
            },
            other => other,
        }
    }
}

impl de::Error for KeyValueError {
    fn custom<T: Display>(msg: T) -> Self {
        KeyValueError::Custom {
            key: None,
            message: msg.to_string(),
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        KeyValueError::InvalidValue {
            key: None,
            value: unexpected_to_string(&unexp),
            problem: format!("expected {exp}"),
        }
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        KeyValueError::InvalidValue {
            key: None,
            value: unexpected_to_string(&unexp),
            problem: format!("expected {exp}"),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let problem = if expected.is_empty() {
            "no values are accepted".to_string()
        } else {
            format!("expected one of: {}", expected.join(", "))
        };
        KeyValueError::InvalidValue {
            key: None,
            value: variant.to_string(),
            problem,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        KeyValueError::UnknownKey {
            key: field.to_string(),
            expected,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        KeyValueError::MissingKey { key: field }
    }

    fn duplicate_field(field: &'static str) -> Self {
        KeyValueError::DuplicateKey {
            key: field.to_string(),
        }
    }
}

fn unexpected_to_string(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Str(s) => (*s).to_string(),
        other => other.to_string(),
    }
}

/// Deserializes `T` (normally a struct) from a `key=value,key=value` string.
pub fn from_key_values<T: DeserializeOwned>(input: &str) -> Result<T, KeyValueError> {
    let entries = tokenize(input)?;
    T::deserialize(KeyValueDeserializer { entries: &entries })
}

/// Deserializes `a+b+c` into a list of names; empty names (`a++b`, `a+`, `+a`, ``) are rejected.
pub fn plus_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let s = String::deserialize(d)?;
    let names: Vec<String> = s.split('+').map(str::to_string).collect();
    if names.iter().any(String::is_empty) {
        return Err(de::Error::invalid_value(
            Unexpected::Str(&s),
            &"a '+'-separated list of non-empty names",
        ));
    }
    Ok(names)
}

/// One `key[=value]` entry; `value` is `None` for a bare key.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    key: String,
    value: Option<String>,
}

fn tokenize(input: &str) -> Result<Vec<Entry>, KeyValueError> {
    let mut entries: Vec<Entry> = Vec::new();
    if input.is_empty() {
        return Ok(entries);
    }
    let empty_entry = || KeyValueError::EmptyEntry {
        input: input.to_string(),
    };
    let mut rest = input;
    loop {
        let key_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let (key, after_key) = rest.split_at(key_end);
        let value;
        if let Some(after_eq) = after_key.strip_prefix('=') {
            if let Some(quoted) = after_eq.strip_prefix('"') {
                let (v, after) =
                    unquote(quoted).ok_or_else(|| KeyValueError::UnterminatedQuote {
                        key: key.to_string(),
                    })?;
                if !after.is_empty() && !after.starts_with(',') {
                    return Err(KeyValueError::TrailingAfterQuote {
                        key: key.to_string(),
                    });
                }
                value = Some(v);
                rest = after;
            } else {
                let end = after_eq.find(',').unwrap_or(after_eq.len());
                value = Some(after_eq[..end].to_string());
                rest = &after_eq[end..];
            }
        } else {
            value = None;
            rest = after_key;
        }
        if key.is_empty() {
            return Err(match value {
                None => empty_entry(),
                Some(v) => KeyValueError::EmptyKey {
                    entry: format!("={v}"),
                },
            });
        }
        if entries.iter().any(|e| e.key == key) {
            return Err(KeyValueError::DuplicateKey {
                key: key.to_string(),
            });
        }
        entries.push(Entry {
            key: key.to_string(),
            value,
        });
        match rest.strip_prefix(',') {
            None => return Ok(entries), // `rest` is empty: every other stop is at `,`.
            Some("") => return Err(empty_entry()),
            Some(r) => rest = r,
        }
    }
}

/// Reads a quoted value after its opening `"`; returns the unescaped value and what follows the
/// closing quote, or `None` if there is no closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            other => out.push(other),
        }
    }
    None
}

/// The top level: a map of the entries.
struct KeyValueDeserializer<'a> {
    entries: &'a [Entry],
}

impl<'de> Deserializer<'de> for KeyValueDeserializer<'_> {
    type Error = KeyValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_map(EntryMap {
            entries: self.entries.iter(),
            current: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct EntryMap<'a> {
    entries: std::slice::Iter<'a, Entry>,
    current: Option<&'a Entry>,
}

impl<'de> de::MapAccess<'de> for EntryMap<'_> {
    type Error = KeyValueError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, KeyValueError> {
        let Some(entry) = self.entries.next() else {
            self.current = None;
            return Ok(None);
        };
        self.current = Some(entry);
        let key: de::value::StrDeserializer<'_, KeyValueError> =
            entry.key.as_str().into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, KeyValueError> {
        let Some(entry) = self.current.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        let raw = entry.value.as_deref();
        seed.deserialize(ValueDeserializer {
            key: &entry.key,
            value: raw,
        })
        .map_err(|e| e.in_key(&entry.key, raw))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// One value, parsed into whatever type the target asks for.
struct ValueDeserializer<'a> {
    key: &'a str,
    value: Option<&'a str>,
}

impl<'a> ValueDeserializer<'a> {
    fn text(&self) -> Result<&'a str, KeyValueError> {
        self.value.ok_or_else(|| KeyValueError::MissingValue {
            key: self.key.to_string(),
        })
    }

    fn invalid(&self, value: &str, problem: impl Into<String>) -> KeyValueError {
        KeyValueError::InvalidValue {
            key: Some(self.key.to_string()),
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// Parses an integer of type `T` (via `i128`), telling "malformed" from "out of range".
    fn integer<T: TryFrom<i128> + Display>(
        &self,
        min: T,
        max: T,
        what: &str,
    ) -> Result<T, KeyValueError> {
        let text = self.text()?;
        let out_of_range = || self.invalid(text, format!("out of range (expected {min}..={max})"));
        match text.parse::<i128>() {
            Ok(n) => T::try_from(n).map_err(|_| out_of_range()),
            Err(e)
                if matches!(
                    e.kind(),
                    IntErrorKind::PosOverflow | IntErrorKind::NegOverflow
                ) =>
            {
                Err(out_of_range())
            }
            Err(_) => Err(self.invalid(text, format!("expected {what}"))),
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $visit:ident($ty:ty, $what:expr)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
            let n: $ty = self.integer(<$ty>::MIN, <$ty>::MAX, $what)?;
            visitor.$visit(n)
        }
    )*};
}

impl<'de> Deserializer<'de> for ValueDeserializer<'_> {
    type Error = KeyValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        match self.value {
            None => visitor.visit_bool(true),
            Some(v) => visitor.visit_str(v),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        match self.value {
            None | Some("true") => visitor.visit_bool(true),
            Some("false") => visitor.visit_bool(false),
            Some(v) => Err(self.invalid(v, "expected true or false")),
        }
    }

    deserialize_integer! {
        deserialize_u8 => visit_u8(u8, "an unsigned integer"),
        deserialize_u16 => visit_u16(u16, "an unsigned integer"),
        deserialize_u32 => visit_u32(u32, "an unsigned integer"),
        deserialize_u64 => visit_u64(u64, "an unsigned integer"),
        deserialize_u128 => visit_u128(u128, "an unsigned integer"),
        deserialize_i8 => visit_i8(i8, "an integer"),
        deserialize_i16 => visit_i16(i16, "an integer"),
        deserialize_i32 => visit_i32(i32, "an integer"),
        deserialize_i64 => visit_i64(i64, "an integer"),
        deserialize_i128 => visit_i128(i128, "an integer"),
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        let text = self.text()?;
        match text.parse::<f32>() {
            Ok(f) => visitor.visit_f32(f),
            Err(_) => Err(self.invalid(text, "expected a number")),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        let text = self.text()?;
        match text.parse::<f64>() {
            Ok(f) => visitor.visit_f64(f),
            Err(_) => Err(self.invalid(text, "expected a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        let text = self.text()?;
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(self.invalid(text, "expected a single character")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_str(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_str(self.text()?)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_bytes(self.text()?.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_bytes(self.text()?.as_bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        match self.value {
            None | Some("") => visitor.visit_unit(),
            Some(v) => Err(self.invalid(v, "expected no value")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, KeyValueError> {
        Err(self.nested())
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        Err(self.nested())
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        Err(self.nested())
    }

    fn deserialize_map<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, KeyValueError> {
        Err(self.nested())
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        Err(self.nested())
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        let text = self.text()?;
        visitor.visit_enum(UnitVariant {
            key: self.key,
            value: text,
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        visitor.visit_str(self.text()?)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        visitor.visit_unit()
    }
}

impl ValueDeserializer<'_> {
    fn nested(&self) -> KeyValueError {
        self.invalid(
            self.value.unwrap_or(""),
            "lists, maps and nested structs are not supported",
        )
    }
}

/// An enum value given by its variant name; only unit variants can be expressed.
struct UnitVariant<'a> {
    key: &'a str,
    value: &'a str,
}

impl<'de, 'a> de::EnumAccess<'de> for UnitVariant<'a> {
    type Error = KeyValueError;
    type Variant = UnitVariant<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), KeyValueError> {
        let name: de::value::StrDeserializer<'_, KeyValueError> = self.value.into_deserializer();
        let v = seed.deserialize(name)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_> {
    type Error = KeyValueError;

    fn unit_variant(self) -> Result<(), KeyValueError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        _seed: T,
    ) -> Result<T::Value, KeyValueError> {
        Err(self.not_unit())
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        Err(self.not_unit())
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        Err(self.not_unit())
    }
}

impl UnitVariant<'_> {
    fn not_unit(&self) -> KeyValueError {
        KeyValueError::InvalidValue {
            key: Some(self.key.to_string()),
            value: self.value.to_string(),
            problem: "variants with data are not supported".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        FastPath,
        Slow,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Opts {
        id: u16,
        #[serde(default)]
        offset: i32,
        #[serde(default)]
        big: u64,
        #[serde(default)]
        name: String,
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default)]
        fd: Option<i32>,
        #[serde(default)]
        verbose: bool,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default, deserialize_with = "plus_list")]
        tags: Vec<String>,
    }

    fn err(input: &str) -> String {
        match from_key_values::<Opts>(input) {
            Ok(o) => panic!("{input:?} parsed as {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_all_kinds() {
        let o: Opts = from_key_values(
            "id=7,offset=-3,big=18446744073709551615,name=x y,path=/a=b,fd=4,verbose,mode=fast-path,tags=a+b_c+d-1",
        )
        .unwrap();
        assert_eq!(
            o,
            Opts {
                id: 7,
                offset: -3,
                big: u64::MAX,
                name: "x y".into(),
                path: Some(PathBuf::from("/a=b")),
                fd: Some(4),
                verbose: true,
                mode: Some(Mode::FastPath),
                tags: vec!["a".into(), "b_c".into(), "d-1".into()],
            }
        );
    }

    #[test]
    fn defaults_and_bools() {
        let o: Opts = from_key_values("id=1,verbose=false,mode=slow").unwrap();
        assert_eq!(
            o,
            Opts {
                id: 1,
                offset: 0,
                big: 0,
                name: String::new(),
                path: None,
                fd: None,
                verbose: false,
                mode: Some(Mode::Slow),
                tags: vec![],
            }
        );
        assert_eq!(
            err("id=1,verbose=yes"),
            r#"invalid value "yes" for key "verbose": expected true or false"#
        );
    }

    #[test]
    fn quoted_values() {
        let o: Opts = from_key_values(r#"name="a,b \"q\" \\ \n",id=2"#).unwrap();
        assert_eq!(o.name, r#"a,b "q" \ \n"#);
        assert_eq!(o.id, 2);
        assert_eq!(
            err(r#"id=1,name="abc"#),
            r#"unterminated quoted value for key "name""#
        );
        assert_eq!(
            err(r#"id=1,name="abc\"#),
            r#"unterminated quoted value for key "name""#
        );
        assert_eq!(
            err(r#"name="abc"x,id=1"#),
            r#"unexpected characters after the quoted value for key "name""#
        );
    }

    #[test]
    fn number_errors() {
        assert_eq!(
            err("id=abc"),
            r#"invalid value "abc" for key "id": expected an unsigned integer"#
        );
        assert_eq!(
            err("id="),
            r#"invalid value "" for key "id": expected an unsigned integer"#
        );
        assert_eq!(
            err("id=70000"),
            r#"invalid value "70000" for key "id": out of range (expected 0..=65535)"#
        );
        assert_eq!(
            err("id=-1"),
            r#"invalid value "-1" for key "id": out of range (expected 0..=65535)"#
        );
        assert_eq!(
            err("id=1,big=999999999999999999999999999999999999999999"),
            r#"invalid value "999999999999999999999999999999999999999999" for key "big": out of range (expected 0..=18446744073709551615)"#
        );
        assert_eq!(
            err("id=1,offset=1.5"),
            r#"invalid value "1.5" for key "offset": expected an integer"#
        );
        assert_eq!(
            err("id=1,offset=3000000000"),
            r#"invalid value "3000000000" for key "offset": out of range (expected -2147483648..=2147483647)"#
        );
    }

    #[test]
    fn key_errors() {
        assert_eq!(
            err("id=1,colour=red"),
            r#"unknown key "colour" (valid keys: id, offset, big, name, path, fd, verbose, mode, tags)"#
        );
        assert_eq!(err("id=1,id=2"), r#"duplicate key "id""#);
        assert_eq!(err("offset=1"), r#"missing required key "id""#);
        assert_eq!(err(""), r#"missing required key "id""#);
        assert_eq!(err("id=1,=5"), r#"empty key in entry "=5""#);
        assert_eq!(
            err("id=1,,name=a"),
            r#"empty entry (stray ',') in "id=1,,name=a""#
        );
        assert_eq!(err("id=1,"), r#"empty entry (stray ',') in "id=1,""#);
        assert_eq!(err(",id=1"), r#"empty entry (stray ',') in ",id=1""#);
        assert_eq!(err("id"), r#"key "id" needs a value (id=...)"#);
        assert_eq!(err("id=1,fd"), r#"key "fd" needs a value (fd=...)"#);
    }

    #[test]
    fn enum_and_list_errors() {
        assert_eq!(
            err("id=1,mode=fast_path"),
            r#"invalid value "fast_path" for key "mode": expected one of: fast-path, slow"#
        );
        assert_eq!(
            err("id=1,tags=a++b"),
            r#"invalid value "a++b" for key "tags": expected a '+'-separated list of non-empty names"#
        );
        assert_eq!(
            err("id=1,tags=a+"),
            r#"invalid value "a+" for key "tags": expected a '+'-separated list of non-empty names"#
        );
        assert_eq!(
            err("id=1,tags="),
            r#"invalid value "" for key "tags": expected a '+'-separated list of non-empty names"#
        );
    }

    #[test]
    fn maps_and_nested() {
        let m: BTreeMap<String, String> = from_key_values("a=1,b=x").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("b").map(String::as_str), Some("x"));

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            v: Vec<u32>,
        }
        assert_eq!(
            from_key_values::<Nested>("v=1").unwrap_err().to_string(),
            r#"invalid value "1" for key "v": lists, maps and nested structs are not supported"#
        );
    }

    #[test]
    fn error_key_accessor() {
        let e = from_key_values::<Opts>("id=x").unwrap_err();
        assert_eq!(e.key(), Some("id"));
        let e = from_key_values::<Opts>("=x").unwrap_err();
        assert_eq!(e.key(), None);
    }

    #[test]
    fn no_panics_on_odd_input() {
        for input in [
            "",
            ",",
            ",,",
            "=",
            "==",
            "\"",
            "=\"",
            "id=\"",
            "id=\"\\",
            "id=é",
            "é=1",
            "id=1,é",
            "id=\u{0}",
            "id=1,,",
            "id=1=2",
            "id=+5",
            "a\"b=1",
            "id=1,name=\"\"\"",
        ] {
            let _ = from_key_values::<Opts>(input);
            let _ = from_key_values::<BTreeMap<String, String>>(input);
        }
        let o: Opts = from_key_values("id=+5").unwrap();
        assert_eq!(o.id, 5);
    }
}
