//! The single-pass RFC 8785 serializer: writes straight into one buffer,
//! remembers where each object member starts, and moves bytes only when an
//! object's keys were not already in order.

use serde::ser::{self, Serialize};

use super::JcsError;

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
pub(super) fn key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
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
