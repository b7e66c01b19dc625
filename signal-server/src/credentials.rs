//! Secrets: argon2id password/secret hashes, SIP digest verifiers, session tokens.
//! Nothing here logs a secret; callers must never log the inputs either.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("cannot hash secret: {0}")]
pub struct HashError(String);

/// argon2id PHC string of `secret` with the given cost.
pub fn hash_password(secret: &str, memory_kib: u32, iterations: u32) -> Result<String, HashError> {
    let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| HashError(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    argon.hash_password(secret.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| HashError(e.to_string()))
}

/// Does `secret` match the PHC string? The cost comes from the stored hash. Constant-time.
pub fn verify_password(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A PHC hash of a random secret nobody knows: verifying against it costs the same as a real
/// account, so unknown numbers cannot be told from wrong passwords by timing.
pub fn decoy_hash(memory_kib: u32, iterations: u32) -> String {
    hash_password(&new_token(), memory_kib, iterations).expect("valid params were checked at config load")
}

/// RFC 2617 HA1 = MD5(user:realm:password), hex.
pub fn ha1_md5(user: &str, realm: &str, password: &str) -> String {
    hex::encode(Md5::digest(format!("{user}:{realm}:{password}").as_bytes()))
}

/// RFC 8760 HA1 = SHA-256(user:realm:password), hex.
pub fn ha1_sha256(user: &str, realm: &str, password: &str) -> String {
    hex::encode(Sha256::digest(format!("{user}:{realm}:{password}").as_bytes()))
}

/// 256 bits from the OS CSPRNG, unpadded base64url (43 characters).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// How a session token is stored: its SHA-256, hex. Tokens are high-entropy, so no salt.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time string equality (for the admin bearer token).
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Make a file that holds secrets readable by its owner only (mode 0600). A file that was
/// looser is tightened and the fact logged (`what` names it: "database", "VAPID key").
pub fn restrict_to_owner(path: &std::path::Path, what: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                path = %path.display(),
                old_mode = format!("{mode:04o}"),
                "{what} file was readable by others; tightened it to 0600"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("s3cret", 64, 1).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3creT"));
        assert!(!verify_password("not a hash", "s3cret"));
    }

    #[test]
    fn ha1_matches_rfc_examples() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        assert_eq!(ha1_md5("Mufasa", "testrealm@host.com", "Circle Of Life"), "939e7578ed9e3c518a452acee763bce9");
        // RFC 7616 §3.9.1 uses the same credentials (realm http-auth@example.org) for SHA-256.
        assert_eq!(
            ha1_sha256("Mufasa", "http-auth@example.org", "Circle of Life"),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
    }

    #[test]
    fn tokens_are_unique_and_long() {
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_token());
        assert_eq!(token_sha256(&a).len(), 64);
    }
}
