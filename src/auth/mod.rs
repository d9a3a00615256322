//! Bearer tokens derived from keys.
//!
//! Today this is the ES256 JSON Web Token (RFC 7519), minted with any
//! [`Signer`](crate::identity::Signer) and verified by the rules of the JWT Best Current
//! Practices (RFC 8725):
//!
//! - [`Claims`]: the registered claims (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`, `jti`), an
//!   OAuth-style space-separated `scope`, and any other claims.
//! - [`JwtSigner`]: mints `{"alg":"ES256","typ":"JWT"}` tokens with a P-256 key — a software
//!   key or one in hardware. It needs no `iss` or `sub`, so it also mints the
//!   `{iat, exp, aud: project-id}` password a Google Cloud IoT Core (ClearBlade) device sends.
//! - [`JwtVerifier`]: the algorithm is pinned to ES256, keys come only from its configuration,
//!   and issuer, audience and the validity window are always checked.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use fleetkit::auth::{Claims, JwtSigner, JwtVerifier};
//! use fleetkit::identity::SoftwareKey;
//!
//! let key = Arc::new(SoftwareKey::generate_p256()?);
//! let signer = JwtSigner::new(key.clone())?;
//! let claims = Claims::new("https://auth.example", "sensor-0042", "telemetry-api",
//!                          Duration::from_secs(600))
//!     .with_scopes(["telemetry:write", "config:read"])?;
//! let token = signer.sign(&claims)?;
//!
//! let verifier = JwtVerifier::new(signer.public_key_spki())?
//!     .expected_issuer("https://auth.example")
//!     .expected_audience("telemetry-api");
//! let verified = verifier.verify(&token)?;
//! assert_eq!(verified.sub.as_deref(), Some("sensor-0042"));
//! assert!(verified.has_scope("telemetry:write"));
//! # Ok::<(), fleetkit::Error>(())
//! ```
//!
//! SAS tokens (Azure) and SigV4 helpers (AWS) will join this module.

mod jwt;
pub mod sas;
pub mod sigv4;

pub use jwt::{
    Audience, Claims, DEFAULT_LEEWAY, JwtSigner, JwtVerifier, MAX_LEEWAY, MAX_TOKEN_BYTES,
};
