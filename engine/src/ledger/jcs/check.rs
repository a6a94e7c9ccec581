//! The canonical-form check: whether bytes are exactly the RFC 8785
//! encoding of some JSON value, read once without building the value. The
//! decoder reads through the same [`Validator`].

use super::write::key_cmp;

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

pub(super) struct Validator<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    /// Whether the last string read held no escape and no non-ASCII byte
    /// (its raw bytes then order like its UTF-16 code units).
    pub(super) plain: bool,
}

/// serde_json's recursion limit; deeper input is refused rather than overflowing the stack.
pub(super) const MAX_DEPTH: usize = 128;

impl<'a> Validator<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(super) fn literal(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    pub(super) fn value(&mut self, depth: usize) -> bool {
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
    pub(super) fn string(&mut self) -> Option<&'a [u8]> {
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
    pub(super) fn number_value(&mut self) -> Option<Num> {
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
pub(super) fn key_raw_less(a: &[u8], b: &[u8]) -> bool {
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
pub(super) enum Num {
    U(u64),
    I(i64),
    F(f64),
}
