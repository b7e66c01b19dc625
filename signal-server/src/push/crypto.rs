//! The cryptography of a push message: RFC 8291 message encryption (P-256 ECDH + HKDF into the
//! RFC 8188 `aes128gcm` record layer of `ece-native`) and RFC 8292 VAPID (an ES256 JWT signed
//! with `web-push-native`'s `jwt-simple`).
//!
//! [`encrypt_with`] takes the sender's ephemeral key and salt as arguments so the RFC 8291
//! Appendix A example can be reproduced byte for byte; [`encrypt`] is the same with fresh ones.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use web_push_native::jwt_simple::prelude::{
    Audiences, ECDSAP256KeyPairLike, ES256KeyPair, JWTClaims, NoCustomClaims, UnixTimeStamp,
};

/// Record size written in the header. RFC 8291 §4 wants one record; 4096 is what browsers and
/// the RFC's example use, and what push services accept (their limit is 4096 bytes of body).
pub const RECORD_SIZE: u32 = 4096;
/// Largest plaintext that fits one record: record size − 16 (AES-GCM tag) − 1 (delimiter),
/// and the whole body (86-byte header + record) within the push services' 4096 bytes.
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 16 - 1;
/// Longest VAPID JWT validity RFC 8292 §2 allows.
pub const MAX_VAPID_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{0}: not unpadded base64url")]
    Base64(&'static str),
    #[error("p256dh is not a point on P-256")]
    BadPublicKey,
    #[error("auth must be 16 bytes")]
    BadAuth,
    #[error("push payload of {0} bytes is too large")]
    TooLarge(usize),
    #[error("encryption failed: {0}")]
    Ece(String),
    #[error("VAPID private key: {0}")]
    BadPrivateKey(String),
    #[error("VAPID signature: {0}")]
    Jwt(String),
}

/// A subscription's keys (the browser's `keys.p256dh` and `keys.auth`), decoded and checked.
#[derive(Clone, Debug)]
pub struct UaKeys {
    pub public: PublicKey,
    pub auth: [u8; 16],
}

impl UaKeys {
    pub fn decode(p256dh: &str, auth: &str) -> Result<UaKeys, CryptoError> {
        let point = B64.decode(p256dh).map_err(|_| CryptoError::Base64("p256dh"))?;
        let public = PublicKey::from_sec1_bytes(&point).map_err(|_| CryptoError::BadPublicKey)?;
        if point.len() != 65 {
            // Compressed points are valid SEC1 but not what RFC 8291 §3.1 specifies.
            return Err(CryptoError::BadPublicKey);
        }
        let auth = B64.decode(auth).map_err(|_| CryptoError::Base64("auth"))?;
        let auth: [u8; 16] = auth.try_into().map_err(|_| CryptoError::BadAuth)?;
        Ok(UaKeys { public, auth })
    }
}

/// A fresh P-256 key from the OS CSPRNG.
fn random_secret() -> SecretKey {
    loop {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        // Zero or ≥ the group order: astronomically unlikely; draw again.
        if let Ok(k) = SecretKey::from_slice(&b) {
            return k;
        }
    }
}

/// Encrypt `plaintext` for the subscription, with a fresh ephemeral key and salt (RFC 8291 §3.4:
/// never reuse them). The result is the complete request body (`Content-Encoding: aes128gcm`).
pub fn encrypt(plaintext: &[u8], ua: &UaKeys) -> Result<Vec<u8>, CryptoError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    encrypt_with(plaintext, ua, salt, &random_secret())
}

/// RFC 8291 with the application server's ephemeral key `as_secret` and `salt` given.
pub fn encrypt_with(plaintext: &[u8], ua: &UaKeys, salt: [u8; 16], as_secret: &SecretKey) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(CryptoError::TooLarge(plaintext.len()));
    }
    let as_public = as_secret.public_key().to_encoded_point(false);
    let ua_public = ua.public.to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.public.as_affine());
    // §3.3/3.4: IKM = HKDF-SHA-256(salt = auth_secret, ikm = ecdh_secret,
    //                              info = "WebPush: info" 0x00 ua_public as_public, L = 32).
    let mut info = Vec::with_capacity(14 + 65 + 65);
    info.extend_from_slice(b"WebPush: info\0");
    info.extend_from_slice(ua_public.as_bytes());
    info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2_011::Sha256>::new(Some(&ua.auth[..]), shared.raw_secret_bytes().as_slice())
        .expand(&info, &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    // RFC 8188 header: salt, rs, idlen = 65, keyid = as_public; then the single record (the
    // content-encryption key and nonce come from IKM and salt inside ece-native).
    ece_native::encrypt(ikm, salt, as_public.as_bytes(), std::iter::once(plaintext.to_vec()), RECORD_SIZE)
        .map_err(|e| CryptoError::Ece(e.to_string()))
}

/// The server's VAPID key pair (RFC 8292).
pub struct VapidKey {
    pair: ES256KeyPair,
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("VapidKey").field("public", &self.public_b64).finish_non_exhaustive()
    }
}

impl VapidKey {
    pub fn from_secret(secret: &SecretKey) -> VapidKey {
        let pair = ES256KeyPair::from_bytes(&secret.to_bytes()).expect("a valid P-256 scalar is a valid ES256 key");
        let public_b64 = B64.encode(secret.public_key().to_encoded_point(false).as_bytes());
        VapidKey { pair, public_b64 }
    }

    /// Parse a key file's text: PEM (SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`) or the raw
    /// 32-byte scalar in base64url (padding and surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<VapidKey, CryptoError> {
        let text = text.trim();
        let secret = if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            SecretKey::from_sec1_pem(text).map_err(|e| CryptoError::BadPrivateKey(format!("SEC1 PEM: {e}")))?
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            SecretKey::from_pkcs8_pem(text).map_err(|e| CryptoError::BadPrivateKey(format!("PKCS#8 PEM: {e}")))?
        } else if text.starts_with("-----BEGIN") {
            return Err(CryptoError::BadPrivateKey("expected an EC PRIVATE KEY or PRIVATE KEY PEM block".into()));
        } else {
            let raw = B64
                .decode(text.trim_end_matches('='))
                .map_err(|_| CryptoError::BadPrivateKey("neither PEM nor base64url".into()))?;
            if raw.len() != 32 {
                return Err(CryptoError::BadPrivateKey(format!("a raw key is 32 bytes, not {}", raw.len())));
            }
            SecretKey::from_slice(&raw).map_err(|_| CryptoError::BadPrivateKey("not a P-256 scalar".into()))?
        };
        Ok(VapidKey::from_secret(&secret))
    }

    /// A new key, and its PKCS#8 PEM for the key file.
    pub fn generate() -> (VapidKey, String) {
        let secret = random_secret();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 encoding of a P-256 key").to_string();
        (VapidKey::from_secret(&secret), pem)
    }

    /// The public key as browsers want it for `applicationServerKey`: the uncompressed point
    /// in unpadded base64url (87 characters).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header value for a push to `origin` (the endpoint's scheme, host and
    /// non-default port): `vapid t=<JWT>, k=<public key>` (RFC 8292 §3). The JWT has `aud` =
    /// `origin`, `exp` = `now_unix` + `valid_for` (at most 24 h) and `sub` = `subject`.
    pub fn authorization(&self, origin: &str, subject: &str, now_unix: u64, valid_for: Duration) -> Result<String, CryptoError> {
        let valid_for = valid_for.min(MAX_VAPID_VALIDITY);
        let claims: JWTClaims<NoCustomClaims> = JWTClaims {
            issued_at: None,
            expires_at: Some(UnixTimeStamp::from_secs(now_unix + valid_for.as_secs())),
            invalid_before: None,
            issuer: None,
            subject: Some(subject.to_string()),
            audiences: Some(Audiences::AsString(origin.to_string())),
            jwt_id: None,
            nonce: None,
            custom: NoCustomClaims {},
        };
        let token = self.pair.sign(claims).map_err(|e| CryptoError::Jwt(e.to_string()))?;
        Ok(format!("vapid t={token}, k={}", self.public_b64))
    }
}

/// The origin (RFC 6454) of an `http(s)://` URL: scheme, lower-case host, and the port unless it
/// is the scheme's default. `None` for anything else.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, default_port) = if url.starts_with("https://") {
        ("https", "443")
    } else if url.starts_with("http://") {
        ("http", "80")
    } else {
        return None;
    };
    let (authority, host) = trunkline_protocol::url_authority(url)?;
    let port = authority[host.len()..].strip_prefix(':').filter(|p| *p != default_port);
    Some(match port {
        Some(p) => format!("{scheme}://{}:{p}", host.to_ascii_lowercase()),
        None => format!("{scheme}://{}", host.to_ascii_lowercase()),
    })
}
