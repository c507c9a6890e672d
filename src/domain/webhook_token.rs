//! The token that binds a webhook URL to one attempt of one call.
//!
//! Without `WEBHOOK_SECRET`, nothing in a webhook proves that the provider sent it: its
//! body names a `callId` that anyone may guess (sequential ids are common). So the webhook
//! URL handed to the provider for each attempt carries `ref={call id}.{attempt}` and
//! `token=…`, an HMAC-SHA256 of the reference under a key the replicas share through the
//! database (made once by a migration, see `db::webhook_token_key`). Only whoever was
//! handed the URL knows the token; a webhook is applied only with the token of the attempt
//! it names, and the reference is trusted only with it.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Bytes of the HMAC kept in the token: 128 bits, as unguessable as a random UUID.
const TOKEN_BYTES: usize = 16;

/// Makes and checks webhook tokens.
#[derive(Clone)]
pub struct WebhookTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookTokens([redacted])")
    }
}

impl WebhookTokens {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, call_id: Uuid, attempt: i32) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{call_id}.{attempt}").as_bytes());
        mac
    }

    /// The token of attempt `attempt` of `call_id`: 22 URL-safe characters.
    pub fn token(&self, call_id: Uuid, attempt: i32) -> String {
        let tag = self.mac(call_id, attempt).finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..TOKEN_BYTES])
    }

    /// Whether `token` is that attempt's token, compared in constant time.
    pub fn verify(&self, call_id: Uuid, attempt: i32, token: &str) -> bool {
        let Ok(presented) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        presented.len() == TOKEN_BYTES
            && self
                .mac(call_id, attempt)
                .verify_truncated_left(&presented)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_own_attempt_only() {
        let tokens = WebhookTokens::new(vec![7; 32]);
        let call = Uuid::now_v7();
        let token = tokens.token(call, 1);
        assert_eq!(token.len(), 22);
        assert!(tokens.verify(call, 1, &token));
        assert!(!tokens.verify(call, 2, &token));
        assert!(!tokens.verify(Uuid::now_v7(), 1, &token));
        assert!(!WebhookTokens::new(vec![8; 32]).verify(call, 1, &token));
        assert!(!tokens.verify(call, 1, &token[..21]));
        assert!(!tokens.verify(call, 1, ""));
        assert!(!tokens.verify(call, 1, "not base64 at all!"));
    }
}
