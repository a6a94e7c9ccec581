//! Decoding from canonical bytes, checking the canonical form in the same
//! pass (see [`from_canonical_slice`]).

use serde::de;

use super::JcsError;
use super::check::{MAX_DEPTH, Num, Validator, key_raw_less};

/// Decodes `T` from `bytes`, which must be exactly RFC 8785 canonical JSON,
/// checking the canonical form in the same single pass: the bytes are read
/// once, strings without escapes are handed to the visitor borrowed (no
/// allocation), numbers are parsed once for both the canonical-form check
/// and the value. Accepts exactly the inputs for which [`is_canonical`]
/// holds and `serde_json` would decode `T` (with the same values), for the
/// types the ledger decodes (structs, options, sequences, unit-variant
/// enums written as strings, numbers, strings, booleans). The error only
/// says that something is wrong; callers decode again with `serde_json` to
/// name it.
pub fn from_canonical_slice<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, JcsError> {
    // One UTF-8 check of the whole input; strings are then sliced from it.
    let text = std::str::from_utf8(bytes).map_err(|e| JcsError(e.to_string()))?;
    let mut d = CanonicalDeserializer {
        v: Validator {
            b: bytes,
            i: 0,
            plain: false,
        },
        text,
        depth: 0,
    };
    let t = T::deserialize(&mut d)?;
    if d.v.i != bytes.len() {
        return Err(d.error());
    }
    Ok(t)
}

struct CanonicalDeserializer<'de> {
    v: Validator<'de>,
    /// The same bytes as `v`, known to be UTF-8.
    text: &'de str,
    depth: usize,
}

impl<'de> CanonicalDeserializer<'de> {
    fn error(&self) -> JcsError {
        JcsError(format!(
            "not canonical JSON, or not the expected value, at byte {}",
            self.v.i
        ))
    }

    fn enter(&mut self) -> Result<(), JcsError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error());
        }
        Ok(())
    }

    /// The next canonical string, raw (between the quotes) and decoded:
    /// borrowed when it holds no escape.
    fn string(&mut self) -> Result<(&'de [u8], Str<'de>), JcsError> {
        let start = self.v.i + 1;
        let raw = self.v.string().ok_or_else(|| self.error())?;
        let s = if !self.v.plain && memchr::memchr(b'\\', raw).is_some() {
            unescape_canonical(raw)
                .map(Str::Owned)
                .ok_or_else(|| self.error())?
        } else {
            // Between two quotes (ASCII), so on character boundaries.
            self.text
                .get(start..start + raw.len())
                .map(Str::Borrowed)
                .ok_or_else(|| self.error())?
        };
        Ok((raw, s))
    }
}

enum Str<'de> {
    Borrowed(&'de str),
    Owned(String),
}

/// The content of a canonically escaped string (only `\\" \\\\ \\b \\f \\n \\r \\t`
/// and `\\u00xx` occur; [`Validator::string`] checked that).
fn unescape_canonical(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            _ => return None,
        });
    }
    Some(out)
}

impl<'de> de::Deserializer<'de> for &mut CanonicalDeserializer<'de> {
    type Error = JcsError;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, JcsError> {
        match self.v.peek() {
            Some(b'{') => {
                self.enter()?;
                self.v.i += 1;
                let mut access = MapAccess {
                    de: &mut *self,
                    first: true,
                    ended: false,
                    prev: None,
                };
                let value = visitor.visit_map(&mut access)?;
                if !access.ended {
                    return Err(self.error());
                }
                self.depth -= 1;
                Ok(value)
            }
            Some(b'[') => {
                self.enter()?;
                self.v.i += 1;
                let mut access = SeqAccess {
                    de: &mut *self,
                    first: true,
                    ended: false,
                };
                let value = visitor.visit_seq(&mut access)?;
                if !access.ended {
                    return Err(self.error());
                }
                self.depth -= 1;
                Ok(value)
            }
            Some(b'"') => match self.string()?.1 {
                Str::Borrowed(s) => visitor.visit_borrowed_str(s),
                Str::Owned(s) => visitor.visit_string(s),
            },
            Some(b't') if self.v.literal(b"true") => visitor.visit_bool(true),
            Some(b'f') if self.v.literal(b"false") => visitor.visit_bool(false),
            Some(b'n') if self.v.literal(b"null") => visitor.visit_unit(),
            Some(b'-' | b'0'..=b'9') => match self.v.number_value() {
                Some(Num::U(u)) => visitor.visit_u64(u),
                Some(Num::I(i)) => visitor.visit_i64(i),
                Some(Num::F(f)) => visitor.visit_f64(f),
                None => Err(self.error()),
            },
            _ => Err(self.error()),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, JcsError> {
        if self.v.peek() == Some(b'n') {
            if self.v.literal(b"null") {
                visitor.visit_none()
            } else {
                Err(self.error())
            }
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JcsError> {
        // Unit variants written as strings; anything else is left to the
        // full decoder (the caller falls back to it on any error).
        if self.v.peek() != Some(b'"') {
            return Err(self.error());
        }
        match self.string()?.1 {
            Str::Borrowed(s) => de::value::BorrowedStrDeserializer::<JcsError>::new(s)
                .deserialize_enum(name, variants, visitor),
            Str::Owned(s) => de::IntoDeserializer::<JcsError>::into_deserializer(s)
                .deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, JcsError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, JcsError> {
        if self.v.value(self.depth) {
            visitor.visit_unit()
        } else {
            Err(self.error())
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct MapAccess<'a, 'de> {
    de: &'a mut CanonicalDeserializer<'de>,
    first: bool,
    ended: bool,
    /// The previous key's raw bytes and whether it was plain.
    prev: Option<(&'de [u8], bool)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, 'de> {
    type Error = JcsError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, JcsError> {
        if self.ended {
            return Ok(None);
        }
        let v = &mut self.de.v;
        match (self.first, v.peek()) {
            (_, Some(b'}')) => {
                v.i += 1;
                self.ended = true;
                return Ok(None);
            }
            (true, _) => {}
            (false, Some(b',')) => v.i += 1,
            _ => return Err(self.de.error()),
        }
        self.first = false;
        let (raw, key) = self.de.string()?;
        let plain = self.de.v.plain;
        if let Some((p, p_plain)) = self.prev {
            let less = if p_plain && plain {
                p < raw
            } else {
                key_raw_less(p, raw)
            };
            if !less {
                return Err(self.de.error());
            }
        }
        self.prev = Some((raw, plain));
        if self.de.v.peek() != Some(b':') {
            return Err(self.de.error());
        }
        self.de.v.i += 1;
        match key {
            Str::Borrowed(s) => seed
                .deserialize(de::value::BorrowedStrDeserializer::<JcsError>::new(s))
                .map(Some),
            Str::Owned(s) => seed
                .deserialize(de::IntoDeserializer::<JcsError>::into_deserializer(s))
                .map(Some),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, JcsError> {
        seed.deserialize(&mut *self.de)
    }
}

struct SeqAccess<'a, 'de> {
    de: &'a mut CanonicalDeserializer<'de>,
    first: bool,
    ended: bool,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, 'de> {
    type Error = JcsError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, JcsError> {
        if self.ended {
            return Ok(None);
        }
        let v = &mut self.de.v;
        match v.peek() {
            Some(b']') => {
                v.i += 1;
                self.ended = true;
                return Ok(None);
            }
            Some(b',') if !self.first => v.i += 1,
            _ if self.first => {}
            _ => return Err(self.de.error()),
        }
        self.first = false;
        seed.deserialize(&mut *self.de).map(Some)
    }
}
