//! Recipients who unsubscribed. A number is kept as the SHA-256 of its E.164
//! form (hex), never as typed: the table is then a list of "do not send to
//! this number" facts that can be matched and cleared by whoever knows the
//! number, without being a second copy of the platform's phone book. It is
//! not encryption (the number space is small enough to enumerate), and it is
//! deliberately unkeyed: every instance and the CLI compute the same key
//! without sharing one more secret, and the numbers themselves are in the
//! `sms` table anyway.

use sha2::{Digest, Sha256};

use super::phone::E164;

/// The stored form of an opted-out number: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OptOutKey(String);

impl OptOutKey {
    /// The key of a normalised number.
    pub fn of(number: &E164) -> Self {
        let digest = Sha256::digest(number.as_str().as_bytes());
        OptOutKey(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A key as the database returned it.
    pub fn from_stored(hex: String) -> Self {
        OptOutKey(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_sha256_of_the_e164_form_whatever_the_spelling() {
        let spaced = E164::parse("+254 712 345 678", None).unwrap();
        let plain = E164::parse("+254712345678", None).unwrap();
        assert_eq!(OptOutKey::of(&spaced), OptOutKey::of(&plain));
        // `printf %s +254712345678 | sha256sum`
        assert_eq!(
            OptOutKey::of(&plain).as_str(),
            "7e68ed1fbff891757a23ef26f54dd9de094c47613a21f736deb30c14b70e8127"
        );
    }
}
