//! MongoDB's hashed-index hash (`BSONElementHasher::hash64`, seed 0): the value that a
//! `{ field: "hashed" }` index, `convertShardKeyToHashed()` and `$toHashedIndexKey` compute.
//! Partitions use it so that a member on MongoDB 7.0+ can push its filter to the server
//! (`$toHashedIndexKey`) and still agree, event by event, with members that filter here.
//!
//! The hash is the first 8 bytes (little endian) of an MD5 over: the seed (int32 0), then
//! per element its canonical type (int32), its field name with the NUL (not for the top
//! value), and its value: numbers as int64 (truncated, NaN as 0, clamped), objects and arrays
//! as their elements followed by an end marker, anything else as its BSON value bytes.

use md5::{Digest, Md5};

/// A BSON value that cannot be hashed (malformed bytes, or an unknown type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The hash of a document as a value (how `$toHashedIndexKey: "$documentKey"` sees it).
pub fn hash_document(doc: &[u8]) -> Result<i64, Malformed> {
    let mut md5 = Md5::new();
    md5.update(0i32.to_le_bytes());
    hash_value(&mut md5, 0x03, None, doc)?;
    let digest = md5.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Ok(i64::from_le_bytes(first))
}

/// Where a type sorts among the others (the server's `canonicalizeBSONType`).
fn canonical_type(bson_type: u8) -> Result<i32, Malformed> {
    Ok(match bson_type {
        0xFF => -1,
        0x7F => 127,
        0x00 | 0x06 => 0,
        0x0A => 5,
        0x01 | 0x10 | 0x12 | 0x13 => 10,
        0x02 | 0x0E => 15,
        0x03 => 20,
        0x04 => 25,
        0x05 => 30,
        0x07 => 35,
        0x08 => 40,
        0x09 => 45,
        0x11 => 47,
        0x0B => 50,
        0x0C => 55,
        0x0D => 60,
        0x0F => 65,
        _ => return Err(Malformed),
    })
}

/// One value: its canonical type, its name with the NUL (an element's; `None` for the top
/// value), then its contents.
fn hash_value(
    md5: &mut Md5,
    bson_type: u8,
    name: Option<&[u8]>,
    value: &[u8],
) -> Result<(), Malformed> {
    md5.update(canonical_type(bson_type)?.to_le_bytes());
    if let Some(name) = name {
        md5.update(name);
    }
    match bson_type {
        0x03 | 0x04 => hash_elements(md5, value),
        0x0F => {
            // Code with scope: the code string (its bytes and NUL), then the scope's elements.
            let code_len = int32_at(value, 4)?;
            md5.update(value.get(8..8 + code_len).ok_or(Malformed)?);
            hash_elements(md5, value.get(8 + code_len..).ok_or(Malformed)?)
        }
        0x01 | 0x10 | 0x12 | 0x13 => {
            md5.update(number_for_hash(bson_type, value)?.to_le_bytes());
            Ok(())
        }
        _ => {
            md5.update(value);
            Ok(())
        }
    }
}

/// A document's (or array's) elements, each with its name, then the end marker (type 0, no
/// name, no value).
fn hash_elements(md5: &mut Md5, doc: &[u8]) -> Result<(), Malformed> {
    let len = int32_at(doc, 0)?;
    let mut at = 4;
    while at + 1 < len {
        let bson_type = *doc.get(at).ok_or(Malformed)?;
        let name_len = doc
            .get(at + 1..)
            .and_then(|rest| rest.iter().position(|b| *b == 0))
            .ok_or(Malformed)?;
        let value_at = at + 1 + name_len + 1;
        let value_len = value_len(bson_type, doc.get(value_at..).ok_or(Malformed)?)?;
        let value = doc.get(value_at..value_at + value_len).ok_or(Malformed)?;
        hash_value(md5, bson_type, Some(&doc[at + 1..value_at]), value)?;
        at = value_at + value_len;
    }
    md5.update(0i32.to_le_bytes());
    Ok(())
}

fn int32_at(bytes: &[u8], at: usize) -> Result<usize, Malformed> {
    let b = bytes.get(at..at + 4).ok_or(Malformed)?;
    usize::try_from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])).map_err(|_| Malformed)
}

/// The length of a value of `bson_type` at the start of `rest`.
fn value_len(bson_type: u8, rest: &[u8]) -> Result<usize, Malformed> {
    let cstring = |from: usize| -> Result<usize, Malformed> {
        Ok(rest
            .get(from..)
            .ok_or(Malformed)?
            .iter()
            .position(|b| *b == 0)
            .ok_or(Malformed)?
            + 1)
    };
    Ok(match bson_type {
        0x06 | 0x0A | 0xFF | 0x7F => 0,
        0x08 => 1,
        0x10 => 4,
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x07 => 12,
        0x13 => 16,
        0x02 | 0x0D | 0x0E => 4 + int32_at(rest, 0)?,
        0x05 => 5 + int32_at(rest, 0)?,
        0x0C => 4 + int32_at(rest, 0)? + 12,
        0x03 | 0x04 | 0x0F => int32_at(rest, 0)?,
        0x0B => {
            let pattern = cstring(0)?;
            pattern + cstring(pattern)?
        }
        _ => return Err(Malformed),
    })
}

/// A number as the hash sees it: an int64 (the server's `safeNumberLongForHash`).
fn number_for_hash(bson_type: u8, value: &[u8]) -> Result<i64, Malformed> {
    let bytes = |n: usize| value.get(..n).ok_or(Malformed);
    Ok(match bson_type {
        0x10 => {
            let b = bytes(4)?;
            i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        0x12 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes(8)?);
            i64::from_le_bytes(b)
        }
        0x01 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes(8)?);
            let d = f64::from_le_bytes(b);
            // 2^63 keeps the old overflowing cast's result; `as` saturates otherwise, and
            // NaN becomes 0, as the server's conversion does.
            if d == 9_223_372_036_854_775_808.0 {
                i64::MIN
            } else {
                d as i64
            }
        }
        _ => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes(16)?);
            decimal_to_i64(u128::from_le_bytes(b))
        }
    })
}

/// A Decimal128 as int64: rounded half to even, NaN as 0, clamped at the int64 range.
fn decimal_to_i64(bits: u128) -> i64 {
    let negative = bits >> 127 == 1;
    let combination = (bits >> 122) & 0x1F;
    if combination == 0x1F {
        return 0; // NaN
    }
    if combination == 0x1E {
        return if negative { i64::MIN } else { i64::MAX };
    }
    let (exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        // The form whose coefficient would exceed 10^34: not canonical, its value is zero.
        (((bits >> 111) & 0x3FFF) as i32, 0u128)
    } else {
        (((bits >> 113) & 0x3FFF) as i32, bits & ((1u128 << 113) - 1))
    };
    let exponent = exponent - 6176;
    let clamped = if negative { i64::MIN } else { i64::MAX };
    let magnitude: u128 = if coefficient == 0 {
        0
    } else if exponent >= 0 {
        let Some(m) = 10u128
            .checked_pow(exponent as u32)
            .and_then(|p| coefficient.checked_mul(p))
        else {
            return clamped;
        };
        m
    } else {
        let digits = (-exponent) as u32;
        match 10u128.checked_pow(digits) {
            // Below one half: rounds to zero.
            None => 0,
            Some(divisor) => {
                let (q, r) = (coefficient / divisor, coefficient % divisor);
                let half = divisor / 2;
                if r > half || (r == half && q % 2 == 1) {
                    q + 1
                } else {
                    q
                }
            }
        }
    };
    // The exact value beyond the range clamps; within it, the rounded value fits (at most
    // 2^63 in magnitude, which only a negative value reaches).
    let limit = if negative {
        1u128 << 63
    } else {
        (1u128 << 63) - 1
    };
    if magnitude > limit {
        return clamped;
    }
    if negative {
        (magnitude as i128).wrapping_neg() as i64
    } else {
        magnitude as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{
        doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, JavaScriptCodeWithScope, Regex,
        Timestamp,
    };

    /// The hash of `value` itself (as the server's tests hash `BSON("check" << value)`'s
    /// first element): a document `{check: value}`, its one element's value.
    fn hash_of(value: impl Into<Bson>) -> i64 {
        let bytes = mongodb::bson::to_vec(&doc! {"check": value.into()}).unwrap();
        let bson_type = bytes[4];
        let value_at = 4 + 1 + "check".len() + 1;
        let len = value_len(bson_type, &bytes[value_at..]).unwrap();
        let mut md5 = Md5::new();
        md5.update(0i32.to_le_bytes());
        hash_value(&mut md5, bson_type, None, &bytes[value_at..value_at + len]).unwrap();
        i64::from_le_bytes(md5.finalize()[..8].try_into().unwrap())
    }

    fn decimal(s: &str) -> Decimal128 {
        s.parse().unwrap()
    }

    /// The server's own test vectors for hashed indexes (mongo's `hasher_test.cpp`), and the
    /// `$toHashedIndexKey` example of its manual.
    #[test]
    fn agrees_with_the_servers_hashed_index_test_vectors() {
        for (v, h) in [
            (Bson::Int32(42), -944302157085130861i64),
            (Bson::Double(42.123), -944302157085130861),
            (Bson::Int64(42), -944302157085130861),
            (Bson::Int32(0), 4854801880128277513),
            (Bson::Double(0.456), 4854801880128277513),
            (Bson::Double(f64::NAN), 4854801880128277513),
            (Bson::Double(1.987), 5902408780260971510),
            (Bson::Int32(-1), 1140205862565771219),
            (Bson::Double(-1.789), 1140205862565771219),
            (Bson::Int32(i32::MIN), 6165898260261354870),
            (Bson::Double(f64::from(i32::MAX)), 1143184177162245883),
            (Bson::Double(f64::MAX), 921523596458303250),
            (Bson::Int64(i64::MAX), 921523596458303250),
            (Bson::Double(-f64::MAX), 4532067210535695462),
            (Bson::Int64(i64::MIN), 4532067210535695462),
            (Bson::MinKey, 7961148599568647290),
            (Bson::MaxKey, 5504842513779440750),
            (Bson::Undefined, 40158834000849533),
            (Bson::String("abc".into()), 8478485326885698097),
            (Bson::Symbol("abc".into()), 8478485326885698097),
            (Bson::String(String::new()), 2049396243249673340),
            (Bson::String("string to hash".into()), 763543691661428748),
            (
                Bson::Document(doc! {"a": "abc", "b": 123i64}),
                4771603801758380216,
            ),
            (Bson::Document(doc! {}), 7980500913326740417),
            (
                Bson::Array(vec!["bar".into(), "baz".into(), "qux".into()]),
                -2938911267422831539,
            ),
            (Bson::Array(vec![]), 8849948234993459283),
            (
                Bson::ObjectId(ObjectId::parse_str("010203040506070809101112").unwrap()),
                -5588663249627035708,
            ),
            (
                Bson::ObjectId(ObjectId::parse_str("000000000000000000000000").unwrap()),
                -4293118519463489418,
            ),
            (Bson::Boolean(true), 6405873908747105701),
            (Bson::Boolean(false), 6289544573401934092),
            (
                Bson::DateTime(DateTime::from_millis(0x5566778811223344)),
                4476222765095560467,
            ),
            (
                Bson::DateTime(DateTime::from_millis(0)),
                -1178696894582842035,
            ),
            (
                Bson::RegularExpression(Regex {
                    pattern: "mongodb".into(),
                    options: String::new(),
                }),
                -7275792090268217043,
            ),
            (
                Bson::RegularExpression(Regex {
                    pattern: ".*".into(),
                    options: "i".into(),
                }),
                7095855029187981886,
            ),
            (
                Bson::JavaScriptCode("func f() { return 1; }".into()),
                6861638109178014270,
            ),
            (
                Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                    code: "func f() { return 1; }".into(),
                    scope: doc! {"c": true},
                }),
                501342939894575968,
            ),
        ] {
            assert_eq!(hash_of(v.clone()), h, "{v:?}");
        }
        let bytes = vec![0u8, 1, 2, 3, 4, 6];
        let binary = |subtype, bytes: Vec<u8>| Bson::Binary(Binary { subtype, bytes });
        assert_eq!(
            hash_of(binary(BinarySubtype::Generic, bytes.clone())),
            7252465090394235301
        );
        assert_eq!(
            hash_of(binary(BinarySubtype::UserDefined(128), bytes)),
            5736670452907618262
        );
        let uuid: Vec<u8> = (0..16).collect();
        assert_eq!(
            hash_of(binary(BinarySubtype::Uuid, uuid)),
            6084661258071355978
        );
        // A document hashes as the value it is (no field name of its own).
        let key = mongodb::bson::to_vec(&doc! {"a": "abc", "b": 123i64}).unwrap();
        assert_eq!(hash_document(&key), Ok(4771603801758380216));
    }

    #[test]
    fn numbers_hash_as_their_int64_the_way_the_server_converts_them() {
        assert_eq!(hash_of(decimal("42")), hash_of(42));
        assert_eq!(hash_of(decimal("42.4")), hash_of(42));
        // Half to even, clamped, NaN as 0.
        for (s, n) in [
            ("2.5", 2i64),
            ("3.5", 4),
            ("-2.5", -2),
            ("-3.5", -4),
            ("0.5000001", 1),
            ("1E+3", 1000),
            ("12345678901234567890123456789E-20", 123456789),
            ("1E-40", 0),
            ("9223372036854775807", i64::MAX),
            ("1E+30", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("-1E+30", i64::MIN),
            ("Infinity", i64::MAX),
            ("-Infinity", i64::MIN),
            ("NaN", 0),
        ] {
            let bits = u128::from_le_bytes(decimal(s).bytes());
            assert_eq!(decimal_to_i64(bits), n, "{s}");
        }
        // 2^63 as a double keeps the old cast's result.
        assert_eq!(hash_of(9_223_372_036_854_775_808.0f64), hash_of(i64::MIN));
        assert_eq!(hash_of(f64::INFINITY), hash_of(i64::MAX));
        // A timestamp has a type of its own (not a date's).
        assert_ne!(
            hash_of(Timestamp {
                time: 0,
                increment: 0
            }),
            hash_of(DateTime::from_millis(0))
        );
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let key = mongodb::bson::to_vec(&doc! {"_id": "abc", "n": {"x": [1, 2]}}).unwrap();
        for cut in 0..key.len() {
            let mut bytes = key[..cut].to_vec();
            bytes.resize(key.len(), 0);
            let _ = hash_document(&bytes);
        }
        // A string whose length runs past the document.
        let bad = [12, 0, 0, 0, 0x02, b'a', 0, 0xff, 0xff, 0xff, 0x7f, 0];
        assert_eq!(hash_document(&bad), Err(Malformed));
    }
}
