//! The signing secrets of event endpoints, which the database never holds.
//!
//! Each endpoint's secret is HMAC-SHA256, keyed with one of the keys of `EVENT_SECRET_KEY`,
//! of a random salt stored with the endpoint. The database keeps the salt and which key it
//! was made with (a digest of the key, its id), never the secret: a dump of the database
//! alone signs nothing. Losing or changing the key changes every secret, so the key id is
//! checked and a mismatch is a clear error rather than signatures that silently stop
//! verifying. `EVENT_SECRET_KEY` may list several keys, newest first: secrets made with an
//! older one keep working while new ones (creates, rotations) use the newest.
//!
//! Written here rather than taken from a crate: it is one HMAC (the `hmac` crate) over
//! what a key-derivation function would take as its input, and nothing in it needs
//! encryption, since the secret is derived again whenever it is needed.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// What every derivation is bound to, so that these keys can serve nothing else.
const CONTEXT: &[u8] = b"call-orchestrator/event-endpoint-secret/v1\0";

/// The keys of `EVENT_SECRET_KEY`, newest first.
#[derive(Clone, Default)]
pub struct EventKeys {
    keys: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    id: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for EventKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("EventKeys").field("ids", &ids).finish()
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A key made of an endpoint's secret for the key id it names is not at hand.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretUnavailable {
    #[error("EVENT_SECRET_KEY is not set, so no endpoint secret can be made or used")]
    NoKey,
    #[error(
        "this endpoint's secret was made with an EVENT_SECRET_KEY key (id {0}) that is no \
         longer configured; add it back after the current key, or rotate the endpoint's secret"
    )]
    UnknownKey(String),
}

/// An endpoint's signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret([u8; 32]);

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointSecret([redacted])")
    }
}

impl EndpointSecret {
    /// The Standard Webhooks form the client is shown: `whsec_` and the key in base64.
    pub fn whsec(&self) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// The signer of the Standard Webhooks scheme with this secret.
    pub fn signer(&self) -> standardwebhooks::Webhook {
        standardwebhooks::Webhook::from_bytes(self.0.to_vec()).expect("any key signs")
    }
}

impl EventKeys {
    /// Reads `EVENT_SECRET_KEY`: keys separated by commas, newest first, each at least
    /// [`MIN_KEY_LEN`] bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<Key> = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.len() < MIN_KEY_LEN {
                return Err(format!(
                    "each key must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -base64 32`)"
                ));
            }
            let id = hex::encode(&hmac(part.as_bytes(), &[CONTEXT, b"key-id"])[..8]);
            if keys.iter().any(|k| k.id == id) {
                return Err("the same key is listed twice".into());
            }
            keys.push(Key {
                id,
                bytes: part.as_bytes().to_vec(),
            });
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key new secrets are made with.
    pub fn current_id(&self) -> Result<&str, SecretUnavailable> {
        self.keys
            .first()
            .map(|k| k.id.as_str())
            .ok_or(SecretUnavailable::NoKey)
    }

    /// A fresh salt: not secret, only never repeated.
    pub fn new_salt() -> Vec<u8> {
        let mut salt = uuid::Uuid::new_v4().as_bytes().to_vec();
        salt.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        salt
    }

    /// The secret of an endpoint made with key `key_id` and `salt`.
    pub fn secret(&self, key_id: &str, salt: &[u8]) -> Result<EndpointSecret, SecretUnavailable> {
        if self.keys.is_empty() {
            return Err(SecretUnavailable::NoKey);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretUnavailable::UnknownKey(key_id.to_owned()))?;
        Ok(EndpointSecret(hmac(&key.bytes, &[CONTEXT, salt])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a-long-enough-key-for-the-tests-0001";
    const B: &str = "a-long-enough-key-for-the-tests-0002";

    #[test]
    fn keys_are_checked() {
        assert!(EventKeys::parse("short").is_err());
        assert!(EventKeys::parse(&format!("{A},{A}")).is_err());
        assert!(EventKeys::parse(&format!("{A}, {B}")).is_ok());
    }

    #[test]
    fn a_secret_depends_on_the_key_and_the_salt_and_is_found_by_key_id() {
        let old = EventKeys::parse(A).unwrap();
        let both = EventKeys::parse(&format!("{B},{A}")).unwrap();
        let salt = EventKeys::new_salt();
        assert_eq!(salt.len(), 32);
        let id = old.current_id().unwrap().to_owned();
        let secret = old.secret(&id, &salt).unwrap();
        // Still the same once a newer key is put in front of it.
        assert_eq!(both.secret(&id, &salt).unwrap(), secret);
        assert_ne!(both.current_id().unwrap(), id);
        assert_ne!(old.secret(&id, &EventKeys::new_salt()).unwrap(), secret);
        let only_new = EventKeys::parse(B).unwrap();
        assert_eq!(
            only_new.secret(&id, &salt),
            Err(SecretUnavailable::UnknownKey(id.clone()))
        );
        assert_eq!(
            EventKeys::default().secret(&id, &salt),
            Err(SecretUnavailable::NoKey)
        );
        let whsec = secret.whsec();
        assert!(whsec.starts_with("whsec_"));
        // The form any Standard Webhooks library reads.
        let signer = standardwebhooks::Webhook::new(&whsec).unwrap();
        assert_eq!(
            signer.sign("msg", 1, b"{}").unwrap(),
            secret.signer().sign("msg", 1, b"{}").unwrap()
        );
        assert!(!format!("{secret:?}{both:?}").contains(A));
    }
}
