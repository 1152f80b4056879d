//! API tokens: random, shown once, stored only as their SHA-256, compared in constant time.

use sha2::{Digest, Sha256};
use wtq_client::message::now_ms;
use wtq_client::tenancy::TokenRecord;

/// Every token starts with this, so a leaked one is easy to recognise (and to grep for).
pub const PREFIX: &str = "wtq_";

/// A new token for `tenant` (admin when `None`): the secret to show once, and the record and
/// hash to store.
pub fn mint(tenant: Option<&str>) -> Result<(String, String, TokenRecord), getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut id = [0u8; 6];
    getrandom::fill(&mut id)?;
    let token = format!("{PREFIX}{}", hex(&secret));
    let record = TokenRecord {
        id: format!("tok_{}", hex(&id)),
        tenant: tenant.map(str::to_string),
        created_ms: now_ms(),
    };
    Ok((token.clone(), hash(&token), record))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a, record_a) = mint(Some("acme")).expect("random");
        let (b, _, record_b) = mint(None).expect("random");
        assert_ne!(a, b);
        assert_ne!(record_a.id, record_b.id);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64);
        assert_eq!(hash(&a), hash_a);
        assert!(!hash_a.contains(&a[PREFIX.len()..]));
        assert!(same_hash(&hash_a, &hash(&a)));
        assert!(!same_hash(&hash_a, &hash(&b)));
        assert_eq!(record_a.tenant.as_deref(), Some("acme"));
        assert_eq!(record_b.tenant, None);
    }
}
