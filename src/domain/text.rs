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
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
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
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
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
