//! The HMACs the vendors sign their webhooks with, and their checks in constant time.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// HMAC-SHA1 of `parts` (concatenated) keyed with `key`, in base64 (Twilio).
pub(super) fn sha1_base64(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// HMAC-SHA256 of `parts` (concatenated) keyed with `key`, in lowercase hex.
pub(super) fn sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether two signatures are equal, in time that does not depend on where they differ.
pub(super) fn same(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Whether a hex signature is right, whatever the case of its digits.
pub(super) fn same_hex(expected: &str, given: &str) -> bool {
    same(expected, &given.trim().to_ascii_lowercase())
}

/// Whether `timestamp` (Unix seconds, or milliseconds when it is that large) is within
/// `tolerance` of now, either way.
pub(super) fn fresh(timestamp: &str, tolerance: std::time::Duration) -> bool {
    let Ok(value) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    // Unix seconds have 10 digits until 2286; milliseconds have 13.
    let millis = if value.abs() >= 100_000_000_000 {
        value
    } else {
        value.saturating_mul(1000)
    };
    let now = chrono::Utc::now().timestamp_millis();
    now.abs_diff(millis) <= tolerance.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 2202 and RFC 4231, test case 2.
        assert_eq!(
            hex::encode(
                base64::engine::general_purpose::STANDARD
                    .decode(sha1_base64(
                        b"Jefe",
                        &[b"what do ya want ", b"for nothing?"]
                    ))
                    .unwrap()
            ),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            sha256_hex(b"Jefe", &[b"what do ya want for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn comparisons_and_freshness() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(same_hex("ab12", "AB12"));
        let now = chrono::Utc::now();
        let minute = std::time::Duration::from_secs(60);
        assert!(fresh(&now.timestamp().to_string(), minute));
        assert!(fresh(&now.timestamp_millis().to_string(), minute));
        assert!(!fresh(&(now.timestamp() - 120).to_string(), minute));
        assert!(!fresh("soon", minute));
    }
}
