//! E.164 phone numbers parsed from free-form platform data, and masking for logs.
//!
//! Parsing policy (on top of the `phonenumber` crate):
//! - Only ASCII digits, whitespace, `-`, `.`, `(`, `)`, `/` and one leading `+` are accepted;
//!   letters (vanity numbers, `ext`/`x` extensions, `tel:` URIs) are rejected as [`PhoneError::NotANumber`].
//! - A leading `00` followed by a non-zero digit is read as the international prefix (`+`),
//!   whatever the region's own IDD is (the crate only knows the region's IDD, e.g. `000` for KE,
//!   and would otherwise misread `00254…` as a national number); a region IDD the crate
//!   recognises (e.g. `0011` for AU, `011` for US) still wins.
//! - A number the crate parses but does not consider valid for its country
//!   (`phonenumber::is_valid` is false, e.g. wrong length or unallocated range) is rejected as
//!   [`PhoneError::Invalid`]. Fixed-line numbers are valid: the metadata cannot tell mobile from
//!   fixed in every country (NANP), so no type check is made.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::{Id, Source};
use phonenumber::{Mode, ParseError, PhoneNumber};

/// Maximum digits in an E.164 number (country code included).
const E164_MAX_DIGITS: usize = 15;
/// Inputs with more digits than this are rejected before parsing (no prefix combination shortens them to 15).
const RAW_MAX_DIGITS: usize = 24;

/// Why a mobile number was rejected; messages never contain the number.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum PhoneError {
    /// The input is empty or only whitespace.
    #[error("mobile number is empty")]
    Empty,
    /// The input is not a phone number (letters, stray symbols, no digits, unknown structure).
    #[error("mobile number could not be parsed")]
    NotANumber,
    /// The input is in national format and no default region was given.
    #[error(
        "mobile number is in national format and no default region is configured (set [validation] default_region)"
    )]
    NoRegion,
    /// The input parsed but is not a valid number for its country (or the country code is unknown).
    #[error("mobile number is not a valid number for its country")]
    Invalid,
    /// The input has more digits than E.164 allows.
    #[error("mobile number has more than 15 digits")]
    TooLong,
}

/// A configured default region (ISO 3166-1 alpha-2, e.g. "KE"), validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region(Id);

/// Error for a region code that the phone metadata does not know.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unknown region code {0:?}")]
pub struct UnknownRegion(pub String);

impl Region {
    /// The `phonenumber` crate's id for this region.
    pub fn id(self) -> Id {
        self.0
    }

    /// The two-letter region code, upper case.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl FromStr for Region {
    type Err = UnknownRegion;

    /// Parses a two-letter code, case-insensitively and ignoring surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = s.trim().to_ascii_uppercase();
        let unknown = || UnknownRegion(s.to_owned());
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(unknown());
        }
        let id = Id::from_str(&code).map_err(|_| unknown())?;
        phonenumber::metadata::DATABASE
            .by_id(id.as_ref())
            .ok_or_else(unknown)?;
        Ok(Region(id))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phone number normalised to E.164 (`+` and up to 15 digits).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct E164(String);

impl E164 {
    /// Parses a number as stored by the platform (free-form: spaces, dashes, leading 0 national form, 00 international prefix) using `default_region` for national numbers.
    pub fn parse(raw: &str, default_region: Option<Region>) -> Result<E164, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        let (plus, digits) = clean(trimmed)?;
        if digits.is_empty() {
            return Err(PhoneError::NotANumber);
        }
        if digits.len() > RAW_MAX_DIGITS {
            return Err(PhoneError::TooLong);
        }
        let region = default_region.map(Region::id);

        if plus {
            return finish(phonenumber::parse(region, format!("+{digits}")));
        }
        if let Some(rest) = digits.strip_prefix("00")
            && rest.starts_with(|c: char| matches!(c, '1'..='9'))
        {
            // Let the region's own IDD win when the crate recognises it (e.g. AU "0011").
            if let Some(region) = region
                && let Ok(number) = phonenumber::parse(Some(region), &digits)
                && number.code().source() == Source::Idd
            {
                return finish(Ok(number));
            }
            return finish(phonenumber::parse(None, format!("+{rest}")));
        }
        match region {
            Some(region) => finish(phonenumber::parse(Some(region), &digits)),
            None => Err(PhoneError::NoRegion),
        }
    }

    /// The full E.164 string, e.g. "+254712345678" (personal data: do not log).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the allowed characters and returns (leading plus, ASCII digits).
fn clean(trimmed: &str) -> Result<(bool, String), PhoneError> {
    let (plus, body) = match trimmed.strip_prefix('+') {
        Some(body) => (true, body),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(body.len());
    for c in body.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | '.' | '(' | ')' | '/' => {}
            c if c.is_whitespace() => {}
            _ => return Err(PhoneError::NotANumber),
        }
    }
    Ok((plus, digits))
}

/// Maps a crate parse result to an E.164 number, checking length and validity.
fn finish(parsed: Result<PhoneNumber, ParseError>) -> Result<E164, PhoneError> {
    let number = parsed.map_err(|e| match e {
        ParseError::NoNumber | ParseError::MalformedInteger(_) => PhoneError::NotANumber,
        ParseError::TooLong => PhoneError::TooLong,
        ParseError::InvalidCountryCode | ParseError::TooShortAfterIdd | ParseError::TooShortNsn => {
            PhoneError::Invalid
        }
    })?;
    if number.extension().is_some() {
        return Err(PhoneError::NotANumber);
    }
    let e164 = number.format().mode(Mode::E164).to_string();
    let digit_count = e164.len().saturating_sub(1);
    if digit_count > E164_MAX_DIGITS {
        return Err(PhoneError::TooLong);
    }
    if !phonenumber::is_valid(&number) {
        return Err(PhoneError::Invalid);
    }
    debug_assert!(
        e164.starts_with('+') && digit_count > 0 && e164[1..].bytes().all(|b| b.is_ascii_digit()),
        "phonenumber produced a non-E.164 string"
    );
    Ok(E164(e164))
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("E164").field(&mask(&self.0)).finish()
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0))
    }
}

/// Masks a number for logs: formatting dropped, then the first 5 characters of
/// an international number (3 of a national one) and the last 2 kept, e.g.
/// "+254 712 345 678" -> "+2547******78"; anything that would show more than
/// that is masked whole. Works on any string without panicking.
pub fn mask(raw: &str) -> String {
    const TAIL: usize = 2;
    const MIN_HIDDEN: usize = 5;
    let compact: Vec<char> = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
        .collect();
    let head = if compact.first() == Some(&'+') { 5 } else { 3 };
    let len = compact.len();
    if len < head + TAIL + MIN_HIDDEN {
        return "*".repeat(len);
    }
    compact
        .iter()
        .enumerate()
        .map(|(i, c)| if i < head || i >= len - TAIL { *c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ke() -> Option<Region> {
        Some("KE".parse().unwrap())
    }

    fn ok(raw: &str, region: Option<Region>) -> String {
        match E164::parse(raw, region) {
            Ok(n) => n.as_str().to_owned(),
            Err(e) => panic!("{raw:?} with {region:?}: {e}"),
        }
    }

    fn err(raw: &str, region: Option<Region>) -> PhoneError {
        match E164::parse(raw, region) {
            Ok(n) => panic!("{raw:?} with {region:?} parsed as {}", n.as_str()),
            Err(e) => e,
        }
    }

    #[test]
    fn international_with_spaces() {
        assert_eq!(ok("+254 712 345 678", None), "+254712345678");
        assert_eq!(ok("+254 712 345 678", ke()), "+254712345678");
        assert_eq!(ok(" +254-712-345-678\t", None), "+254712345678");
        assert_eq!(ok("+254 (712) 345.678", None), "+254712345678");
        assert_eq!(ok("+254\u{a0}712\u{a0}345678", None), "+254712345678");
    }

    #[test]
    fn national_with_region() {
        assert_eq!(ok("0712345678", ke()), "+254712345678");
        assert_eq!(ok("0712 345 678", ke()), "+254712345678");
        assert_eq!(ok("(0712) 345-678", ke()), "+254712345678");
        // Without the trunk 0, and with the country code but no plus.
        assert_eq!(ok("712345678", ke()), "+254712345678");
        assert_eq!(ok("254712345678", ke()), "+254712345678");
        // Safaricom's newer 01xx range.
        assert_eq!(ok("0112345678", ke()), "+254112345678");
    }

    #[test]
    fn national_without_region() {
        assert_eq!(err("0712345678", None), PhoneError::NoRegion);
        assert_eq!(err("254712345678", None), PhoneError::NoRegion);
    }

    #[test]
    fn double_zero_international_prefix() {
        // The crate alone reads this as national "+254254712345678" for KE (whose IDD is 000).
        assert_eq!(ok("00254712345678", ke()), "+254712345678");
        assert_eq!(ok("00 254 712 345 678", None), "+254712345678");
        assert_eq!(
            ok("00254712345678", Some("GB".parse().unwrap())),
            "+254712345678"
        );
        assert_eq!(
            ok("00254712345678", Some("US".parse().unwrap())),
            "+254712345678"
        );
        // Region IDDs the crate knows still work.
        assert_eq!(ok("000254712345678", ke()), "+254712345678");
        assert_eq!(
            ok("011254712345678", Some("US".parse().unwrap())),
            "+254712345678"
        );
        assert_eq!(
            ok("0011 254 712 345 678", Some("AU".parse().unwrap())),
            "+254712345678"
        );
        assert_eq!(ok("0044 20 7946 0958", ke()), "+442079460958");
    }

    #[test]
    fn trunk_zero_after_country_code_is_dropped() {
        assert_eq!(ok("+254 0712 345 678", None), "+254712345678");
    }

    #[test]
    fn other_countries() {
        // The crate's metadata treats 202-555-01xx as a valid NANP number.
        assert_eq!(ok("+1 202-555-0143", None), "+12025550143");
        assert_eq!(
            ok("(202) 555-0143", Some("US".parse().unwrap())),
            "+12025550143"
        );
        assert_eq!(ok("+44 20 7946 0958", None), "+442079460958");
        assert_eq!(
            ok("020 7946 0958", Some("GB".parse().unwrap())),
            "+442079460958"
        );
        assert_eq!(ok("+44 7911 123456", None), "+447911123456");
    }

    #[test]
    fn not_a_number() {
        for raw in [
            "hello",
            "+",
            "---",
            "()",
            "+254 712 345 678 please",
            "abc +254712345678",
            "tel:+254712345678",
            "+254712345678 ext 12",
            "+254712345678x12",
            "1-800-FLOWERS",
            "++254712345678",
            "+254+712345678",
            "٠٧١٢٣٤٥٦٧٨",
            "+254712345678;",
        ] {
            assert_eq!(err(raw, ke()), PhoneError::NotANumber, "{raw:?}");
        }
    }

    #[test]
    fn empty() {
        assert_eq!(err("", None), PhoneError::Empty);
        assert_eq!(err("   ", ke()), PhoneError::Empty);
        assert_eq!(err("\t\n", None), PhoneError::Empty);
    }

    #[test]
    fn invalid_for_country() {
        // Ofcom's drama range: well-formed but not allocated, so the metadata rejects it.
        assert_eq!(err("+44 7700 900123", None), PhoneError::Invalid);
        assert_eq!(err("+254 712", None), PhoneError::Invalid);
        assert_eq!(err("+2547", None), PhoneError::Invalid);
        assert_eq!(err("12", ke()), PhoneError::Invalid);
        assert_eq!(err("+999 123456", None), PhoneError::Invalid);
        assert_eq!(err("+254 812 345 678", None), PhoneError::Invalid);
        // A national number that is too short.
        assert_eq!(err("07123", ke()), PhoneError::Invalid);
    }

    #[test]
    fn too_long() {
        assert_eq!(err("+2547123456789012", None), PhoneError::TooLong);
        assert_eq!(err("+25471234567890123456", None), PhoneError::TooLong);
        assert_eq!(err("0712345678901234", ke()), PhoneError::TooLong);
        assert_eq!(err(&"1".repeat(1000), ke()), PhoneError::TooLong);
    }

    #[test]
    fn error_messages_are_readable_and_number_free() {
        assert_eq!(PhoneError::Empty.to_string(), "mobile number is empty");
        assert_eq!(
            PhoneError::NotANumber.to_string(),
            "mobile number could not be parsed"
        );
        assert_eq!(
            PhoneError::NoRegion.to_string(),
            "mobile number is in national format and no default region is configured (set [validation] default_region)"
        );
        assert_eq!(
            PhoneError::Invalid.to_string(),
            "mobile number is not a valid number for its country"
        );
        assert_eq!(
            PhoneError::TooLong.to_string(),
            "mobile number has more than 15 digits"
        );
    }

    #[test]
    fn region_parsing() {
        assert_eq!("KE".parse::<Region>().unwrap().as_str(), "KE");
        assert_eq!(" ke ".parse::<Region>().unwrap().id(), Id::KE);
        assert_eq!("gb".parse::<Region>().unwrap().to_string(), "GB");
        for bad in ["XX", "UK", "ZZ", "001", "", "KEN", "K", "é"] {
            let e = bad.parse::<Region>().unwrap_err();
            assert_eq!(e, UnknownRegion(bad.to_owned()));
            assert_eq!(e.to_string(), format!("unknown region code {bad:?}"));
        }
        assert_eq!(
            "XX".parse::<Region>().unwrap_err().to_string(),
            r#"unknown region code "XX""#
        );
    }

    #[test]
    fn mask_examples() {
        assert_eq!(mask("+254712345678"), "+2547******78");
        assert_eq!(mask("+254 712-345 678"), "+2547******78");
        assert_eq!(mask("0712345678"), "071*****78");
        assert_eq!(mask("0712 345 678"), "071*****78");
        assert_eq!(mask("12345678"), "********");
        assert_eq!(mask("+2547"), "*****");
        assert_eq!(mask(""), "");
        assert_eq!(mask("ñññññññññññ"), "ñññ******ññ");
        assert_eq!(mask("😀😀😀"), "***");
    }

    #[test]
    fn display_and_debug_are_masked() {
        let n = E164::parse("+254712345678", None).unwrap();
        assert_eq!(n.as_str(), "+254712345678");
        assert_eq!(n.to_string(), "+2547******78");
        assert_eq!(format!("{n:?}"), r#"E164("+2547******78")"#);
        assert_eq!(
            format!("{:?}", Ok::<_, PhoneError>(n.clone())),
            r#"Ok(E164("+2547******78"))"#
        );
    }

    /// Numbers from ranges the metadata treats as valid (KE mobile, GB mobile, US).
    fn valid_number() -> impl Strategy<Value = E164> {
        prop_oneof![
            "\\+2547[0-29][0-9]{7}",
            "\\+2541[01][0-9]{7}",
            "\\+447[45789][0-9]{8}",
            "\\+1[2-9][0-9]{2}[2-9][0-9]{6}",
        ]
        .prop_filter_map("not valid per metadata", |s| E164::parse(&s, None).ok())
    }

    proptest! {
        #[test]
        fn formatting_never_reveals_the_number(n in valid_number()) {
            let display = format!("{n}");
            let debug = format!("{n:?}");
            prop_assert!(!display.contains(n.as_str()));
            prop_assert!(!debug.contains(n.as_str()));
            // Neither does it reveal the national significant part.
            let middle = &n.as_str()[5..n.as_str().len() - 2];
            prop_assert!(!display.contains(middle) && !debug.contains(middle));
        }

        #[test]
        fn valid_numbers_round_trip(n in valid_number()) {
            prop_assert_eq!(E164::parse(n.as_str(), None), Ok(n.clone()));
            prop_assert_eq!(E164::parse(n.as_str(), ke()), Ok(n.clone()));
            let double_zero = format!("00{}", &n.as_str()[1..]);
            prop_assert_eq!(E164::parse(&double_zero, ke()), Ok(n.clone()));
        }

        #[test]
        fn ke_national_and_international_agree(sub in "7[0-29][0-9]{7}") {
            let intl = E164::parse(&format!("+254{sub}"), None);
            prop_assert_eq!(E164::parse(&format!("0{sub}"), ke()), intl.clone());
            prop_assert_eq!(E164::parse(&format!("0{} {} {}", &sub[..3], &sub[3..6], &sub[6..]), ke()), intl);
        }

        #[test]
        fn parse_never_panics_and_output_is_e164(raw in "\\PC{0,40}|[0-9+ ()-]{0,30}") {
            for region in [None, ke()] {
                if let Ok(n) = E164::parse(&raw, region) {
                    let s = n.as_str();
                    prop_assert!(s.starts_with('+'));
                    prop_assert!((2..=16).contains(&s.len()));
                    prop_assert!(s[1..].bytes().all(|b| b.is_ascii_digit()));
                    prop_assert!(!s[1..].starts_with('0'));
                }
            }
        }

        #[test]
        fn mask_never_panics_and_hides_at_least_five(raw in "\\PC{0,40}") {
            let m = mask(&raw);
            let stars = m.chars().filter(|c| *c == '*').count();
            let shown = m.chars().count() - stars;
            prop_assert!(shown <= 7);
            prop_assert!(stars >= 5 || shown == 0);
        }
    }
}
