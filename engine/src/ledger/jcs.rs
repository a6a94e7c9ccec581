//! A fast, single-pass RFC 8785 serializer for serde types.
//!
//! `serde_json_canonicalizer` (the reference we test against, byte for byte,
//! in `engine/tests/ledger_canonical.rs`) buffers every object member in its
//! own allocation and re-parses each key to sort it; that costs ~8 µs per
//! ledger entry, more than the whole 5 µs append budget. This serializer
//! writes straight into one buffer, remembers where each member starts, and
//! only moves bytes when an object's keys were not already in order (our
//! wire structs declare their fields sorted, so usually nothing moves).
//!
//! RFC 8785 rules implemented here: members sorted by the UTF-16 code units
//! of their names; no whitespace; strings with only `"`, `\\` and control
//! characters escaped (`\b \t \n \f \r`, else `\u00xx` lowercase); numbers
//! in ECMAScript `Number.prototype.toString` form (via `ryu-js`), `-0` as
//! `0`; NaN and ±∞ refused; duplicate keys refused.

use std::fmt::Display;

use serde::de;
use serde::ser::{self, Serialize};

/// Why a value has no canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JcsError(String);

impl ser::Error for JcsError {
    fn custom<T: Display>(msg: T) -> Self {
        JcsError(msg.to_string())
    }
}

/// Appends the RFC 8785 form of `value` to `out`. On error `out` may hold a partial value.
pub fn to_writer<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), JcsError> {
    value.serialize(&mut Jcs {
        out,
        members: Vec::new(),
        scratch: Vec::new(),
    })
}

struct Jcs<'a> {
    out: &'a mut Vec<u8>,
    /// Members of every open object, innermost last (no allocation per object).
    members: Vec<(Key, usize, usize)>,
    /// Reordering space, reused by every object.
    scratch: Vec<u8>,
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_f64(out: &mut Vec<u8>, v: f64) -> Result<(), JcsError> {
    if !v.is_finite() {
        return Err(JcsError(format!(
            "{v} is not a finite number and has no JSON form"
        )));
    }
    if v == 0.0 {
        out.push(b'0');
        return Ok(());
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(v).as_bytes());
    Ok(())
}

/// JSON numbers are IEEE 754 doubles (RFC 8785 §3.2.2.3): integers up to
/// 2^53 print as their digits, larger ones as the double they round to.
fn write_int<I: itoa::Integer + Into<i128>>(out: &mut Vec<u8>, v: I) {
    let wide: i128 = v.into();
    if wide.unsigned_abs() <= 1 << 53 {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(wide).as_bytes());
    } else {
        // Finite by construction, so this cannot fail.
        let _ = write_f64(out, wide as f64);
    }
}

/// Appends the RFC 8785 form of a job's spec as its hash covers it: the
/// array `[model, accelerator, count, maxDuration, priority]`, written
/// member by member in canonical order instead of through `serde` (the
/// same bytes as [`to_writer`] of that tuple, tested; it is computed for
/// every submission). On error `out` may hold a partial value.
pub fn write_job_spec(
    out: &mut Vec<u8>,
    model: &crate::job::ModelSpec,
    accelerator: &crate::job::AcceleratorSpec,
    count: u32,
    max_duration: crate::duration::GoDuration,
    priority: i32,
) -> Result<(), JcsError> {
    out.extend_from_slice(b"[{");
    // ModelSpec's members in UTF-16 order, absent ones skipped as serde does.
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>, key: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(key);
    };
    if let Some(b) = &model.base_model {
        sep(out, b"\"baseModel\":");
        write_str(out, b);
    }
    if let Some(n) = &model.name {
        sep(out, b"\"name\":");
        write_str(out, n);
    }
    if let Some(p) = model.parameters {
        sep(out, b"\"parameters\":");
        write_f64(out, p)?;
    }
    if let Some(t) = model.tokens {
        sep(out, b"\"tokens\":");
        write_f64(out, t)?;
    }
    out.extend_from_slice(b"},{\"precision\":");
    write_str(out, accelerator.precision.as_str());
    out.extend_from_slice(b",\"type\":");
    write_str(out, &accelerator.kind);
    out.extend_from_slice(b"},");
    write_int(out, count);
    out.push(b',');
    let mut duration = String::new();
    std::fmt::Write::write_fmt(&mut duration, format_args!("{max_duration}"))
        .map_err(|e| JcsError(e.to_string()))?;
    write_str(out, &duration);
    out.push(b',');
    write_int(out, priority);
    out.push(b']');
    Ok(())
}

/// Orders member names by UTF-16 code units (RFC 8785 §3.2.3).
fn key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

enum Key {
    Static(&'static str),
    Owned(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Static(s) => s,
            Key::Owned(s) => s,
        }
    }
}

/// An object being written: where it starts and where each member lies.
struct Object<'s, 'a> {
    ser: &'s mut Jcs<'a>,
    /// Position just after `{`.
    start: usize,
    /// Index of this object's first member in `ser.members`.
    base: usize,
    pending_key: Option<Key>,
    /// Close an extra `}` (struct and map variants are `{"Variant":{…}}`).
    variant: bool,
}

impl<'s, 'a> Object<'s, 'a> {
    fn new(ser: &'s mut Jcs<'a>, variant: Option<&'static str>) -> Self {
        if let Some(v) = variant {
            ser.out.push(b'{');
            write_str(ser.out, v);
            ser.out.push(b':');
        }
        ser.out.push(b'{');
        let start = ser.out.len();
        let base = ser.members.len();
        Object {
            ser,
            start,
            base,
            pending_key: None,
            variant: variant.is_some(),
        }
    }

    fn member<T: Serialize + ?Sized>(&mut self, key: Key, value: &T) -> Result<(), JcsError> {
        if self.ser.members.len() > self.base {
            self.ser.out.push(b',');
        }
        let begin = self.ser.out.len();
        write_str(self.ser.out, key.as_str());
        self.ser.out.push(b':');
        value.serialize(&mut *self.ser)?;
        let end = self.ser.out.len();
        self.ser.members.push((key, begin, end));
        Ok(())
    }

    fn finish(self) -> Result<(), JcsError> {
        let Object {
            ser,
            start,
            base,
            variant,
            ..
        } = self;
        let Jcs {
            out,
            members,
            scratch,
        } = ser;
        let mine = &mut members[base..];
        let sorted = mine
            .windows(2)
            .all(|w| key_cmp(w[0].0.as_str(), w[1].0.as_str()).is_lt());
        if !sorted {
            mine.sort_by(|a, b| key_cmp(a.0.as_str(), b.0.as_str()));
            if let Some(w) = mine
                .windows(2)
                .find(|w| key_cmp(w[0].0.as_str(), w[1].0.as_str()).is_eq())
            {
                return Err(JcsError(format!(
                    "duplicate object key {:?}",
                    w[0].0.as_str()
                )));
            }
            scratch.clear();
            for (i, (_, b, e)) in mine.iter().enumerate() {
                if i > 0 {
                    scratch.push(b',');
                }
                scratch.extend_from_slice(&out[*b..*e]);
            }
            out.truncate(start);
            out.extend_from_slice(scratch);
        }
        members.truncate(base);
        out.push(b'}');
        if variant {
            out.push(b'}');
        }
        Ok(())
    }
}

/// An array being written.
struct Array<'s, 'a> {
    ser: &'s mut Jcs<'a>,
    first: bool,
    variant: bool,
}

impl<'s, 'a> Array<'s, 'a> {
    fn new(ser: &'s mut Jcs<'a>, variant: Option<&'static str>) -> Self {
        if let Some(v) = variant {
            ser.out.push(b'{');
            write_str(ser.out, v);
            ser.out.push(b':');
        }
        ser.out.push(b'[');
        Array {
            ser,
            first: true,
            variant: variant.is_some(),
        }
    }
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        if !self.first {
            self.ser.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.ser)
    }
    fn finish(self) -> Result<(), JcsError> {
        self.ser.out.push(b']');
        if self.variant {
            self.ser.out.push(b'}');
        }
        Ok(())
    }
}

impl<'s, 'a> ser::Serializer for &'s mut Jcs<'a> {
    type Ok = ();
    type Error = JcsError;
    type SerializeSeq = Array<'s, 'a>;
    type SerializeTuple = Array<'s, 'a>;
    type SerializeTupleStruct = Array<'s, 'a>;
    type SerializeTupleVariant = Array<'s, 'a>;
    type SerializeMap = Object<'s, 'a>;
    type SerializeStruct = Object<'s, 'a>;
    type SerializeStructVariant = Object<'s, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), JcsError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), JcsError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), JcsError> {
        write_f64(self.out, v as f64)
    }
    fn serialize_f32(self, v: f32) -> Result<(), JcsError> {
        write_f64(self.out, f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), JcsError> {
        write_f64(self.out, v)
    }
    fn serialize_char(self, v: char) -> Result<(), JcsError> {
        let mut b = [0u8; 4];
        write_str(self.out, v.encode_utf8(&mut b));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), JcsError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), JcsError> {
        let mut a = Array::new(self, None);
        for b in v {
            a.element(b)?;
        }
        a.finish()
    }
    fn serialize_none(self) -> Result<(), JcsError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), JcsError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), JcsError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), JcsError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), JcsError> {
        write_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'s, 'a>, JcsError> {
        Ok(Array::new(self, None))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Array<'s, 'a>, JcsError> {
        Ok(Array::new(self, None))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Array<'s, 'a>, JcsError> {
        Ok(Array::new(self, None))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'s, 'a>, JcsError> {
        Ok(Array::new(self, Some(variant)))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'s, 'a>, JcsError> {
        Ok(Object::new(self, None))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Object<'s, 'a>, JcsError> {
        Ok(Object::new(self, None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'s, 'a>, JcsError> {
        Ok(Object::new(self, Some(variant)))
    }
}

impl ser::SerializeSeq for Array<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.element(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeTuple for Array<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.element(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Array<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.element(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Array<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.element(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        self.member(Key::Static(key), value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        self.member(Key::Static(key), value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl ser::SerializeMap for Object<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), JcsError> {
        self.pending_key = Some(Key::Owned(key.serialize(KeyName)?));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| JcsError("map value without a key".into()))?;
        self.member(key, value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

/// Map keys must be strings (numbers are written as their decimal text, as serde_json does).
struct KeyName;

impl ser::Serializer for KeyName {
    type Ok = String;
    type Error = JcsError;
    type SerializeSeq = ser::Impossible<String, JcsError>;
    type SerializeTuple = ser::Impossible<String, JcsError>;
    type SerializeTupleStruct = ser::Impossible<String, JcsError>;
    type SerializeTupleVariant = ser::Impossible<String, JcsError>;
    type SerializeMap = ser::Impossible<String, JcsError>;
    type SerializeStruct = ser::Impossible<String, JcsError>;
    type SerializeStructVariant = ser::Impossible<String, JcsError>;

    fn serialize_str(self, v: &str) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_char(self, v: char) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String, JcsError> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, JcsError> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_i8(self, v: i8) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, JcsError> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _: f32) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_f64(self, _: f64) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_none(self) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_unit(self) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, JcsError> {
        Err(not_a_key())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, JcsError> {
        Err(not_a_key())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, JcsError> {
        Err(not_a_key())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, JcsError> {
        Err(not_a_key())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, JcsError> {
        Err(not_a_key())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, JcsError> {
        Err(not_a_key())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, JcsError> {
        Err(not_a_key())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, JcsError> {
        Err(not_a_key())
    }
}

fn not_a_key() -> JcsError {
    JcsError("object keys must be strings".into())
}

/// Whether `bytes` are exactly the RFC 8785 encoding of some JSON value:
/// valid UTF-8 and JSON, no whitespace, object keys strictly increasing by
/// UTF-16 code units (so no duplicates), minimal string escapes, every
/// number written as ECMAScript writes its double. Equivalent to
/// `canonical(parse(bytes)) == bytes`, without building the value (tested
/// against that definition in `engine/tests/ledger_canonical.rs`).
pub fn is_canonical(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut v = Validator {
        b: bytes,
        i: 0,
        plain: false,
    };
    v.value(0) && v.i == bytes.len()
}

struct Validator<'a> {
    b: &'a [u8],
    i: usize,
    /// Whether the last string read held no escape and no non-ASCII byte
    /// (its raw bytes then order like its UTF-16 code units).
    plain: bool,
}

/// serde_json's recursion limit; deeper input is refused rather than overflowing the stack.
const MAX_DEPTH: usize = 128;

impl<'a> Validator<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return true;
        }
        let mut prev: Option<&'a [u8]> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            if let Some(p) = prev
                && !key_raw_less(p, key)
            {
                return false;
            }
            prev = Some(key);
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            if !self.value(depth + 1) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// A canonically escaped string; returns its raw content (between the quotes).
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let start = self.i;
        self.plain = true;
        loop {
            // Skip plain bytes in bulk; control characters in them are
            // refused. (A fold without early exit, so it vectorizes.)
            let rest = &self.b[self.i..];
            let skip = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            let (control, high) = rest[..skip].iter().fold((false, false), |(c, h), &b| {
                (c | (b < 0x20), h | (b >= 0x80))
            });
            if control {
                return None;
            }
            if high {
                self.plain = false;
            }
            self.i += skip;
            let c = *self.b.get(self.i)?;
            match c {
                b'"' => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    return Some(raw);
                }
                0x00..=0x1f => return None,
                b'\\' => {
                    self.plain = false;
                    let e = *self.b.get(self.i + 1)?;
                    match e {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            // Only control characters without a short form use \u00xx, lowercase.
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            if &hex[..2] != b"00" {
                                return None;
                            }
                            let d = |x: u8| match x {
                                b'0'..=b'9' => Some(x - b'0'),
                                b'a'..=b'f' => Some(x - b'a' + 10),
                                _ => None,
                            };
                            let v = d(hex[2])? * 16 + d(hex[3])?;
                            if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => self.i += 1,
            }
        }
    }

    fn number(&mut self) -> bool {
        self.number_value().is_some()
    }

    /// A canonically written number and its value, as serde_json hands it
    /// to a visitor: digits that fit `u64` (or `i64` when negative) as an
    /// integer, anything else as the double.
    fn number_value(&mut self) -> Option<Num> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                self.i += 1;
            } else {
                break;
            }
        }
        let text = &self.b[start..self.i];
        // Fast path: a plain integer below 2^53 is canonical when it has no
        // leading zero and is not "-0".
        let negative = text.first() == Some(&b'-');
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        let integer = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
        if integer && digits.len() <= 15 {
            if !((digits[0] != b'0' || text == b"0") && text != b"-0") {
                return None;
            }
            let v = digits
                .iter()
                .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
            return Some(if negative {
                // At most 15 digits: fits i64.
                Num::I(0 - v as i64)
            } else {
                Num::U(v)
            });
        }
        // ASCII by construction.
        let s = std::str::from_utf8(text).ok()?;
        // Rust's float grammar is laxer than JSON's ("1.", ".5", "+1"), but
        // the re-encoding comparison below rejects every such spelling.
        let v = s.parse::<f64>().ok()?;
        if !v.is_finite() {
            return None;
        }
        if v == 0.0 {
            return (text == b"0").then_some(Num::U(0));
        }
        let mut buf = ryu_js::Buffer::new();
        if buf.format_finite(v).as_bytes() != text {
            return None;
        }
        if integer {
            if negative {
                if let Ok(i) = s.parse::<i64>() {
                    return Some(Num::I(i));
                }
            } else if let Ok(u) = s.parse::<u64>() {
                return Some(Num::U(u));
            }
        }
        Some(Num::F(v))
    }
}

/// `a < b` for raw (canonically escaped) key contents, by UTF-16 code units
/// of the decoded strings.
fn key_raw_less(a: &[u8], b: &[u8]) -> bool {
    // UTF-8 byte order equals UTF-16 code unit order for characters below
    // U+E000 (lead bytes below 0xEE); escapes need decoding first.
    let plain = |k: &[u8]| k.iter().all(|&c| c < 0xee && c != b'\\');
    if plain(a) && plain(b) {
        return a < b;
    }
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        if let (Ok(x), Ok(y)) = (std::str::from_utf8(a), std::str::from_utf8(b)) {
            return key_cmp(x, y).is_lt();
        }
        return false;
    }
    match (unescape(a), unescape(b)) {
        (Some(x), Some(y)) => key_cmp(&x, &y).is_lt(),
        _ => false,
    }
}

fn unescape(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    serde_json::from_str::<String>(&format!("\"{s}\"")).ok()
}

/// A JSON number as a visitor receives it.
#[derive(Clone, Copy, Debug)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl de::Error for JcsError {
    fn custom<T: Display>(msg: T) -> Self {
        JcsError(msg.to_string())
    }
}

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
