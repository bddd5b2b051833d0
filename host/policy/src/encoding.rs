//! Text encodings the host's clients need, written once: base64 (standard and URL-safe
//! alphabets, padded) and percent-encoding of URL path segments and query values.

fn base64_with(bytes: &[u8], table: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64, standard alphabet, padded (an HTTP `Basic` credential).
pub fn base64(bytes: &[u8]) -> String {
    base64_with(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    )
}

/// Decode standard base64 (padding optional): an HTTP `Basic` credential a server reads.
/// `None` for anything else (a character outside the alphabet, a bad length).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Base64, URL-safe alphabet, padded (Docker's `X-Registry-Auth`).
pub fn base64_url(bytes: &[u8]) -> String {
    base64_with(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    )
}

/// Lower-case hex of `bytes` (digests, MACs, key ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Percent-decode `s` (`%41` → `A`); `None` on a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encode everything but RFC 3986's unreserved characters: a path segment or
/// a query value that cannot break out of its place in a URL.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_percent_decoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(percent_decode("a%20b%2Fc").unwrap(), b"a b/c");
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn base64_round_trips() {
        for plain in ["", "a", "ab", "abc", "user:hoist_0123", "\u{e9}t\u{e9}"] {
            assert_eq!(
                base64_decode(&base64(plain.as_bytes())).unwrap(),
                plain.as_bytes()
            );
        }
        assert_eq!(base64_decode("dXNlcjpw").unwrap(), b"user:p");
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("ab$d"), None);
    }

    #[test]
    fn encodings() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:tok", "dXNlcjp0b2s="),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64_url(b"{}"), "e30=");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
        assert_eq!(percent_encode("a b/c?"), "a%20b%2Fc%3F");
    }
}
