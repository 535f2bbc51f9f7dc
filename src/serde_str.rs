//! Serde for settings whose types parse from strings (`SchedulerKind`, `PredictionType`, ...):
//! written as their `Display` text, read from a string, with `null`, absent and `""` meaning
//! "not set" (what an empty `<select>` or text field of the page sends).

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};

/// `#[serde(with = "crate::serde_str::opt")]` for `Option<T>` fields.
pub mod opt {
    use super::*;

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(d)? {
            Some(s) if !s.trim().is_empty() => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
            _ => Ok(None),
        }
    }
}

/// `#[serde(with = "crate::serde_str::req")]` for fields that are always set.
pub mod req {
    use super::*;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.trim().parse().map_err(serde::de::Error::custom)
    }
}
