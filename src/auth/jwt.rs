//! ES256 JSON Web Tokens: [`Claims`], [`JwtSigner`] and [`JwtVerifier`].
//!
//! Built directly on p256 (DER → raw r‖s), *ring* (verification), base64 and serde_json rather
//! than a JWT crate: `jsonwebtoken` would bring a second RustCrypto generation or aws-lc into the
//! tree, and the part that matters — refusing what RFC 8725 says to refuse — is small enough to
//! own and test here.
//!
//! The rules the verifier applies, and the errors it returns, are documented on
//! [`JwtVerifier`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::pkcs8::DecodePublicKey as _;
use p256::pkcs8::der::Decode as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::identity::{KeyAlgorithm, SignatureScheme, Signer, spki_fingerprint};
use crate::{Error, Result};

/// The largest token [`JwtVerifier::verify`] reads, and [`JwtSigner::sign`] mints: 8 KiB.
///
/// Tokens travel in HTTP headers and MQTT password fields; anything larger is refused before
/// it is decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The clock skew [`JwtVerifier`] tolerates unless told otherwise: 60 seconds.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The largest leeway [`JwtVerifier::leeway`] accepts: 10 minutes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// The only JWS algorithm fleetkit signs with or accepts.
const ALG: &str = "ES256";

/// Claim names that have their own field in [`Claims`] and so may not appear in `extra`.
const REGISTERED: [&str; 8] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope"];

/// Header parameters that would point the verifier at a key chosen by the token's author.
const KEY_CARRYING_PARAMETERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// Length of an ES256 signature: r‖s, 32 bytes each.
const SIGNATURE_LEN: usize = 64;

/// Longest token-supplied text quoted in an error message.
const QUOTE_MAX_CHARS: usize = 48;

// ------------------------------------------------------------------------------------------
// Claims
// ------------------------------------------------------------------------------------------

/// The `aud` claim: one audience or several.
///
/// RFC 7519 allows a single string or an array of strings. A single audience is serialized as
/// a string (what Google Cloud IoT Core expects for its project id), several as an array; both
/// forms are read.
///
/// ```
/// use fleetkit::auth::Audience;
///
/// let one = Audience::from("my-project");
/// assert_eq!(serde_json::to_string(&one).unwrap(), r#""my-project""#);
/// let two = Audience::many(["api", "hub"]);
/// assert_eq!(serde_json::to_string(&two).unwrap(), r#"["api","hub"]"#);
/// assert!(two.contains("hub"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Audience(Vec<String>);

impl Audience {
    /// No audience: the claim is left out of the token.
    pub fn none() -> Self {
        Audience(Vec::new())
    }

    /// A single audience.
    pub fn one(audience: impl Into<String>) -> Self {
        Audience(vec![audience.into()])
    }

    /// Several audiences, in order.
    pub fn many<I, S>(audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Audience(audiences.into_iter().map(Into::into).collect())
    }

    /// Whether `audience` is one of them (exact, case-sensitive comparison).
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }

    /// The audiences, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many audiences there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no audience.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience::one(audience)
    }
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Audience::one(audience)
    }
}

impl From<Vec<String>> for Audience {
    fn from(audiences: Vec<String>) -> Self {
        Audience(audiences)
    }
}

impl<const N: usize> From<[&str; N]> for Audience {
    fn from(audiences: [&str; N]) -> Self {
        Audience::many(audiences)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => {
                let mut seq = serializer.serialize_seq(Some(many.len()))?;
                for audience in many {
                    seq.serialize_element(audience)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct AudienceVisitor;

        impl<'de> Visitor<'de> for AudienceVisitor {
            type Value = Audience;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Audience, E> {
                Ok(Audience::one(v))
            }

            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Audience, E> {
                Ok(Audience::one(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Audience, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(audience) = seq.next_element::<String>()? {
                    out.push(audience);
                }
                Ok(Audience(out))
            }
        }

        deserializer.deserialize_any(AudienceVisitor)
    }
}

/// The claims of a JWT (RFC 7519 §4): registered claims as fields, others in `extra`.
///
/// Times are NumericDates: whole seconds since 1970-01-01T00:00:00Z. Only `exp` and `iat` are
/// required — which is all a Google Cloud IoT Core device sends besides `aud` — so `iss` and
/// `sub` are optional here; [`JwtVerifier`] decides what it demands.
///
/// ```
/// use std::time::Duration;
/// use fleetkit::auth::Claims;
///
/// // An access token for a person or an application.
/// let claims = Claims::new("https://auth.example", "alice", "fleet-api", Duration::from_secs(900))
///     .with_scopes(["devices:read", "devices:write"])?;
/// assert_eq!(claims.exp - claims.iat, 900);
/// assert_eq!(claims.scopes().collect::<Vec<_>>(), ["devices:read", "devices:write"]);
///
/// // The MQTT password of a Google Cloud IoT Core (ClearBlade) device.
/// let gcp = Claims::for_audience("my-gcp-project", Duration::from_secs(3600));
/// let json = serde_json::to_value(&gcp).unwrap();
/// assert_eq!(json.as_object().unwrap().len(), 3); // iat, exp, aud
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: who minted the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject: whom the token is about (a device id, a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience: who the token is for. Left out of the token when empty.
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    /// Expiration time: the token is not accepted at or after it.
    pub exp: i64,
    /// Not-before time: the token is not accepted before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued-at time.
    pub iat: i64,
    /// JWT id: a unique identifier, for replay detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Space-separated scopes (RFC 8693 §4.2, RFC 9068 §2.2.3); see [`Claims::scopes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Every other claim, by name. Registered names (`iss`, `exp`, `scope`, …) do not belong
    /// here; [`JwtSigner::sign`] refuses them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Claims {
    /// Claims issued now by `issuer` about `subject` for `audience`, expiring after `lifetime`.
    pub fn new(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        audience: impl Into<Audience>,
        lifetime: Duration,
    ) -> Self {
        let mut claims = Claims::for_audience(audience, lifetime);
        claims.iss = Some(issuer.into());
        claims.sub = Some(subject.into());
        claims
    }

    /// Claims with only `iat` (now), `exp` (now + `lifetime`) and `aud`: the shape Google Cloud
    /// IoT Core (and ClearBlade) want as a device's MQTT password, with the project id as the
    /// audience.
    pub fn for_audience(audience: impl Into<Audience>, lifetime: Duration) -> Self {
        let iat = unix_now();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        Claims {
            iss: None,
            sub: None,
            aud: audience.into(),
            exp: iat.saturating_add(lifetime),
            nbf: None,
            iat,
            jti: None,
            scope: None,
            extra: Map::new(),
        }
    }

    /// Sets `scope` to `scopes` joined by spaces.
    ///
    /// Each scope must be a non-empty RFC 6749 §3.3 scope-token (printable ASCII without space,
    /// `"` or `\`); anything else is refused with [`Error::InvalidInput`] naming `scope`, since
    /// a space inside one scope would silently turn it into two.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut joined = String::new();
        for scope in scopes {
            let scope = scope.as_ref();
            if scope.is_empty() {
                return Err(Error::invalid("scope", "a scope may not be empty"));
            }
            if let Some(bad) = scope
                .chars()
                .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
            {
                return Err(Error::invalid(
                    "scope",
                    format!(
                        "{} contains {bad:?}; a scope is printable ASCII without space, '\"' or '\\'",
                        quote(scope)
                    ),
                ));
            }
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(scope);
        }
        self.scope = (!joined.is_empty()).then_some(joined);
        Ok(self)
    }

    /// Adds a claim that has no field of its own.
    ///
    /// Registered names (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`, `jti`, `scope`) are refused
    /// with [`Error::InvalidInput`]: set the field instead.
    pub fn with_claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Result<Self> {
        let name = name.into();
        if REGISTERED.contains(&name.as_str()) {
            return Err(registered_in_extra(&name));
        }
        self.extra.insert(name, value.into());
        Ok(self)
    }

    /// The scopes in `scope`, in order (none when it is absent).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Whether `scope` is one of [`scopes`](Claims::scopes) (exact comparison).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

fn registered_in_extra(name: &str) -> Error {
    Error::invalid(
        "claims",
        format!("`{name}` is a registered claim: set its field rather than adding it to `extra`"),
    )
}

/// Seconds since the Unix epoch, from the system clock.
fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ------------------------------------------------------------------------------------------
// Signing
// ------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

/// Mints ES256 JWTs with a P-256 [`Signer`]: a software key, or one in an HSM or TPM.
///
/// The header is `{"alg":"ES256","typ":"JWT"}`, plus `"kid"` when one is set. The signer's
/// DER signature is converted to the fixed 64-byte r‖s form JWS requires (RFC 7518 §3.4).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use fleetkit::auth::{Claims, JwtSigner};
/// use fleetkit::identity::SoftwareKey;
///
/// // A Google Cloud IoT Core / ClearBlade device: the token is its MQTT password.
/// let signer = JwtSigner::new(Arc::new(SoftwareKey::generate_p256()?))?;
/// let password = signer.sign(&Claims::for_audience("my-gcp-project", Duration::from_secs(3600)))?;
/// assert_eq!(password.split('.').count(), 3);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct JwtSigner {
    key: Arc<dyn Signer>,
    kid: Option<String>,
}

impl JwtSigner {
    /// Wraps a P-256 signer. Any other key (RSA, for example) is refused with
    /// [`Error::NotSupported`]: fleetkit mints ES256 only.
    pub fn new(key: Arc<dyn Signer>) -> Result<Self> {
        if key.algorithm() != KeyAlgorithm::EcdsaP256
            || !key.schemes().contains(&SignatureScheme::EcdsaP256Sha256)
        {
            return Err(Error::NotSupported(format!(
                "JWT signing with a {} key: fleetkit mints ES256 (P-256) tokens only",
                key.algorithm()
            )));
        }
        Ok(JwtSigner { key, kid: None })
    }

    /// Puts `kid` in every token's header, so verifiers holding several keys can pick this one.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id put in the header, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The public key as a DER `SubjectPublicKeyInfo`, for [`JwtVerifier::new`] or a cloud
    /// registry.
    pub fn public_key_spki(&self) -> &[u8] {
        self.key.public_key_spki()
    }

    /// Signs `claims` into a compact JWS: `header.payload.signature`.
    ///
    /// Refused with [`Error::InvalidInput`]: a registered claim name in `claims.extra`, or a
    /// token that would exceed [`MAX_TOKEN_BYTES`] (checked before the key is used). Errors
    /// of the underlying [`Signer`] are passed on.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        if let Some(name) = REGISTERED.iter().find(|n| claims.extra.contains_key(**n)) {
            return Err(registered_in_extra(name));
        }
        let header = Header {
            alg: ALG,
            typ: "JWT",
            kid: self.kid.as_deref(),
        };
        let header =
            serde_json::to_vec(&header).map_err(|e| Error::invalid("JWT header", e.to_string()))?;
        let payload =
            serde_json::to_vec(claims).map_err(|e| Error::invalid("claims", e.to_string()))?;

        let signature_b64_len = SIGNATURE_LEN.div_ceil(3) * 4 - 2; // 86: 64 bytes, unpadded
        let len = base64_len(header.len()) + 1 + base64_len(payload.len()) + 1 + signature_b64_len;
        if len > MAX_TOKEN_BYTES {
            return Err(Error::invalid(
                "claims",
                format!("the token would be {len} bytes, over the {MAX_TOKEN_BYTES}-byte limit"),
            ));
        }

        let mut token = String::with_capacity(len);
        URL_SAFE_NO_PAD.encode_string(&header, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let der = self
            .key
            .sign(SignatureScheme::EcdsaP256Sha256, token.as_bytes())?;
        let signature = p256::ecdsa::Signature::from_der(&der).map_err(|_| {
            Error::Crypto("the signer returned a malformed DER ECDSA P-256 signature".into())
        })?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        debug_assert_eq!(token.len(), len);
        Ok(token)
    }
}

/// Length of `n` bytes in unpadded base64.
fn base64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("alg", &ALG)
            .field("kid", &self.kid)
            .field("key", &self.key)
            .finish()
    }
}

// ------------------------------------------------------------------------------------------
// Verification
// ------------------------------------------------------------------------------------------

/// A P-256 public key the verifier trusts, optionally under a `kid`.
#[derive(Clone)]
struct TrustedKey {
    kid: Option<String>,
    /// The uncompressed SEC1 point (0x04 ‖ x ‖ y), as *ring* wants it.
    point: [u8; 65],
    spki_sha256: String,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("spki_sha256", &self.spki_sha256)
            .finish()
    }
}

/// OID 1.2.840.10045.2.1 (id-ecPublicKey).
const ID_EC_PUBLIC_KEY: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// OID 1.2.840.10045.3.1.7 (prime256v1 / secp256r1).
const PRIME256V1: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

impl TrustedKey {
    fn from_spki(kid: Option<String>, spki: &[u8]) -> Result<Self> {
        let info = p256::pkcs8::spki::SubjectPublicKeyInfoRef::from_der(spki).map_err(|e| {
            Error::invalid(
                "public key",
                format!("not a DER SubjectPublicKeyInfo ({e})"),
            )
        })?;
        let (algorithm, parameters) = info.algorithm.oids().map_err(|e| {
            Error::invalid(
                "public key",
                format!("malformed algorithm identifier ({e})"),
            )
        })?;
        if algorithm != ID_EC_PUBLIC_KEY || parameters != Some(PRIME256V1) {
            let curve = parameters
                .map(|p| format!(" with parameters {p}"))
                .unwrap_or_default();
            return Err(Error::NotSupported(format!(
                "JWT verification with a key of algorithm {algorithm}{curve}: fleetkit accepts \
                 ES256 (P-256) keys only"
            )));
        }
        // p256 checks the point is on the curve.
        let public = p256::PublicKey::from_public_key_der(spki)
            .map_err(|e| Error::invalid("public key", format!("not a valid P-256 key ({e})")))?;
        let encoded = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&public, false);
        let point = <[u8; 65]>::try_from(encoded.as_bytes())
            .map_err(|_| Error::Crypto("P-256 point encoding is not 65 bytes".into()))?;
        Ok(TrustedKey {
            kid,
            point,
            spki_sha256: spki_fingerprint(spki),
        })
    }

    fn verifies(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &self.point[..],
        )
        .verify(signing_input, signature)
        .is_ok()
    }
}

/// What the verifier demands of `iss`.
#[derive(Clone, Debug)]
enum IssuerRule {
    /// Not configured yet: [`JwtVerifier::verify`] refuses to run.
    Unset,
    Expect(String),
    /// Explicitly waived: the key identifies the issuer.
    NotChecked,
}

/// Verifies ES256 JWTs by the rules of RFC 8725 (JWT Best Current Practices).
///
/// - The algorithm is pinned to ES256: the header never chooses it. `none`, `HS256` (the
///   public-key-as-HMAC-secret confusion) and every other `alg` are refused before any
///   cryptography runs.
/// - Keys come only from this verifier's configuration. A `kid` in the header selects among
///   them; a token carrying `jku`, `x5u`, `jwk` or `x5c` is refused outright — nothing is ever
///   fetched or taken from the token.
/// - Issuer and audience are always checked: [`expected_audience`](Self::expected_audience) is
///   required, and so is [`expected_issuer`](Self::expected_issuer) unless it is waived with
///   [`without_issuer_check`](Self::without_issuer_check). Until they are set,
///   [`verify`](Self::verify) refuses every token with [`Error::InvalidInput`].
/// - `exp` and `iat` are required; `exp`, `nbf` and `iat` are checked against the clock with a
///   [leeway](Self::leeway) (default [`DEFAULT_LEEWAY`], at most [`MAX_LEEWAY`]);
///   [`max_lifetime`](Self::max_lifetime) bounds `exp - iat`.
///
/// `Debug` shows the configuration and the SHA-256 of each key, never key bytes.
///
/// # Errors
///
/// | Problem | Error |
/// |---|---|
/// | the verifier has no expected audience, or neither an expected issuer nor [`without_issuer_check`](Self::without_issuer_check) (field `JwtVerifier`) | [`Error::InvalidInput`] |
/// | token over [`MAX_TOKEN_BYTES`], not three parts, padded or non-canonical base64url, header or payload not a UTF-8 JSON object, duplicate member names, a time claim that is not an integer | [`Error::InvalidInput`] |
/// | `alg` other than `ES256` (checked before any cryptography), `typ` other than `JWT`/`at+jwt`, any `crit`, `jku`/`x5u`/`jwk`/`x5c` in the header, nested JWT (`cty: JWT`), unknown `kid`, signature not 64 bytes r‖s, bad signature | [`Error::Unauthenticated`] |
/// | `exp` or `iat` missing, `exp` before `iat`, `exp - iat` over the configured maximum, wrong or missing `iss`/`aud` | [`Error::Unauthenticated`] |
/// | expired (`exp`), not yet valid (`nbf`), issued in the future (`iat`), each beyond the leeway | [`Error::Expired`] |
///
/// [`Error::Expired`] covers the whole validity window, as it does for certificates
/// ([`ChainError::NotYetValid`](crate::pki::ChainError::NotYetValid) converts to it too).
/// Error messages never contain the token; values taken from the token (an `alg`, a `kid`, an
/// `iss`) are quoted, escaped and truncated.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use fleetkit::auth::{Claims, JwtSigner, JwtVerifier};
/// use fleetkit::identity::SoftwareKey;
/// use fleetkit::Error;
///
/// // A hub checking a Google Cloud IoT Core style device password: the device's registered
/// // key identifies it, so there is no issuer to check; tokens live at most 24 hours.
/// let device_key = Arc::new(SoftwareKey::generate_p256()?);
/// let verifier = JwtVerifier::from_signer(device_key.as_ref())?
///     .without_issuer_check()
///     .expected_audience("my-gcp-project")
///     .max_lifetime(Duration::from_secs(24 * 3600));
///
/// let signer = JwtSigner::new(device_key)?;
/// let ok = signer.sign(&Claims::for_audience("my-gcp-project", Duration::from_secs(3600)))?;
/// verifier.verify(&ok)?;
///
/// let too_long = signer.sign(&Claims::for_audience("my-gcp-project", Duration::from_secs(48 * 3600)))?;
/// assert!(matches!(verifier.verify(&too_long), Err(Error::Unauthenticated(_))));
///
/// // A test pins the clock instead of sleeping.
/// let later = verifier.clone().with_clock(|| i64::MAX / 2);
/// assert!(matches!(later.verify(&ok), Err(Error::Expired(_))));
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<TrustedKey>,
    issuer: IssuerRule,
    audience: Option<String>,
    leeway: Duration,
    max_lifetime: Option<Duration>,
    clock: Option<fn() -> i64>,
}

impl JwtVerifier {
    /// A verifier trusting one P-256 public key (DER `SubjectPublicKeyInfo`), used for tokens
    /// without a `kid`.
    ///
    /// A key that is not P-256 is refused with [`Error::NotSupported`]; bytes that are not a
    /// valid public key with [`Error::InvalidInput`] naming `public key`.
    pub fn new(public_key_spki: &[u8]) -> Result<Self> {
        Ok(JwtVerifier {
            keys: vec![TrustedKey::from_spki(None, public_key_spki)?],
            issuer: IssuerRule::Unset,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            max_lifetime: None,
            clock: None,
        })
    }

    /// A verifier trusting the public half of `signer` (see [`new`](Self::new)).
    pub fn from_signer(signer: &dyn Signer) -> Result<Self> {
        Self::new(signer.public_key_spki())
    }

    /// A verifier trusting one key that tokens must select with `kid`; add more with
    /// [`with_kid_key`](Self::with_kid_key).
    pub fn new_with_kid(kid: impl Into<String>, public_key_spki: &[u8]) -> Result<Self> {
        let mut verifier = Self::new(public_key_spki)?;
        verifier.keys[0].kid = Some(kid.into());
        Ok(verifier)
    }

    /// Also trusts `public_key_spki` under `kid`: a token whose header says that `kid` is
    /// checked with this key and no other. A `kid` already configured is refused with
    /// [`Error::InvalidInput`].
    pub fn with_kid_key(mut self, kid: impl Into<String>, public_key_spki: &[u8]) -> Result<Self> {
        let kid = kid.into();
        if self
            .keys
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid.as_str()))
        {
            return Err(Error::invalid(
                "kid",
                format!("{} is configured twice", quote(&kid)),
            ));
        }
        self.keys
            .push(TrustedKey::from_spki(Some(kid), public_key_spki)?);
        Ok(self)
    }

    /// Also trusts `public_key_spki` for tokens without a `kid`; such a token is accepted if
    /// any of these keys verifies it. This is how a device with several registered keys (Google
    /// Cloud IoT Core allows three, for rotation) is checked.
    pub fn with_key(mut self, public_key_spki: &[u8]) -> Result<Self> {
        self.keys
            .push(TrustedKey::from_spki(None, public_key_spki)?);
        Ok(self)
    }

    /// Requires `iss` to equal `issuer` exactly.
    pub fn expected_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = IssuerRule::Expect(issuer.into());
        self
    }

    /// Accepts any `iss`, or none.
    ///
    /// Only for keys that themselves identify the issuer (RFC 8725 §3.8), such as a device's
    /// own registered key in the Google Cloud IoT Core scheme, whose tokens carry no `iss`.
    pub fn without_issuer_check(mut self) -> Self {
        self.issuer = IssuerRule::NotChecked;
        self
    }

    /// Requires `aud` to be, or to contain, `audience`.
    pub fn expected_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The clock skew tolerated on `exp`, `nbf` and `iat` (whole seconds; default
    /// [`DEFAULT_LEEWAY`]). More than [`MAX_LEEWAY`] is refused with [`Error::InvalidInput`].
    pub fn leeway(mut self, leeway: Duration) -> Result<Self> {
        if leeway > MAX_LEEWAY {
            return Err(Error::invalid(
                "leeway",
                format!(
                    "{} s is more than the {} s maximum; fix the clocks instead",
                    leeway.as_secs(),
                    MAX_LEEWAY.as_secs()
                ),
            ));
        }
        self.leeway = leeway;
        Ok(self)
    }

    /// Refuses tokens whose `exp - iat` exceeds `max` (Google Cloud IoT Core: 24 hours).
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Reads the time (seconds since the Unix epoch) from `clock` instead of the system
    /// clock, so tests need not sleep.
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Verifies `token` and returns its claims.
    ///
    /// The errors, by kind, are listed under [`JwtVerifier`]; the message says which check
    /// failed.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let (expected_issuer, expected_audience) = self.configuration()?;

        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::invalid(
                "token",
                format!(
                    "{} bytes is over the {MAX_TOKEN_BYTES}-byte limit",
                    token.len()
                ),
            ));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::invalid(
                "token",
                format!(
                    "a JWS has 3 dot-separated parts, this has {}",
                    token.split('.').count()
                ),
            ));
        };

        // 1. The header, and every decision it drives, before any cryptography.
        let header = json_object(&decode_part(header_b64, "header")?, "header")?;
        let candidates = self.check_header(&header)?;

        // 2. The signature, over the header and payload exactly as received.
        let payload = decode_part(payload_b64, "payload")?;
        let signature = decode_part(signature_b64, "signature")?;
        if signature.len() != SIGNATURE_LEN {
            let der = if signature.first() == Some(&0x30) {
                " (it looks ASN.1 DER encoded; JWS wants r‖s)"
            } else {
                ""
            };
            return Err(Error::Unauthenticated(format!(
                "the ES256 signature is {} bytes, not {SIGNATURE_LEN}{der}",
                signature.len()
            )));
        }
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        if !candidates
            .iter()
            .any(|key| key.verifies(signing_input, &signature))
        {
            return Err(Error::Unauthenticated(
                "the JWT signature does not verify".into(),
            ));
        }

        // 3. The claims, now known to come from a trusted key.
        let claims = parse_claims(json_object(&payload, "payload")?)?;
        self.check_times(&claims)?;
        if let Some(expected) = expected_issuer {
            match claims.iss.as_deref() {
                Some(iss) if iss == expected => {}
                Some(iss) => {
                    return Err(Error::Unauthenticated(format!(
                        "JWT iss {} is not the expected issuer {}",
                        quote(iss),
                        quote(expected)
                    )));
                }
                None => {
                    return Err(Error::Unauthenticated(format!(
                        "the JWT has no iss claim; expected {}",
                        quote(expected)
                    )));
                }
            }
        }
        if claims.aud.is_empty() {
            return Err(Error::Unauthenticated(format!(
                "the JWT has no aud claim; expected {}",
                quote(expected_audience)
            )));
        }
        if !claims.aud.contains(expected_audience) {
            return Err(Error::Unauthenticated(format!(
                "JWT aud does not include the expected audience {}",
                quote(expected_audience)
            )));
        }
        Ok(claims)
    }

    /// The expected issuer (`None` when waived) and audience, or why the verifier is not ready.
    fn configuration(&self) -> Result<(Option<&str>, &str)> {
        let not_ready = |reason: &str| Error::invalid("JwtVerifier", reason);
        let issuer = match &self.issuer {
            IssuerRule::Expect(iss) if !iss.is_empty() => Some(iss.as_str()),
            IssuerRule::NotChecked => None,
            _ => {
                return Err(not_ready(
                    "no expected issuer: call expected_issuer(..), or without_issuer_check() \
                     when the key itself identifies the issuer",
                ));
            }
        };
        match self.audience.as_deref() {
            Some(aud) if !aud.is_empty() => Ok((issuer, aud)),
            _ => Err(not_ready(
                "no expected audience: call expected_audience(..)",
            )),
        }
    }

    /// Applies the header rules and returns the keys the signature may be checked with.
    fn check_header(&self, header: &Map<String, Value>) -> Result<Vec<&TrustedKey>> {
        // The algorithm first: nothing else about a token with the wrong one matters.
        match header.get("alg") {
            Some(Value::String(alg)) if alg == ALG => {}
            Some(Value::String(alg)) => {
                return Err(Error::Unauthenticated(format!(
                    "JWT alg {} is not accepted: this verifier accepts {ALG} only",
                    quote(alg)
                )));
            }
            Some(_) => return Err(Error::Unauthenticated("JWT alg is not a string".into())),
            None => return Err(Error::Unauthenticated("the JWT header has no alg".into())),
        }
        if let Some(name) = KEY_CARRYING_PARAMETERS
            .iter()
            .find(|p| header.contains_key(**p))
        {
            return Err(Error::Unauthenticated(format!(
                "JWT header parameter {name} is not accepted: keys come from the verifier's \
                 configuration, never from the token"
            )));
        }
        if let Some(crit) = header.get("crit") {
            return Err(Error::Unauthenticated(format!(
                "the JWT marks extensions critical ({}); this verifier understands none",
                quote(&crit.to_string())
            )));
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(typ)) if typ_accepted(typ) => {}
            Some(Value::String(typ)) => {
                return Err(Error::Unauthenticated(format!(
                    "JWT typ {} is not accepted (JWT or at+jwt)",
                    quote(typ)
                )));
            }
            Some(_) => return Err(Error::Unauthenticated("JWT typ is not a string".into())),
        }
        if let Some(Value::String(cty)) = header.get("cty")
            && cty.eq_ignore_ascii_case("JWT")
        {
            return Err(Error::Unauthenticated(
                "nested JWTs (cty JWT) are not accepted".into(),
            ));
        }
        match header.get("kid") {
            None => {
                let keys: Vec<_> = self.keys.iter().filter(|k| k.kid.is_none()).collect();
                if keys.is_empty() {
                    return Err(Error::Unauthenticated(
                        "the JWT has no kid, and this verifier selects its keys by kid".into(),
                    ));
                }
                Ok(keys)
            }
            Some(Value::String(kid)) => {
                let keys: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if keys.is_empty() {
                    return Err(Error::Unauthenticated(format!(
                        "JWT kid {} is not one of this verifier's keys",
                        quote(kid)
                    )));
                }
                Ok(keys)
            }
            Some(_) => Err(Error::Unauthenticated("JWT kid is not a string".into())),
        }
    }

    fn check_times(&self, claims: &Claims) -> Result<()> {
        let now = i128::from(self.clock.map_or_else(unix_now, |clock| clock()));
        let leeway = i128::from(self.leeway.as_secs());
        let (exp, iat) = (i128::from(claims.exp), i128::from(claims.iat));
        if iat > now + leeway {
            return Err(Error::Expired(format!(
                "the JWT was issued {} s in the future (iat), beyond the {leeway} s leeway",
                iat - now
            )));
        }
        if let Some(nbf) = claims.nbf.map(i128::from)
            && nbf > now + leeway
        {
            return Err(Error::Expired(format!(
                "the JWT is not valid for another {} s (nbf), beyond the {leeway} s leeway",
                nbf - now
            )));
        }
        if now >= exp + leeway {
            return Err(Error::Expired(format!(
                "the JWT expired {} s ago (exp), beyond the {leeway} s leeway",
                now - exp
            )));
        }
        if exp < iat {
            return Err(Error::Unauthenticated(
                "the JWT expires (exp) before it was issued (iat)".into(),
            ));
        }
        if let Some(max) = self.max_lifetime
            && exp - iat > i128::from(max.as_secs())
        {
            return Err(Error::Unauthenticated(format!(
                "the JWT lifetime (exp - iat) is {} s, over the {} s maximum",
                exp - iat,
                max.as_secs()
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("alg", &ALG)
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .field(
                "clock",
                &if self.clock.is_some() {
                    "custom"
                } else {
                    "system"
                },
            )
            .finish()
    }
}

/// `JWT` or `at+jwt` (RFC 9068), case-insensitively, with or without `application/`.
fn typ_accepted(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let bare = typ.strip_prefix("application/").unwrap_or(&typ);
    bare == "jwt" || bare == "at+jwt"
}

/// Decodes one part: base64url, unpadded, canonical (no stray trailing bits).
fn decode_part(part: &str, what: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).map_err(|e| {
        Error::invalid(
            "token",
            format!("the {what} is not canonical unpadded base64url ({e})"),
        )
    })
}

/// Parses a UTF-8 JSON object, refusing duplicate member names (RFC 7515 §5.2 allows that
/// choice; it removes any doubt about which `alg` or `exp` counts).
fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>> {
    serde_json::from_slice::<UniqueKeys>(bytes)
        .map(|object| object.0)
        .map_err(|e| Error::invalid("token", format!("the JWT {what} is not valid: {e}")))
}

/// A JSON object whose member names are unique.
struct UniqueKeys(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueKeys, A::Error> {
                let mut out = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.contains_key(&name) {
                        return Err(de::Error::custom(format_args!(
                            "member {} appears twice",
                            quote(&name)
                        )));
                    }
                    let value = map.next_value::<Value>()?;
                    out.insert(name, value);
                }
                Ok(UniqueKeys(out))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Checks the presence and type of the time claims, then reads the whole set.
fn parse_claims(object: Map<String, Value>) -> Result<Claims> {
    for name in ["exp", "iat", "nbf"] {
        match object.get(name) {
            None if name == "nbf" => {}
            None => {
                return Err(Error::Unauthenticated(format!(
                    "the JWT has no {name} claim, which this verifier requires"
                )));
            }
            Some(value) if value.is_i64() => {}
            Some(_) => {
                return Err(Error::invalid(
                    format!("JWT claim {name}"),
                    "not a whole number of seconds since 1970 (NumericDate)",
                ));
            }
        }
    }
    serde_json::from_value(Value::Object(object))
        .map_err(|e| Error::invalid("JWT claims", e.to_string()))
}

/// Token-supplied text for an error message: truncated, quoted and escaped.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SoftwareKey;

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://auth.example";
    const AUD: &str = "fleet-api";

    fn key() -> Arc<SoftwareKey> {
        Arc::new(SoftwareKey::generate_p256().unwrap())
    }

    fn claims() -> Claims {
        let mut claims = Claims::new(ISS, "sensor-0042", AUD, Duration::from_secs(600));
        claims.iat = NOW;
        claims.exp = NOW + 600;
        claims
    }

    fn verifier(key: &SoftwareKey) -> JwtVerifier {
        JwtVerifier::from_signer(key)
            .unwrap()
            .expected_issuer(ISS)
            .expected_audience(AUD)
            .with_clock(|| NOW)
    }

    fn sign(key: &Arc<SoftwareKey>, claims: &Claims) -> String {
        JwtSigner::new(key.clone()).unwrap().sign(claims).unwrap()
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header and payload text, properly ES256-signed by `key`.
    fn forge(key: &SoftwareKey, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        format!("{input}.{}", b64(raw_signature(key, input.as_bytes())))
    }

    fn raw_signature(key: &SoftwareKey, message: &[u8]) -> Vec<u8> {
        let der = key.sign(SignatureScheme::EcdsaP256Sha256, message).unwrap();
        p256::ecdsa::Signature::from_der(&der)
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    /// The claims as JSON text with `edit` applied.
    fn payload_with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let Value::Object(mut map) = serde_json::to_value(claims()).unwrap() else {
            unreachable!()
        };
        edit(&mut map);
        Value::Object(map).to_string()
    }

    const ES256_HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

    #[track_caller]
    fn unauthenticated(result: Result<Claims>, needle: &str) {
        match result {
            Err(Error::Unauthenticated(msg)) => {
                assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}")
            }
            other => panic!("expected Unauthenticated mentioning {needle:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn expired(result: Result<Claims>, needle: &str) {
        match result {
            Err(Error::Expired(msg)) => {
                assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}")
            }
            other => panic!("expected Expired mentioning {needle:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn invalid(result: Result<Claims>, field: &str, needle: &str) {
        match result {
            Err(Error::InvalidInput { field: f, reason }) => {
                assert_eq!(f, field, "reason: {reason}");
                assert!(
                    reason.contains(needle),
                    "{reason:?} does not mention {needle:?}"
                );
            }
            other => panic!("expected InvalidInput({field}) mentioning {needle:?}, got {other:?}"),
        }
    }

    // ---- minting and the happy path --------------------------------------------------

    #[test]
    fn round_trip() {
        let key = key();
        let claims = claims()
            .with_scopes(["telemetry:write", "config:read"])
            .unwrap()
            .with_claim("tenant", serde_json::json!({"id": 7, "tags": ["a", "b"]}))
            .unwrap();
        let token = sign(&key, &claims);
        let verified = verifier(&key).verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(
            verified.scopes().collect::<Vec<_>>(),
            ["telemetry:write", "config:read"]
        );
        assert!(verified.has_scope("config:read") && !verified.has_scope("config"));
        assert_eq!(verified.extra["tenant"]["id"], 7);
    }

    #[test]
    fn header_is_exactly_es256_jwt_with_optional_kid() {
        let key = key();
        let token = sign(&key, &claims());
        let header = token.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            ES256_HEADER.as_bytes()
        );

        let token = JwtSigner::new(key.clone())
            .unwrap()
            .with_kid("k1")
            .sign(&claims())
            .unwrap();
        let header = token.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#
        );
        let signature = token.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap().len(), 64);
    }

    #[test]
    fn gcp_shape_needs_no_iss_or_sub() {
        let key = key();
        let mut claims = Claims::for_audience("my-project", Duration::from_secs(3600));
        claims.iat = NOW;
        claims.exp = NOW + 3600;
        let token = sign(&key, &claims);
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let json: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"aud": "my-project", "exp": NOW + 3600, "iat": NOW})
        );

        let verifier = JwtVerifier::from_signer(key.as_ref())
            .unwrap()
            .without_issuer_check()
            .expected_audience("my-project")
            .max_lifetime(Duration::from_secs(24 * 3600))
            .with_clock(|| NOW);
        assert_eq!(verifier.verify(&token).unwrap(), claims);
        // An issuer-checking verifier says what is missing.
        let strict = verifier.expected_issuer(ISS);
        unauthenticated(strict.verify(&token), "no iss");
    }

    #[test]
    fn claims_new_uses_the_clock_and_the_lifetime() {
        let before = unix_now();
        let claims = Claims::new(ISS, "d", AUD, Duration::from_secs(90));
        assert!(claims.iat >= before && claims.iat <= unix_now());
        assert_eq!(claims.exp - claims.iat, 90);
        assert_eq!(claims.iss.as_deref(), Some(ISS));
        assert_eq!(claims.sub.as_deref(), Some("d"));
        assert!(claims.aud.contains(AUD));
        // A lifetime too large for i64 saturates rather than wrapping into the past.
        let forever = Claims::for_audience(AUD, Duration::MAX);
        assert_eq!(forever.exp, i64::MAX);
    }

    #[test]
    fn audience_is_a_string_or_an_array() {
        let key = key();
        let mut c = claims();
        c.aud = Audience::many(["other", AUD]);
        let token = sign(&key, &c);
        let verified = verifier(&key).verify(&token).unwrap();
        assert_eq!(verified.aud.iter().collect::<Vec<_>>(), ["other", AUD]);

        // A one-element array (as PyJWT writes a list) is accepted too.
        let payload = payload_with(|m| {
            m.insert("aud".into(), serde_json::json!([AUD]));
        });
        verifier(&key)
            .verify(&forge(&key, ES256_HEADER, &payload))
            .unwrap();
        // A single audience goes out as a string.
        assert_eq!(
            serde_json::to_value(claims()).unwrap()["aud"],
            Value::from(AUD)
        );
        // Anything else is malformed.
        let payload = payload_with(|m| {
            m.insert("aud".into(), serde_json::json!(42));
        });
        invalid(
            verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
            "JWT claims",
            "string or an array",
        );
    }

    #[test]
    fn typ_jwt_and_at_jwt_are_accepted_any_case() {
        let key = key();
        let payload = payload_with(|_| {});
        for typ in ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"] {
            let header = format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#);
            verifier(&key)
                .verify(&forge(&key, &header, &payload))
                .unwrap_or_else(|e| panic!("typ {typ}: {e}"));
        }
        // No typ at all is fine too.
        verifier(&key)
            .verify(&forge(&key, r#"{"alg":"ES256"}"#, &payload))
            .unwrap();
        for typ in [r#""JOSE""#, r#""secevent+jwt""#, "1"] {
            let header = format!(r#"{{"alg":"ES256","typ":{typ}}}"#);
            unauthenticated(
                verifier(&key).verify(&forge(&key, &header, &payload)),
                "typ",
            );
        }
    }

    // ---- integrity ------------------------------------------------------------------------

    #[test]
    fn tampered_payload_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let parts: Vec<_> = token.split('.').collect();
        let mut c = claims();
        c.sub = Some("someone-else".into());
        let forged_payload = b64(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        unauthenticated(
            verifier(&key).verify(&tampered),
            "signature does not verify",
        );
    }

    #[test]
    fn tampered_signature_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        raw[10] ^= 0x01;
        let tampered = format!("{input}.{}", b64(&raw));
        unauthenticated(
            verifier(&key).verify(&tampered),
            "signature does not verify",
        );
        // All zeros (r = s = 0) is never valid.
        let zeros = format!("{input}.{}", b64([0u8; 64]));
        unauthenticated(verifier(&key).verify(&zeros), "signature does not verify");
    }

    #[test]
    fn tampered_header_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let (_, rest) = token.split_once('.').unwrap();
        let tampered = format!("{}.{rest}", b64(r#"{"alg":"ES256","typ":"at+jwt"}"#));
        unauthenticated(
            verifier(&key).verify(&tampered),
            "signature does not verify",
        );
    }

    #[test]
    fn another_key_is_refused() {
        let (key, other) = (key(), key());
        let token = sign(&other, &claims());
        unauthenticated(verifier(&key).verify(&token), "signature does not verify");
    }

    // ---- algorithm pinning --------------------------------------------------------------

    #[test]
    fn alg_none_is_refused() {
        let key = key();
        let payload = b64(payload_with(|_| {}));
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            // Unsigned: empty signature part.
            let token = format!("{}.{payload}.", b64(header));
            unauthenticated(verifier(&key).verify(&token), "JWT alg \"");
        }
        let token = format!("{}.{payload}.", b64(r#"{"alg":"none"}"#));
        unauthenticated(verifier(&key).verify(&token), "\"none\" is not accepted");
    }

    #[test]
    fn alg_hs256_keyed_with_the_public_key_is_refused() {
        // The classic confusion: HMAC-SHA256 keyed with the verifier's own public key, which
        // a verifier that lets the header choose the algorithm would accept.
        let key = key();
        let payload = b64(payload_with(|_| {}));
        for secret in [
            key.public_key_pem().into_bytes(),
            key.public_key_spki().to_vec(),
        ] {
            let input = format!("{}.{payload}", b64(r#"{"alg":"HS256","typ":"JWT"}"#));
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                input.as_bytes(),
            );
            let token = format!("{input}.{}", b64(mac.as_ref()));
            unauthenticated(verifier(&key).verify(&token), "\"HS256\" is not accepted");
        }
    }

    #[test]
    fn every_other_alg_is_refused_before_any_crypto() {
        let key = key();
        let payload = payload_with(|_| {});
        for alg in [
            "HS384", "HS512", "RS256", "PS256", "ES384", "ES512", "ES256K", "EdDSA", "es256",
            "ES256 ", "",
        ] {
            // The signature is a real ES256 one: the alg alone must decide.
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            unauthenticated(
                verifier(&key).verify(&forge(&key, &header, &payload)),
                &format!("alg {alg:?} is not accepted"),
            );
        }
        unauthenticated(
            verifier(&key).verify(&forge(&key, r#"{"typ":"JWT"}"#, &payload)),
            "no alg",
        );
        unauthenticated(
            verifier(&key).verify(&forge(&key, r#"{"alg":["ES256"]}"#, &payload)),
            "alg is not a string",
        );
    }

    #[test]
    fn alg_is_checked_before_the_signature_is_even_decoded() {
        let key = key();
        let payload = b64(payload_with(|_| {}));
        let token = format!("{}.{payload}.!!not-base64!!", b64(r#"{"alg":"HS256"}"#));
        unauthenticated(verifier(&key).verify(&token), "HS256");
    }

    #[test]
    fn a_long_alg_is_truncated_in_the_message() {
        let key = key();
        let alg = "X".repeat(500);
        let header = format!(r#"{{"alg":"{alg}"}}"#);
        let token = format!("{}.{}.", b64(header), b64(payload_with(|_| {})));
        match verifier(&key).verify(&token) {
            Err(Error::Unauthenticated(msg)) => assert!(msg.len() < 200, "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    // ---- header rules -----------------------------------------------------------------

    #[test]
    fn key_carrying_header_parameters_are_refused() {
        let key = key();
        let payload = payload_with(|_| {});
        for (name, value) in [
            ("jku", r#""https://attacker.example/jwks.json""#),
            ("x5u", r#""https://attacker.example/cert.pem""#),
            ("jwk", r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#),
            ("x5c", r#"["MIIB"]"#),
        ] {
            // Signed with the trusted key, so only the parameter can be the reason.
            let header = format!(r#"{{"alg":"ES256","typ":"JWT","{name}":{value}}}"#);
            unauthenticated(
                verifier(&key).verify(&forge(&key, &header, &payload)),
                &format!("parameter {name} is not accepted"),
            );
        }
    }

    #[test]
    fn crit_is_refused() {
        let key = key();
        let payload = payload_with(|_| {});
        for header in [
            r#"{"alg":"ES256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"ES256","crit":["b64"],"b64":false}"#,
            r#"{"alg":"ES256","crit":[]}"#,
        ] {
            unauthenticated(
                verifier(&key).verify(&forge(&key, header, &payload)),
                "critical",
            );
        }
    }

    #[test]
    fn nested_jwt_is_refused() {
        let key = key();
        let header = r#"{"alg":"ES256","cty":"JWT"}"#;
        unauthenticated(
            verifier(&key).verify(&forge(&key, header, &payload_with(|_| {}))),
            "nested",
        );
    }

    #[test]
    fn kid_selects_among_configured_keys() {
        let (k1, k2) = (key(), key());
        let verifier = JwtVerifier::new_with_kid("k1", k1.public_key_spki())
            .unwrap()
            .with_kid_key("k2", k2.public_key_spki())
            .unwrap()
            .expected_issuer(ISS)
            .expected_audience(AUD)
            .with_clock(|| NOW);
        let by = |key: &Arc<SoftwareKey>, kid: &str| {
            JwtSigner::new(key.clone())
                .unwrap()
                .with_kid(kid)
                .sign(&claims())
                .unwrap()
        };
        verifier.verify(&by(&k1, "k1")).unwrap();
        verifier.verify(&by(&k2, "k2")).unwrap();
        // The kid decides the key: k2's token claiming to be k1 fails the signature check.
        unauthenticated(verifier.verify(&by(&k2, "k1")), "signature does not verify");
        // A keyed verifier does not guess for a token without kid.
        unauthenticated(verifier.verify(&sign(&k1, &claims())), "no kid");
        // A kid configured twice is a configuration error.
        assert!(matches!(
            verifier.clone().with_kid_key("k1", k2.public_key_spki()),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn unknown_kid_is_refused() {
        let key = key();
        let token = JwtSigner::new(key.clone())
            .unwrap()
            .with_kid("rotated-away")
            .sign(&claims())
            .unwrap();
        // Even a verifier whose one (unnamed) key made the signature.
        unauthenticated(verifier(&key).verify(&token), "kid \"rotated-away\"");
        let keyed = JwtVerifier::new_with_kid("current", key.public_key_spki())
            .unwrap()
            .expected_issuer(ISS)
            .expected_audience(AUD)
            .with_clock(|| NOW);
        unauthenticated(keyed.verify(&token), "is not one of this verifier's keys");
    }

    #[test]
    fn any_unnamed_key_may_verify_a_token_without_kid() {
        let (old, new, stranger) = (key(), key(), key());
        let verifier = verifier(&old).with_key(new.public_key_spki()).unwrap();
        verifier.verify(&sign(&old, &claims())).unwrap();
        verifier.verify(&sign(&new, &claims())).unwrap();
        unauthenticated(
            verifier.verify(&sign(&stranger, &claims())),
            "signature does not verify",
        );
    }

    // ---- time ---------------------------------------------------------------------------

    fn at(key: &Arc<SoftwareKey>, edit: impl FnOnce(&mut Claims)) -> String {
        let mut c = claims();
        edit(&mut c);
        sign(key, &c)
    }

    #[test]
    fn expired_is_refused() {
        let key = key();
        let token = at(&key, |c| {
            c.iat = NOW - 7200;
            c.exp = NOW - 3600;
        });
        expired(verifier(&key).verify(&token), "expired 3600 s ago");
    }

    #[test]
    fn not_yet_valid_is_refused() {
        let key = key();
        let token = at(&key, |c| c.nbf = Some(NOW + 3600));
        expired(verifier(&key).verify(&token), "nbf");
    }

    #[test]
    fn iat_in_the_future_is_refused() {
        let key = key();
        let token = at(&key, |c| {
            c.iat = NOW + 3600;
            c.exp = NOW + 7200;
        });
        expired(verifier(&key).verify(&token), "iat");
    }

    #[test]
    fn leeway_edges_are_exact() {
        let key = key();
        let v = verifier(&key); // 60 s leeway
        // exp: valid while now < exp + leeway.
        v.verify(&at(&key, |c| {
            c.iat = NOW - 600;
            c.exp = NOW - 59;
        }))
        .unwrap();
        expired(
            v.verify(&at(&key, |c| {
                c.iat = NOW - 600;
                c.exp = NOW - 60;
            })),
            "exp",
        );
        // nbf: valid while nbf <= now + leeway.
        v.verify(&at(&key, |c| c.nbf = Some(NOW + 60))).unwrap();
        expired(v.verify(&at(&key, |c| c.nbf = Some(NOW + 61))), "nbf");
        // iat: the same.
        v.verify(&at(&key, |c| c.iat = NOW + 60)).unwrap();
        expired(v.verify(&at(&key, |c| c.iat = NOW + 61)), "iat");

        // Zero leeway moves each edge by 60 s.
        let strict = verifier(&key).leeway(Duration::ZERO).unwrap();
        strict
            .verify(&at(&key, |c| {
                c.iat = NOW - 600;
                c.exp = NOW + 1;
            }))
            .unwrap();
        expired(
            strict.verify(&at(&key, |c| {
                c.iat = NOW - 600;
                c.exp = NOW;
            })),
            "exp",
        );
        strict.verify(&at(&key, |c| c.nbf = Some(NOW))).unwrap();
        expired(strict.verify(&at(&key, |c| c.nbf = Some(NOW + 1))), "nbf");
    }

    #[test]
    fn leeway_over_ten_minutes_is_refused() {
        let key = key();
        verifier(&key).leeway(MAX_LEEWAY).unwrap();
        match verifier(&key).leeway(MAX_LEEWAY + Duration::from_secs(1)) {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "leeway"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lifetime_over_the_maximum_is_refused() {
        let key = key();
        let v = verifier(&key).max_lifetime(Duration::from_secs(24 * 3600));
        v.verify(&at(&key, |c| c.exp = NOW + 24 * 3600)).unwrap();
        unauthenticated(
            v.verify(&at(&key, |c| c.exp = NOW + 24 * 3600 + 1)),
            "over the 86400 s maximum",
        );
    }

    #[test]
    fn exp_before_iat_is_refused() {
        let key = key();
        let token = at(&key, |c| {
            c.iat = NOW + 30; // both inside the leeway, but exp is before iat
            c.exp = NOW + 10;
        });
        unauthenticated(verifier(&key).verify(&token), "before it was issued");
    }

    #[test]
    fn exp_and_iat_are_required_integers() {
        let key = key();
        for name in ["exp", "iat"] {
            let payload = payload_with(|m| {
                m.remove(name);
            });
            unauthenticated(
                verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
                &format!("no {name} claim"),
            );
        }
        for (name, value) in [
            ("exp", serde_json::json!("tomorrow")),
            ("exp", serde_json::json!(1.7e9 + 0.5)),
            ("iat", Value::Null),
            ("nbf", serde_json::json!(u64::MAX)),
        ] {
            let payload = payload_with(|m| {
                m.insert(name.into(), value);
            });
            invalid(
                verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
                &format!("JWT claim {name}"),
                "NumericDate",
            );
        }
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let key = key();
        let v = verifier(&key).max_lifetime(Duration::from_secs(60));
        unauthenticated(
            v.verify(&at(&key, |c| {
                c.iat = i64::MIN;
                c.exp = i64::MAX;
            })),
            "lifetime",
        );
        expired(
            verifier(&key).verify(&at(&key, |c| {
                c.iat = i64::MIN;
                c.exp = i64::MIN;
            })),
            "exp",
        );
        expired(
            verifier(&key).verify(&at(&key, |c| c.nbf = Some(i64::MAX))),
            "nbf",
        );
    }

    // ---- iss and aud --------------------------------------------------------------------

    #[test]
    fn wrong_aud_is_refused() {
        let key = key();
        let token = at(&key, |c| c.aud = Audience::one("another-api"));
        unauthenticated(verifier(&key).verify(&token), "aud");
        let token = at(&key, |c| c.aud = Audience::none());
        unauthenticated(verifier(&key).verify(&token), "no aud");
        // Audiences compare exactly.
        let token = at(&key, |c| c.aud = Audience::one(AUD.to_uppercase()));
        unauthenticated(verifier(&key).verify(&token), "aud");
    }

    #[test]
    fn wrong_iss_is_refused() {
        let key = key();
        let token = at(&key, |c| c.iss = Some("https://evil.example".into()));
        unauthenticated(
            verifier(&key).verify(&token),
            "iss \"https://evil.example\" is not the expected issuer",
        );
        let token = at(&key, |c| c.iss = None);
        unauthenticated(verifier(&key).verify(&token), "no iss");
    }

    #[test]
    fn an_unconfigured_verifier_refuses_everything() {
        let key = key();
        let token = sign(&key, &claims());
        let bare = JwtVerifier::from_signer(key.as_ref())
            .unwrap()
            .with_clock(|| NOW);
        invalid(bare.verify(&token), "JwtVerifier", "expected issuer");
        invalid(
            bare.clone().expected_issuer(ISS).verify(&token),
            "JwtVerifier",
            "expected audience",
        );
        invalid(
            bare.clone()
                .expected_issuer("")
                .expected_audience(AUD)
                .verify(&token),
            "JwtVerifier",
            "expected issuer",
        );
        invalid(
            bare.without_issuer_check()
                .expected_audience("")
                .verify(&token),
            "JwtVerifier",
            "expected audience",
        );
    }

    // ---- encoding and structure ---------------------------------------------------------

    #[test]
    fn padded_base64_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        // 64 signature bytes are 86 characters unpadded; padding makes 88.
        invalid(
            verifier(&key).verify(&format!("{token}==")),
            "token",
            "signature",
        );
        // A padded payload, correctly signed over the padded text.
        let input = format!(
            "{}.{}",
            b64(ES256_HEADER),
            base64::engine::general_purpose::URL_SAFE.encode(payload_with(|m| {
                m.insert("pad".into(), "x".into());
            }))
        );
        assert!(input.ends_with('='), "{input}");
        let token = format!("{input}.{}", b64(raw_signature(&key, input.as_bytes())));
        invalid(verifier(&key).verify(&token), "token", "payload");
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let (input, signature) = token.rsplit_once('.').unwrap();
        // The last of 86 characters carries 2 unused bits; setting them keeps the bytes.
        let mut chars: Vec<char> = signature.chars().collect();
        let last = chars.last_mut().unwrap();
        let index = base64::alphabet::URL_SAFE.as_str().find(*last).unwrap();
        assert_eq!(index & 0b1111, 0);
        *last = base64::alphabet::URL_SAFE.as_str().as_bytes()[index | 1] as char;
        let altered: String = chars.into_iter().collect();
        invalid(
            verifier(&key).verify(&format!("{input}.{altered}")),
            "token",
            "signature",
        );
        // The standard alphabet and whitespace are not base64url.
        let plus = format!("{input}.{}", signature.replace('-', "+").replace('_', "/"));
        if plus != token {
            invalid(verifier(&key).verify(&plus), "token", "signature");
        }
        invalid(
            verifier(&key).verify(&format!(" {token}")),
            "token",
            "header",
        );
        invalid(
            verifier(&key).verify(&format!("{token}\n")),
            "token",
            "signature",
        );
    }

    #[test]
    fn der_signature_is_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        let der = key
            .sign(SignatureScheme::EcdsaP256Sha256, input.as_bytes())
            .unwrap();
        let token = format!("{input}.{}", b64(&der));
        unauthenticated(verifier(&key).verify(&token), "ASN.1 DER");
        // Shorter raw signatures (leading zeros dropped) are refused too.
        let raw = raw_signature(&key, input.as_bytes());
        let token = format!("{input}.{}", b64(&raw[1..]));
        unauthenticated(verifier(&key).verify(&token), "63 bytes");
    }

    #[test]
    fn part_counts_other_than_three_are_refused() {
        let key = key();
        let token = sign(&key, &claims());
        let (two, _) = token.rsplit_once('.').unwrap();
        invalid(verifier(&key).verify(two), "token", "this has 2");
        invalid(
            verifier(&key).verify(&format!("{token}.")),
            "token",
            "this has 4",
        );
        invalid(
            verifier(&key).verify(&format!("{token}.{}", b64("x"))),
            "token",
            "this has 4",
        );
        // A JWE compact serialization has five.
        invalid(verifier(&key).verify("a.b.c.d.e"), "token", "this has 5");
        invalid(verifier(&key).verify(""), "token", "this has 1");
    }

    #[test]
    fn oversize_token_is_refused() {
        let key = key();
        let big = claims()
            .with_claim("blob", "x".repeat(MAX_TOKEN_BYTES))
            .unwrap();
        // The signer will not mint it...
        match JwtSigner::new(key.clone()).unwrap().sign(&big) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "claims");
                assert!(reason.contains("limit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // ...and the verifier will not read it, before decoding anything.
        let token = forge(&key, ES256_HEADER, &Value::Object(big.extra).to_string());
        assert!(token.len() > MAX_TOKEN_BYTES);
        invalid(verifier(&key).verify(&token), "token", "8192-byte limit");
        let exactly = "a".repeat(MAX_TOKEN_BYTES + 1);
        invalid(verifier(&key).verify(&exactly), "token", "limit");
    }

    #[test]
    fn a_token_just_under_the_limit_round_trips() {
        let key = key();
        let mut c = claims();
        // Grow a claim until the token is as large as allowed.
        let base = sign(&key, &c.clone().with_claim("blob", "").unwrap()).len();
        let room = (MAX_TOKEN_BYTES - base) / 4 * 3;
        c = c.with_claim("blob", "y".repeat(room)).unwrap();
        let token = sign(&key, &c);
        assert!(token.len() <= MAX_TOKEN_BYTES && token.len() > MAX_TOKEN_BYTES - 8);
        verifier(&key).verify(&token).unwrap();
    }

    #[test]
    fn non_object_payload_is_refused() {
        let key = key();
        for payload in [r#"["exp",1]"#, r#""claims""#, "42", "null", ""] {
            invalid(
                verifier(&key).verify(&forge(&key, ES256_HEADER, payload)),
                "token",
                "payload",
            );
        }
        // Trailing data after the object is not JSON either.
        let payload = format!("{}{{}}", payload_with(|_| {}));
        invalid(
            verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
            "token",
            "payload",
        );
    }

    #[test]
    fn non_object_or_invalid_header_is_refused() {
        let key = key();
        let payload = payload_with(|_| {});
        for header in [r#"["ES256"]"#, r#""ES256""#, "", "{"] {
            invalid(
                verifier(&key).verify(&forge(&key, header, &payload)),
                "token",
                "header",
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let key = key();
        let mut payload = payload_with(|m| {
            m.insert("name".into(), "AB".into());
        })
        .into_bytes();
        let at = payload.windows(2).position(|w| w == b"AB").unwrap();
        payload[at] = 0xff;
        let input = format!("{}.{}", b64(ES256_HEADER), b64(&payload));
        let token = format!("{input}.{}", b64(raw_signature(&key, input.as_bytes())));
        invalid(verifier(&key).verify(&token), "token", "payload");
        // A lone surrogate escape is not a Unicode scalar value either.
        let payload = payload_with(|_| {}).replacen('{', r#"{"name":"\ud800","#, 1);
        invalid(
            verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
            "token",
            "payload",
        );
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        let key = key();
        // Which exp counts? Neither: the token is refused.
        let payload = payload_with(|_| {}).replacen('{', &format!(r#"{{"exp":{},"#, NOW + 10), 1);
        invalid(
            verifier(&key).verify(&forge(&key, ES256_HEADER, &payload)),
            "token",
            "appears twice",
        );
        let header = r#"{"alg":"ES256","alg":"none"}"#;
        invalid(
            verifier(&key).verify(&forge(&key, header, &payload_with(|_| {}))),
            "token",
            "appears twice",
        );
    }

    // ---- keys and configuration ----------------------------------------------------------

    #[derive(Debug)]
    struct FakeRsa;

    impl Signer for FakeRsa {
        fn algorithm(&self) -> KeyAlgorithm {
            KeyAlgorithm::Rsa { bits: 2048 }
        }
        fn public_key_spki(&self) -> &[u8] {
            &[]
        }
        fn schemes(&self) -> &[SignatureScheme] {
            &[SignatureScheme::RsaPkcs1Sha256]
        }
        fn sign(&self, _: SignatureScheme, _: &[u8]) -> Result<Vec<u8>> {
            unreachable!("never asked to sign")
        }
    }

    #[test]
    fn signer_refuses_non_p256_keys() {
        match JwtSigner::new(Arc::new(FakeRsa)) {
            Err(Error::NotSupported(msg)) => assert!(msg.contains("RSA-2048"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verifier_refuses_non_p256_and_malformed_keys() {
        use rcgen::PublicKeyData as _;
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        match JwtVerifier::new(&p384.subject_public_key_info()) {
            Err(Error::NotSupported(msg)) => assert!(msg.contains("1.3.132.0.34"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            JwtVerifier::new(&ed.subject_public_key_info()),
            Err(Error::NotSupported(_))
        ));
        for bad in [&b""[..], b"\x30\x00", b"not a key"] {
            assert!(matches!(
                JwtVerifier::new(bad),
                Err(Error::InvalidInput { ref field, .. }) if field == "public key"
            ));
        }
        // A P-256 SPKI whose point is not on the curve.
        let mut spki = key().public_key_spki().to_vec();
        let last = spki.len() - 1;
        spki[last] ^= 0x01;
        assert!(matches!(
            JwtVerifier::new(&spki),
            Err(Error::InvalidInput { .. })
        ));
        // Trailing bytes after the SPKI.
        let mut spki = key().public_key_spki().to_vec();
        spki.push(0);
        assert!(matches!(
            JwtVerifier::new(&spki),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn registered_names_are_refused_in_extra() {
        let key = key();
        assert!(matches!(
            claims().with_claim("exp", 1),
            Err(Error::InvalidInput { .. })
        ));
        let mut c = claims();
        c.extra.insert("aud".into(), "sneaky".into());
        match JwtSigner::new(key).unwrap().sign(&c) {
            Err(Error::InvalidInput { reason, .. }) => assert!(reason.contains("`aud`")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scopes_are_validated_and_split() {
        let c = claims().with_scopes(["a", "b:c", "d/e"]).unwrap();
        assert_eq!(c.scope.as_deref(), Some("a b:c d/e"));
        assert_eq!(c.scopes().count(), 3);
        for bad in ["two words", "", "quote\"", "back\\slash", "tab\t", "é"] {
            assert!(
                matches!(
                    claims().with_scopes([bad]),
                    Err(Error::InvalidInput { ref field, .. }) if field == "scope"
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            claims().with_scopes::<[&str; 0], _>([]).unwrap().scope,
            None
        );
        // Received scopes split on spaces, ignoring doubled ones.
        let mut c = claims();
        c.scope = Some(" a  b ".into());
        assert_eq!(c.scopes().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(claims().scopes().count(), 0);
    }

    #[test]
    fn debug_shows_configuration_not_keys_or_tokens() {
        let key = key();
        let verifier = verifier(&key)
            .with_kid_key("k2", key.public_key_spki())
            .unwrap()
            .max_lifetime(Duration::from_secs(3600));
        let text = format!("{verifier:?}");
        let fingerprint = spki_fingerprint(key.public_key_spki());
        for expected in [ISS, AUD, "k2", "custom", "3600", fingerprint.as_str()] {
            assert!(text.contains(expected), "{text} lacks {expected}");
        }
        let spki_b64 = base64::engine::general_purpose::STANDARD.encode(key.public_key_spki());
        assert!(!text.contains(&spki_b64[30..60]), "{text}");
        assert!(!text.contains("[48, 89"), "raw SPKI bytes in {text}");

        let signer = JwtSigner::new(key.clone()).unwrap();
        let text = format!("{signer:?}");
        assert!(
            text.contains("ES256") && !text.contains("PRIVATE"),
            "{text}"
        );

        // No error message repeats the token.
        let token = sign(&key, &claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        for bad in [
            format!("{token}x"),
            format!("{input}.AAAA"),
            format!("{token}.x"),
        ] {
            let msg = verifier.verify(&bad).unwrap_err().to_string();
            assert!(!msg.contains(&input[..20]), "{msg}");
        }
    }
}
