//! Phone numbers in E.164.

use std::fmt;

/// A phone number in E.164 form: `+`, a country code that does not start with 0, and at
/// most 15 digits in all. Only valid numbers can be built (parse, don't validate).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a string is not a phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("must start with + and the country code (E.164), e.g. +14155550100")]
    MissingPlus,
    #[error("may hold only digits after the +, besides spaces, dashes, dots and parentheses")]
    InvalidCharacter,
    #[error("must have between 7 and 15 digits (E.164)")]
    BadLength,
    #[error("country code cannot start with 0")]
    LeadingZero,
}

const MIN_DIGITS: usize = 7;
const MAX_DIGITS: usize = 15;

impl PhoneNumber {
    /// Removes spaces, dashes, dots and parentheses, then checks E.164.
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let compact: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let Some(digits) = compact.strip_prefix('+') else {
            return Err(if compact.is_empty() {
                PhoneError::Empty
            } else {
                PhoneError::MissingPlus
            });
        };
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(PhoneError::InvalidCharacter);
        }
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
            return Err(PhoneError::BadLength);
        }
        if digits.starts_with('0') {
            return Err(PhoneError::LeadingZero);
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For rows read back from the database, which only ever stores parsed numbers.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_removed() {
        let a = PhoneNumber::parse("+1 (415) 555-0100").unwrap();
        let b = PhoneNumber::parse("+14155550100").unwrap();
        let c = PhoneNumber::parse("+1.415.555.0100").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.as_str(), "+14155550100");
    }

    #[test]
    fn rejects_what_is_not_e164() {
        let cases = [
            ("", PhoneError::Empty),
            ("  ", PhoneError::Empty),
            ("14155550100", PhoneError::MissingPlus),
            ("00966501234567", PhoneError::MissingPlus),
            ("+1415555010a", PhoneError::InvalidCharacter),
            ("+1415\t5550100", PhoneError::InvalidCharacter),
            ("++14155550100", PhoneError::InvalidCharacter),
            ("+١٤١٥٥٥٥٠١٠٠", PhoneError::InvalidCharacter),
            ("+123456", PhoneError::BadLength),
            ("+1234567890123456", PhoneError::BadLength),
            ("+0123456789", PhoneError::LeadingZero),
        ];
        for (raw, expected) in cases {
            assert_eq!(PhoneNumber::parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn accepts_the_spec_example() {
        assert_eq!(
            PhoneNumber::parse("+966501234567").unwrap().as_str(),
            "+966501234567"
        );
    }
}
