//! Text a plugin wrote, made safe to show: one printable line, no control sequences.
//! Everything a plugin says (log records, its stdout and stderr, its processes' output,
//! error messages, `describe()` names and summaries) passes through [`sanitize`] before
//! it reaches a terminal.

use std::borrow::Cow;

/// Whether a character must not reach a terminal as it is: C0 controls but tab, DEL, C1
/// controls (U+0080-U+009F, which some terminals read as CSI/OSC), the bidi embeddings,
/// overrides and isolates (U+202A-U+202E, U+2066-U+2069: text that displays reordered),
/// and the Unicode line and paragraph separators (U+2028, U+2029: line breaks to some
/// viewers).
pub fn unprintable(c: char) -> bool {
    matches!(
        c,
        '\0'..='\u{8}'
            | '\u{a}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// `text` as one printable line: every character of [`unprintable`] spelled out as a
/// Rust escape (`\n`, `\r`, else `\u{1b}`, `\u{9b}`, `\u{202e}`), everything else kept
/// (tabs included). Backslashes are not escaped, so sanitising twice changes nothing;
/// the result is for people, not for parsing back. Borrows when there is nothing to
/// replace (the common case: one pass over the bytes).
pub fn sanitize(text: &str) -> Cow<'_, str> {
    // Printable ASCII and tab need nothing; anything else is looked at as characters.
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return Cow::Borrowed(text);
    }
    let Some(first) = text.find(unprintable) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unprintable(c) => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}
