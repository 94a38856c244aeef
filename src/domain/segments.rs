//! SMS encoding detection and segment (part) counting, per GSM 03.38 / 3GPP TS 23.038.

/// Septets in a single-part GSM-7 message.
const GSM7_SINGLE: u32 = 160;
/// Septets per part of a concatenated GSM-7 message (7 septets go to the UDH).
const GSM7_MULTI: u32 = 153;
/// UTF-16 code units in a single-part UCS-2 message.
const UCS2_SINGLE: u32 = 70;
/// UTF-16 code units per part of a concatenated UCS-2 message.
const UCS2_MULTI: u32 = 67;

/// Character encoding an SMS is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet (with the extension table via escape).
    Gsm7,
    /// UCS-2 / UTF-16, used when any character is outside the GSM-7 alphabet.
    Ucs2,
}

/// Size of a message once encoded: its encoding, length and number of parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCount {
    /// Encoding the whole message is sent with.
    pub encoding: Encoding,
    /// septets (GSM-7) or UTF-16 code units (UCS-2)
    pub units: u32,
    /// Number of SMS parts needed (0 for empty text).
    pub segments: u32,
}

/// Whether `c` is in the GSM 03.38 basic table (costs 1 septet).
fn is_gsm7_basic(c: char) -> bool {
    matches!(
        c,
        '@' | '£' | '$' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | '\n' | 'Ø' | 'ø' | '\r'
            | 'Å' | 'å' | 'Δ' | '_' | 'Φ' | 'Γ' | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ'
            | 'Æ' | 'æ' | 'ß' | 'É' | ' ' | '!' | '"' | '#' | '¤' | '%' | '&' | '\''
            | '(' | ')' | '*' | '+' | ',' | '-' | '.' | '/' | '0'..='9' | ':' | ';' | '<'
            | '=' | '>' | '?' | '¡' | 'A'..='Z' | 'Ä' | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿'
            | 'a'..='z' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à'
    )
}

/// Whether `c` is in the GSM 03.38 extension table (costs 2 septets: ESC + code).
fn is_gsm7_extension(c: char) -> bool {
    matches!(
        c,
        '\x0C' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€'
    )
}

/// Septets `c` takes in GSM-7, or `None` if it cannot be encoded in GSM-7.
fn gsm7_septets(c: char) -> Option<u32> {
    if is_gsm7_basic(c) {
        Some(1)
    } else if is_gsm7_extension(c) {
        Some(2)
    } else {
        None
    }
}

/// Whether `c` can be sent in GSM-7 (basic or extension table).
pub fn is_gsm7(c: char) -> bool {
    gsm7_septets(c).is_some()
}

/// Number of parts for per-character unit costs, packing greedily without splitting a character.
fn pack(costs: impl Iterator<Item = u32> + Clone, single: u32, multi: u32) -> (u32, u32) {
    let total = costs.clone().fold(0u32, u32::saturating_add);
    if total == 0 {
        return (0, 0);
    }
    if total <= single {
        return (total, 1);
    }
    let (mut parts, mut fill) = (1u32, 0u32);
    for cost in costs {
        if fill + cost > multi {
            parts = parts.saturating_add(1);
            fill = cost;
        } else {
            fill += cost;
        }
    }
    (total, parts)
}

/// Chooses the encoding for `text` and counts its units and SMS parts.
pub fn count_segments(text: &str) -> SegmentCount {
    if text.chars().all(is_gsm7) {
        let costs = text.chars().map(|c| gsm7_septets(c).unwrap_or(2));
        let (units, segments) = pack(costs, GSM7_SINGLE, GSM7_MULTI);
        SegmentCount {
            encoding: Encoding::Gsm7,
            units,
            segments,
        }
    } else {
        // len_utf16 is 1 or 2, so the cast is lossless.
        let costs = text.chars().map(|c| c.len_utf16() as u32);
        let (units, segments) = pack(costs, UCS2_SINGLE, UCS2_MULTI);
        SegmentCount {
            encoding: Encoding::Ucs2,
            units,
            segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The 127 printable characters of the basic table, in code-point order (0x1B ESC omitted).
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                         ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENSION: &str = "\x0C^{}\\[~]|€";

    fn sc(encoding: Encoding, units: u32, segments: u32) -> SegmentCount {
        SegmentCount {
            encoding,
            units,
            segments,
        }
    }

    #[test]
    fn basic_table_is_exactly_127_chars_plus_escape() {
        assert_eq!(BASIC.chars().count(), 127);
        for c in BASIC.chars() {
            assert!(is_gsm7(c), "{c:?} should be GSM-7");
            assert_eq!(
                count_segments(&c.to_string()),
                sc(Encoding::Gsm7, 1, 1),
                "{c:?}"
            );
        }
        let set: std::collections::HashSet<char> = BASIC.chars().collect();
        assert_eq!(set.len(), 127, "no duplicates");
        assert!(!is_gsm7('\x1B'), "ESC is not a text character");
    }

    #[test]
    fn extension_table_costs_two_septets() {
        assert_eq!(EXTENSION.chars().count(), 10);
        for c in EXTENSION.chars() {
            assert!(is_gsm7(c));
            assert_eq!(
                count_segments(&c.to_string()),
                sc(Encoding::Gsm7, 2, 1),
                "{c:?}"
            );
        }
    }

    #[test]
    fn exhaustive_gsm7_set_over_bmp_and_beyond() {
        let count = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| is_gsm7(c))
            .count();
        assert_eq!(count, 127 + 10);
    }

    #[test]
    fn lookalikes_are_not_gsm7() {
        // Lower-case ç, accented capitals, Greek lower case, curly quotes, backtick, tab.
        for c in [
            'ç', 'À', 'È', 'Ì', 'Ò', 'Ù', 'α', 'δ', '‘', '’', '“', '”', '`', '\t', 'á', 'í', 'ó',
            'ú', 'ê', '•', '–',
        ] {
            assert!(!is_gsm7(c), "{c:?} must not be GSM-7");
            assert_eq!(count_segments(&format!("hi {c}")).encoding, Encoding::Ucs2);
        }
    }

    #[test]
    fn an_escape_then_a_non_gsm_char_counts_in_ucs2() {
        // Form feed is an escape (2 septets) in GSM-7 but one unit in UCS-2.
        let count = count_segments("\u{c}я");
        assert_eq!(
            (count.encoding, count.units, count.segments),
            (Encoding::Ucs2, 2, 1)
        );
    }

    #[test]
    fn empty_text_has_no_segments() {
        assert_eq!(count_segments(""), sc(Encoding::Gsm7, 0, 0));
    }

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(count_segments(&"a".repeat(160)), sc(Encoding::Gsm7, 160, 1));
        assert_eq!(count_segments(&"a".repeat(161)), sc(Encoding::Gsm7, 161, 2));
        assert_eq!(count_segments(&"a".repeat(306)), sc(Encoding::Gsm7, 306, 2));
        assert_eq!(count_segments(&"a".repeat(307)), sc(Encoding::Gsm7, 307, 3));
        // 153 + 153 + 94.
        assert_eq!(count_segments(&"a".repeat(400)), sc(Encoding::Gsm7, 400, 3));
    }

    #[test]
    fn extension_chars_count_double() {
        assert_eq!(count_segments(&"€".repeat(80)), sc(Encoding::Gsm7, 160, 1));
        // 162 septets: part 1 holds 76 escapes (152 septets), part 2 the other 5 (10).
        assert_eq!(count_segments(&"€".repeat(81)), sc(Encoding::Gsm7, 162, 2));
        // 76 + 76 + 1 escapes.
        assert_eq!(count_segments(&"€".repeat(153)), sc(Encoding::Gsm7, 306, 3));
    }

    #[test]
    fn escape_pair_is_never_split_across_parts() {
        // 152 + 2 + 152 = 306 septets would fit 2 × 153 if split, but the pair must move:
        // part 1 = 152, part 2 = € + 151 = 153, part 3 = 1.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(count_segments(&text), sc(Encoding::Gsm7, 306, 3));
        // One fewer trailing char fits in two parts.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(151));
        assert_eq!(count_segments(&text), sc(Encoding::Gsm7, 305, 2));
        // The pair exactly fills part 1 when it starts at 151.
        let text = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(count_segments(&text), sc(Encoding::Gsm7, 306, 2));
    }

    #[test]
    fn ucs2_boundaries() {
        assert_eq!(count_segments(&"я".repeat(70)), sc(Encoding::Ucs2, 70, 1));
        assert_eq!(count_segments(&"я".repeat(71)), sc(Encoding::Ucs2, 71, 2));
        assert_eq!(count_segments(&"я".repeat(134)), sc(Encoding::Ucs2, 134, 2));
        assert_eq!(count_segments(&"я".repeat(135)), sc(Encoding::Ucs2, 135, 3));
    }

    #[test]
    fn one_non_gsm_char_switches_whole_message() {
        let text = format!("{}ç", "a".repeat(69));
        assert_eq!(count_segments(&text), sc(Encoding::Ucs2, 70, 1));
        let text = format!("{}ç", "a".repeat(70));
        assert_eq!(count_segments(&text), sc(Encoding::Ucs2, 71, 2));
        // Extension chars are 1 UTF-16 unit each once in UCS-2.
        let text = format!("{}ç", "€".repeat(69));
        assert_eq!(count_segments(&text), sc(Encoding::Ucs2, 70, 1));
    }

    #[test]
    fn astral_chars_take_two_units() {
        assert_eq!(count_segments("😀"), sc(Encoding::Ucs2, 2, 1));
        assert_eq!(count_segments(&"😀".repeat(35)), sc(Encoding::Ucs2, 70, 1));
        assert_eq!(count_segments(&"😀".repeat(36)), sc(Encoding::Ucs2, 72, 2));
        // 33 pairs per 67-unit part: 67 emoji -> 33 + 33 + 1.
        assert_eq!(count_segments(&"😀".repeat(67)), sc(Encoding::Ucs2, 134, 3));
    }

    #[test]
    fn surrogate_pair_is_never_split_across_parts() {
        // 66 + 2 + 66 = 134 units: part 1 = 66, part 2 = 😀 + 65 = 67, part 3 = 1.
        let text = format!("{}😀{}", "я".repeat(66), "я".repeat(66));
        assert_eq!(count_segments(&text), sc(Encoding::Ucs2, 134, 3));
        let text = format!("{}😀{}", "я".repeat(65), "я".repeat(67));
        assert_eq!(count_segments(&text), sc(Encoding::Ucs2, 134, 2));
    }

    fn gsm_basic_char() -> impl Strategy<Value = char> {
        let chars: Vec<char> = BASIC.chars().collect();
        proptest::sample::select(chars)
    }

    fn any_sms_char() -> impl Strategy<Value = char> {
        let ext: Vec<char> = EXTENSION.chars().collect();
        prop_oneof![
            4 => gsm_basic_char(),
            2 => proptest::sample::select(ext),
            1 => proptest::sample::select(vec!['я', 'ç', 'α', '中', '’']),
            1 => proptest::sample::select(vec!['😀', '🎉', '𝄞']),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #[test]
        fn appending_never_decreases_segments(
            prefix in proptest::collection::vec(any_sms_char(), 0..400),
            c in any_sms_char(),
        ) {
            let text: String = prefix.into_iter().collect();
            let before = count_segments(&text);
            let after = count_segments(&format!("{text}{c}"));
            prop_assert!(after.segments >= before.segments, "{before:?} -> {after:?}");
            // Units are septets or UTF-16 units: comparable only within one encoding
            // ("\x0C" is 2 septets, "\x0Cя" is 2 UCS-2 units).
            if after.encoding == before.encoding {
                prop_assert!(after.units > before.units);
            }
        }

        #[test]
        fn gsm_basic_text_matches_formula(chars in proptest::collection::vec(gsm_basic_char(), 0..800)) {
            let n = chars.len() as u32;
            let text: String = chars.into_iter().collect();
            let expected = if n <= 160 { u32::from(n > 0) } else { n.div_ceil(153) };
            prop_assert_eq!(count_segments(&text), sc(Encoding::Gsm7, n, expected));
        }

        #[test]
        fn ucs2_bmp_text_matches_formula(
            chars in proptest::collection::vec(
                prop_oneof![gsm_basic_char(), proptest::char::range('\u{0400}', '\u{04FF}')], 0..400),
        ) {
            let mut text: String = chars.into_iter().collect();
            text.push('я'); // guarantee UCS-2
            let n = text.chars().count() as u32;
            let expected = if n <= 70 { 1 } else { n.div_ceil(67) };
            prop_assert_eq!(count_segments(&text), sc(Encoding::Ucs2, n, expected));
        }

        #[test]
        fn units_match_encoding(text in ".{0,300}") {
            let count = count_segments(&text);
            match count.encoding {
                Encoding::Gsm7 => {
                    let septets: usize = text.chars().map(|c| if EXTENSION.contains(c) { 2 } else { 1 }).sum();
                    prop_assert_eq!(count.units as usize, septets);
                }
                Encoding::Ucs2 => prop_assert_eq!(count.units as usize, text.encode_utf16().count()),
            }
            // Parts never hold more than their capacity, and are never more than needed for 1-unit worst case.
            prop_assert!(count.segments <= count.units);
        }
    }
}
