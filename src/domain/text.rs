//! Message text that every database can store and every handset can show:
//! no control characters but line breaks and tabs, and at least one visible character.

/// Why a message text is refused. The wording never quotes the text itself.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("message is empty")]
    Empty,
    /// The code point and its 1-based character position.
    #[error(
        "message contains the control character U+{code:04X} at character {position}; only newline, tab and carriage return are allowed"
    )]
    Control { code: u32, position: usize },
    #[error("message has no visible character (only spaces, zero-width or formatting characters)")]
    Invisible,
}

/// Controls a message may contain: line breaks and tabs.
const ALLOWED_CONTROLS: [char; 3] = ['\t', '\n', '\r'];

/// Control characters (`char::is_control`): C0, DEL and C1.
const CONTROLS: &[(char, char)] = &[('\u{0}', '\u{1F}'), ('\u{7F}', '\u{9F}')];

/// Whitespace (`char::is_whitespace`, Unicode's White_Space).
const WHITESPACE: &[(char, char)] = &[
    ('\t', '\r'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{A0}', '\u{A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// Characters that render as nothing besides whitespace and controls:
/// zero-width and formatting marks, fillers, variation selectors, tags.
const FORMATTING: &[(char, char)] = &[
    ('\u{AD}', '\u{AD}'),
    ('\u{34F}', '\u{34F}'),
    ('\u{61C}', '\u{61C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E007F}'),
    ('\u{E0100}', '\u{E01EF}'),
];

fn within(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|(low, high)| (*low..=*high).contains(&c))
}

/// Checks a message text; `Ok` means it can be stored and sent as it is.
pub fn check_message(text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    // NUL cannot be stored by PostgreSQL at all; the other C0/C1 controls mean
    // nothing on a handset and some gateways cut the message at them.
    if let Some((index, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| within(CONTROLS, *c) && !ALLOWED_CONTROLS.contains(c))
    {
        return Err(TextError::Control {
            code: u32::from(c),
            position: index + 1,
        });
    }
    if text.chars().all(is_invisible) {
        return Err(TextError::Invisible);
    }
    Ok(())
}

/// Characters that render as nothing: whitespace, controls, zero-width and
/// formatting marks, fillers and variation selectors.
pub fn is_invisible(c: char) -> bool {
    within(WHITESPACE, c) || within(CONTROLS, c) || within(FORMATTING, c)
}

/// [`check_message`] as a regular expression, for the OpenAPI document:
/// allowed characters only, at least one of them visible.
pub fn message_pattern() -> String {
    let forbidden: Vec<(char, char)> = CONTROLS
        .iter()
        .flat_map(|&(low, high)| split_out(low, high, &ALLOWED_CONTROLS))
        .collect();
    let invisible: Vec<(char, char)> = [CONTROLS, WHITESPACE, FORMATTING].concat();
    let allowed = format!("[^{}]", class(&forbidden));
    format!("^{allowed}*[^{}]{allowed}*$", class(&invisible))
}

/// A non-empty text without control characters that is not only whitespace,
/// as a regular expression (for query values such as `mobileNo`).
pub fn printable_pattern() -> String {
    let allowed = format!("[^{}]", class(CONTROLS));
    let blank: Vec<(char, char)> = [CONTROLS, WHITESPACE].concat();
    format!("^{allowed}*[^{}]{allowed}*$", class(&blank))
}

/// True if `text` is not only whitespace and has no control character.
pub fn is_printable(text: &str) -> bool {
    !text.trim().is_empty() && !text.chars().any(|c| within(CONTROLS, c))
}

/// The range `low..=high` without the characters of `holes`, as ranges.
fn split_out(low: char, high: char, holes: &[char]) -> Vec<(char, char)> {
    let mut out: Vec<(char, char)> = Vec::new();
    for c in (low..=high).filter(|c| !holes.contains(c)) {
        match out.last_mut() {
            Some((_, end)) if u32::from(*end) + 1 == u32::from(c) => *end = c,
            _ => out.push((c, c)),
        }
    }
    out
}

/// A regex character-class body: BMP characters as `\uXXXX`, others literally
/// (ECMA-262 and Python read a literal astral character the same way).
fn class(ranges: &[(char, char)]) -> String {
    let one = |c: char| {
        if u32::from(c) <= 0xFFFF {
            format!("\\u{:04X}", u32::from(c))
        } else {
            c.to_string()
        }
    };
    ranges
        .iter()
        .map(|&(low, high)| {
            if low == high {
                one(low)
            } else {
                format!("{}-{}", one(low), one(high))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_with_line_breaks_and_emoji_passes() {
        for ok in [
            "Your loan is approved",
            "Line one\nLine two\r\n\tindented",
            "Malipo yamepokelewa 👍",
            "\u{200B}x",
            "مرحبا",
        ] {
            assert_eq!(check_message(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn controls_are_refused_with_their_code_and_position() {
        assert_eq!(
            check_message("hello\u{0}world"),
            Err(TextError::Control {
                code: 0,
                position: 6
            })
        );
        assert_eq!(
            check_message("a\u{1B}[31m"),
            Err(TextError::Control {
                code: 0x1B,
                position: 2
            })
        );
        assert!(matches!(
            check_message("x\u{7F}"),
            Err(TextError::Control { code: 0x7F, .. })
        ));
        assert!(matches!(
            check_message("x\u{85}"),
            Err(TextError::Control { code: 0x85, .. })
        ));
        let message = check_message("secret\u{0}").unwrap_err().to_string();
        assert!(message.contains("U+0000") && !message.contains("secret"));
    }

    #[test]
    fn the_tables_agree_with_the_standard_library() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(
                within(WHITESPACE, c),
                c.is_whitespace(),
                "{:X}",
                u32::from(c)
            );
            assert_eq!(within(CONTROLS, c), c.is_control(), "{:X}", u32::from(c));
        }
    }

    #[test]
    fn the_patterns_say_what_the_checks_do() {
        assert_eq!(
            message_pattern().split(']').next(),
            Some("^[^\\u0000-\\u0008\\u000B-\\u000C\\u000E-\\u001F\\u007F-\\u009F")
        );
        assert!(message_pattern().contains("\\u200B-\\u200F"));
        assert!(message_pattern().contains('\u{E0000}'));
        assert_eq!(
            printable_pattern(),
            "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u001F\\u007F-\\u009F\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028-\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u001F\\u007F-\\u009F]*$"
        );
        assert!(is_printable("+254 712 345 678"));
        assert!(!is_printable(" \u{3000} "));
        assert!(!is_printable("+2547\u{0}"));
    }

    #[test]
    fn empty_or_invisible_only_is_refused() {
        assert_eq!(check_message(""), Err(TextError::Empty));
        assert_eq!(check_message(" \n\t "), Err(TextError::Empty));
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            " \u{200B} ",
            "\u{FE0F}",
            "\u{3164}\u{2800}",
            "\u{E0041}\u{E0042}",
        ] {
            assert_eq!(
                check_message(invisible),
                Err(TextError::Invisible),
                "{invisible:?}"
            );
        }
    }
}
