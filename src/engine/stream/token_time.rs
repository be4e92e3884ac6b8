//! The cluster time inside a real MongoDB resume token, as an extra: tokens of other
//! servers are opaque.

use mongodb::bson::{RawDocument, Timestamp};

/// The cluster time inside a real MongoDB resume token (KeyString: `_data` hex starting
/// with type byte 0x82, then 4-byte seconds and 4-byte increment, big-endian). Other
/// servers' tokens are opaque: `None`, never an error.
pub fn keystring_token_time(token: &RawDocument) -> Option<Timestamp> {
    let data = token.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.starts_with("82") {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok();
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = byte(i + 1)?;
    }
    Some(Timestamp {
        time: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        increment: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, RawDocumentBuf};

    fn raw(d: mongodb::bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn decodes_real_keystring_tokens() {
        // 0x82, seconds 0x65A1B2C3, increment 0x00000007, then the rest of a real token.
        let token = raw(doc! {"_data": "8265A1B2C3000000072B022C0100296E5A1004"});
        assert_eq!(
            keystring_token_time(&token),
            Some(Timestamp {
                time: 0x65A1_B2C3,
                increment: 7
            })
        );
    }

    #[test]
    fn other_token_formats_are_opaque() {
        for t in [
            doc! {"_data": "2a00000010730002000000117400080000002e3a026b"},
            doc! {"_data": "82zz"},
            doc! {"_data": 5},
            doc! {},
        ] {
            assert_eq!(keystring_token_time(&raw(t)), None);
        }
    }
}
