//! AWS Signature Version 4 (SigV4): verification for the hub, signing for clients.
//!
//! Two halves that deliberately share no canonicalization or signing code (the signing half
//! only borrows this module's percent-encoder to write its query parameters into URLs):
//!
//! - **Verification** (always compiled): [`Verifier`] checks a request signed with SigV4 the
//!   way AWS does, either in the `Authorization` header or pre-signed in the query string
//!   (`X-Amz-Signature`). It is written here on *ring* (HMAC-SHA256, SHA-256), so the local hub
//!   can authenticate requests and MQTT-over-WebSocket handshakes that real AWS clients sign.
//!   Refusals are [`SigV4Error`]s that carry AWS's error code and HTTP status.
//! - **Signing** (feature `aws`): `sign_headers`, `presign_url` and `presign_websocket_url`
//!   go through the official `aws-sigv4` crate. Signing with AWS's code and verifying with ours
//!   means each checks the other: the tests sign with one and verify with the other, and both
//!   reproduce the official SigV4 test-suite vectors.
//!
//! # Canonicalization (what the verifier recomputes)
//!
//! ```text
//! CanonicalRequest = Method \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n PayloadHash
//! StringToSign     = "AWS4-HMAC-SHA256" \n AmzDate \n yyyymmdd/region/service/aws4_request \n hex(SHA-256(CanonicalRequest))
//! SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, yyyymmdd), region), service), "aws4_request")
//! Signature        = hex(HMAC(SigningKey, StringToSign))
//! ```
//!
//! - **URI**: the path as received (already percent-encoded once), with `.` and `..` segments
//!   resolved and empty segments (`//`) removed, then every byte other than the unreserved
//!   characters `A-Z a-z 0-9 - . _ ~` and `/` percent-encoded again (`%` becomes `%25`). This is
//!   the "double encoding" of every service but S3; S3's single-encoded, unnormalized paths are
//!   not supported.
//! - **Query**: each parameter is split at the first `=`, decoded (`+` is a space, as in HTML
//!   forms and in `aws-sigv4`), re-encoded (everything but the unreserved characters), and the
//!   pairs are sorted by encoded name, then encoded value. `X-Amz-Signature` is left out.
//! - **Headers**: the headers named in `SignedHeaders`, names lower-cased; each value has its
//!   leading and trailing spaces removed and runs of spaces collapsed to one, and repeated
//!   headers are joined with `,` in the order received.
//! - **Payload hash**: the `x-amz-content-sha256` header when present (which must then be the
//!   SHA-256 of the body, or the literal `UNSIGNED-PAYLOAD`), otherwise the SHA-256 of the body
//!   (for a `GET` that is the hash of the empty string, `e3b0c442…b855`).
//!
//! # The AWS IoT session-token quirk
//!
//! AWS IoT's MQTT-over-WebSocket endpoint expects `X-Amz-Security-Token` to be appended to the
//! pre-signed URL *after* signing: the token is not part of the canonical query. A verifier for
//! that endpoint is configured with
//! [`security_token_unsigned(true)`](Verifier::security_token_unsigned); it then leaves the
//! token out when recomputing, and still checks that the token presented is the one issued
//! with the credentials.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ring::{digest, hmac};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The only algorithm SigV4 defines for HMAC signing: `AWS4-HMAC-SHA256`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The clock skew AWS allows between the signer and the verifier: 5 minutes.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The longest a pre-signed request may be valid (`X-Amz-Expires`): 7 days, in seconds.
pub const MAX_PRESIGN_EXPIRES_SECS: u64 = 7 * 24 * 60 * 60;

/// The payload hash a signer uses when it does not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The signing name of AWS IoT's device gateway (MQTT over WebSocket).
pub const IOT_DEVICE_GATEWAY_SERVICE: &str = "iotdevicegateway";

/// The last element of every credential scope.
const SCOPE_TERMINATOR: &str = "aws4_request";

const X_AMZ_ALGORITHM: &str = "X-Amz-Algorithm";
const X_AMZ_CREDENTIAL: &str = "X-Amz-Credential";
const X_AMZ_DATE: &str = "X-Amz-Date";
const X_AMZ_EXPIRES: &str = "X-Amz-Expires";
const X_AMZ_SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
const X_AMZ_SIGNATURE: &str = "X-Amz-Signature";
const X_AMZ_SECURITY_TOKEN: &str = "X-Amz-Security-Token";

// ------------------------------------------------------------------------------------------
// Credentials
// ------------------------------------------------------------------------------------------

/// Long-term or temporary AWS credentials: an access key id, its secret, and for temporary
/// credentials (STS) a session token.
///
/// [`Debug`](fmt::Debug) shows the access key id only; the secret and the token are redacted.
///
/// ```
/// use fleetkit::auth::sigv4::AwsCredentials;
///
/// let creds = AwsCredentials::new("ASIAEXAMPLE", "wJalrXUtnFEMIEXAMPLEKEY")
///     .with_session_token("IQoJb3JpZ2luEXAMPLE");
/// assert_eq!(creds.access_key_id(), "ASIAEXAMPLE");
/// assert_eq!(creds.session_token(), Some("IQoJb3JpZ2luEXAMPLE"));
/// let shown = format!("{creds:?}");
/// assert!(shown.contains("ASIAEXAMPLE"));
/// assert!(!shown.contains("wJalr") && !shown.contains("IQoJ"));
/// ```
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl AwsCredentials {
    /// Long-term credentials: an access key id and its secret access key.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        AwsCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: None,
        }
    }

    /// The same credentials with a session token, which makes them temporary credentials.
    pub fn with_session_token(mut self, session_token: impl Into<String>) -> Self {
        self.session_token = Some(Zeroizing::new(session_token.into()));
        self
    }

    /// The access key id (`AKIA…` for long-term keys, `ASIA…` for temporary ones).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key. Treat it as a secret: never log it.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref().map(String::as_str)
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

// ------------------------------------------------------------------------------------------
// Requests, results and errors
// ------------------------------------------------------------------------------------------

/// A request as received, for verification.
///
/// Everything is as it came off the wire: `path` is the request target's path, still
/// percent-encoded (`/things/a%20b`), `query` the raw query string without the `?`, and
/// `headers` every header in the order received (names in any case; repeated headers
/// repeated).
#[derive(Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The HTTP method (`GET`, `POST`, …).
    pub method: &'a str,
    /// The path, percent-encoded as on the wire.
    pub path: &'a str,
    /// The raw query string (without `?`), empty when there is none.
    pub query: &'a str,
    /// The headers as received: `(name, value)`.
    pub headers: &'a [(String, String)],
    /// The body (empty for a `GET`).
    pub body: &'a [u8],
}

impl fmt::Debug for SignedRequest<'_> {
    /// Method, path and header names; not the query or header values (which carry the
    /// signature and any session token) nor the body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SignedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query_len", &self.query.len())
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What a valid signature proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// The region of the credential scope.
    pub region: String,
    /// The service (signing name) of the credential scope.
    pub service: String,
    /// When the request was signed (`X-Amz-Date`).
    pub signed_at: OffsetDateTime,
    /// Whether the body is covered by the signature (`false` for `UNSIGNED-PAYLOAD`).
    pub payload_signed: bool,
}

/// Why a SigV4 signature was refused.
///
/// Each reason maps to the error code AWS answers with: [`code`](Self::code) gives the code of
/// the AWS "common errors" (Query protocol: STS, IAM, EC2), [`json_code`](Self::json_code) the
/// `__type` of the JSON and REST-JSON protocols (AWS IoT's control plane among them), and
/// [`http_status`](Self::http_status) the status to answer with. Messages never contain a
/// secret, a session token or the expected signature.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// There is no `Authorization` header and no `X-Amz-Signature` query parameter.
    #[error("the request carries no authentication (no Authorization header, no X-Amz-Signature)")]
    MissingAuthenticationToken,

    /// The signature information is malformed or incomplete: an unparsable `Authorization`
    /// header or credential, a missing parameter or date, an unsupported algorithm, `host` not
    /// signed, a signed header that is absent…
    #[error("incomplete signature: {0}")]
    IncompleteSignature(String),

    /// The credential scope names a region, service or date this verifier does not accept.
    #[error("credential scope refused: {0}")]
    InvalidScope(String),

    /// The signature is well formed but does not match the request.
    #[error("the request signature does not match the signature computed for it")]
    SignatureDoesNotMatch,

    /// `x-amz-content-sha256` is not the SHA-256 of the body.
    #[error("x-amz-content-sha256 does not match the body")]
    ContentSha256Mismatch,

    /// The access key id is not known.
    #[error("unknown access key id: {0}")]
    UnknownAccessKey(String),

    /// The session token is missing, unexpected, or not the one issued with the access key.
    #[error("the security token included in the request is missing or invalid")]
    InvalidSecurityToken,

    /// `X-Amz-Date` is further from the verifier's clock than the allowed skew.
    #[error(
        "signature time {} is outside the allowed clock skew of {}s around {}",
        amz_date(.signed_at), .max_skew_secs, amz_date(.now)
    )]
    RequestExpired {
        /// When the request says it was signed.
        signed_at: OffsetDateTime,
        /// The verifier's time.
        now: OffsetDateTime,
        /// The skew allowed, in seconds.
        max_skew_secs: u64,
    },

    /// A pre-signed request used after `X-Amz-Date + X-Amz-Expires`.
    #[error("pre-signed request expired at {}, now {}", amz_date(.expired_at), amz_date(.now))]
    PresignExpired {
        /// When it stopped being valid.
        expired_at: OffsetDateTime,
        /// The verifier's time.
        now: OffsetDateTime,
    },
}

impl SigV4Error {
    /// The AWS error code in the Query protocol ("common errors") spelling:
    /// `MissingAuthenticationToken`, `IncompleteSignature`, `SignatureDoesNotMatch`,
    /// `XAmzContentSHA256Mismatch`, `InvalidClientTokenId` or `RequestExpired`.
    pub fn code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthenticationToken => "MissingAuthenticationToken",
            SigV4Error::IncompleteSignature(_) => "IncompleteSignature",
            SigV4Error::InvalidScope(_) | SigV4Error::SignatureDoesNotMatch => {
                "SignatureDoesNotMatch"
            }
            SigV4Error::ContentSha256Mismatch => "XAmzContentSHA256Mismatch",
            SigV4Error::UnknownAccessKey(_) | SigV4Error::InvalidSecurityToken => {
                "InvalidClientTokenId"
            }
            SigV4Error::RequestExpired { .. } | SigV4Error::PresignExpired { .. } => {
                "RequestExpired"
            }
        }
    }

    /// The AWS error code in the JSON / REST-JSON spelling (the `__type` or
    /// `x-amzn-ErrorType`): `MissingAuthenticationTokenException`,
    /// `IncompleteSignatureException`, `InvalidSignatureException` (also for an expired
    /// signature, as those services report it) or `UnrecognizedClientException`.
    pub fn json_code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            SigV4Error::IncompleteSignature(_) => "IncompleteSignatureException",
            SigV4Error::InvalidScope(_)
            | SigV4Error::SignatureDoesNotMatch
            | SigV4Error::ContentSha256Mismatch
            | SigV4Error::RequestExpired { .. }
            | SigV4Error::PresignExpired { .. } => "InvalidSignatureException",
            SigV4Error::UnknownAccessKey(_) | SigV4Error::InvalidSecurityToken => {
                "UnrecognizedClientException"
            }
        }
    }

    /// The HTTP status to answer with: 400 for a malformed signature or a body that does not
    /// match its declared hash, 403 for everything else.
    pub fn http_status(&self) -> u16 {
        match self {
            SigV4Error::IncompleteSignature(_) | SigV4Error::ContentSha256Mismatch => 400,
            _ => 403,
        }
    }

    /// Whether the refusal is about time (skew or pre-sign expiry) rather than identity.
    pub fn is_expired(&self) -> bool {
        matches!(
            self,
            SigV4Error::RequestExpired { .. } | SigV4Error::PresignExpired { .. }
        )
    }
}

impl From<SigV4Error> for crate::Error {
    fn from(e: SigV4Error) -> Self {
        if e.is_expired() {
            crate::Error::Expired(e.to_string())
        } else {
            crate::Error::Unauthenticated(e.to_string())
        }
    }
}

fn incomplete(reason: impl Into<String>) -> SigV4Error {
    SigV4Error::IncompleteSignature(reason.into())
}

// ------------------------------------------------------------------------------------------
// The verifier
// ------------------------------------------------------------------------------------------

type Lookup = dyn Fn(&str) -> Option<AwsCredentials> + Send + Sync;

/// Verifies SigV4-signed requests: header-signed (`Authorization: AWS4-HMAC-SHA256 …`) and
/// pre-signed (`?X-Amz-Algorithm=…&X-Amz-Signature=…`).
///
/// A verifier knows how to find credentials by access key id, which region and services
/// (signing names) it accepts, the clock skew it allows ([`DEFAULT_MAX_SKEW`], 5 minutes,
/// as AWS) and whether `X-Amz-Security-Token` is outside the signature (the AWS IoT WebSocket
/// quirk). When the credentials found carry a session token, the request must present that
/// token (compared in constant time); when they carry none, the request must present none.
///
/// The verifier is cheap to clone and can be shared between threads.
///
/// ```
/// use fleetkit::auth::sigv4::{AwsCredentials, SignedRequest, SigV4Error, Verifier};
/// use time::{Duration, OffsetDateTime};
///
/// // The official SigV4 test-suite request "get-vanilla", signed in the Authorization header.
/// let verifier = Verifier::with_credentials(
///     "us-east-1",
///     ["service"],
///     [AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")],
/// );
/// let headers = vec![
///     ("Host".to_string(), "example.amazonaws.com".to_string()),
///     ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
///     ("Authorization".to_string(), "AWS4-HMAC-SHA256 \
///         Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
///         SignedHeaders=host;x-amz-date, \
///         Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31".to_string()),
/// ];
/// let request = SignedRequest { method: "GET", path: "/", query: "", headers: &headers, body: b"" };
///
/// let signed_at = OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap(); // 2015-08-30T12:36:00Z
/// let verified = verifier.verify(&request, signed_at + Duration::minutes(1))?;
/// assert_eq!(verified.access_key_id, "AKIDEXAMPLE");
/// assert_eq!(verified.service, "service");
///
/// // Ten minutes later the same request is refused, with AWS's error code.
/// let late = verifier.verify(&request, signed_at + Duration::minutes(10)).unwrap_err();
/// assert!(matches!(late, SigV4Error::RequestExpired { .. }));
/// assert_eq!(late.code(), "RequestExpired");
/// # Ok::<(), SigV4Error>(())
/// ```
#[derive(Clone)]
pub struct Verifier {
    lookup: Arc<Lookup>,
    region: String,
    services: Vec<String>,
    max_skew: Duration,
    security_token_unsigned: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("region", &self.region)
            .field("services", &self.services)
            .field("max_skew", &self.max_skew)
            .field("security_token_unsigned", &self.security_token_unsigned)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `region` and the given services (signing names, e.g. `["iot"]` or
    /// `["iotdevicegateway", "iotdata"]`) that finds credentials with `lookup`, which is given
    /// an access key id and returns its credentials, or `None` if it is unknown.
    pub fn new<S: Into<String>>(
        region: impl Into<String>,
        services: impl IntoIterator<Item = S>,
        lookup: impl Fn(&str) -> Option<AwsCredentials> + Send + Sync + 'static,
    ) -> Self {
        Verifier {
            lookup: Arc::new(lookup),
            region: region.into(),
            services: services.into_iter().map(Into::into).collect(),
            max_skew: DEFAULT_MAX_SKEW,
            security_token_unsigned: false,
        }
    }

    /// A verifier that knows a fixed set of credentials.
    pub fn with_credentials<S: Into<String>>(
        region: impl Into<String>,
        services: impl IntoIterator<Item = S>,
        credentials: impl IntoIterator<Item = AwsCredentials>,
    ) -> Self {
        let map: HashMap<String, AwsCredentials> = credentials
            .into_iter()
            .map(|c| (c.access_key_id.clone(), c))
            .collect();
        Verifier::new(region, services, move |akid| map.get(akid).cloned())
    }

    /// The clock skew allowed between `X-Amz-Date` and the verifier's time (default
    /// [`DEFAULT_MAX_SKEW`]). A pre-signed request may also be used until
    /// `X-Amz-Date + X-Amz-Expires`.
    pub fn max_skew(mut self, max_skew: Duration) -> Self {
        self.max_skew = max_skew;
        self
    }

    /// Whether a `X-Amz-Security-Token` query parameter is outside the signature: `true` for
    /// AWS IoT's MQTT-over-WebSocket endpoint, whose clients append the token after signing;
    /// `false` (the default) for standard SigV4, where a pre-signed URL's token is signed.
    /// Either way the token must be the one issued with the access key.
    pub fn security_token_unsigned(mut self, unsigned: bool) -> Self {
        self.security_token_unsigned = unsigned;
        self
    }

    /// The region this verifier accepts.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The services (signing names) this verifier accepts.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Verifies `request`'s signature at time `now`.
    ///
    /// # Errors
    ///
    /// A [`SigV4Error`] saying why the request is refused.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<Verified, SigV4Error> {
        let params = parse_query(request.query);
        let authorization = header_values(request.headers, "authorization");
        let presigned = params.iter().any(|(k, _)| k == X_AMZ_SIGNATURE.as_bytes());
        let auth = match (authorization.as_slice(), presigned) {
            ([], false) => return Err(SigV4Error::MissingAuthenticationToken),
            ([], true) => AuthInfo::from_query(&params)?,
            ([value], false) => AuthInfo::from_header(value, request.headers)?,
            ([_, ..], true) => {
                return Err(incomplete(
                    "only one of the Authorization header and X-Amz-Signature may be given",
                ));
            }
            (_, false) => return Err(incomplete("more than one Authorization header")),
        };

        // The date, and the credential scope against it and this verifier.
        let signed_at = parse_amz_date(&auth.amz_date)
            .ok_or_else(|| incomplete(format!("invalid X-Amz-Date {:?}", auth.amz_date)))?;
        if auth.amz_date[..8] != auth.scope_date {
            return Err(SigV4Error::InvalidScope(format!(
                "the date in the credential scope ({}) is not the date of X-Amz-Date ({})",
                auth.scope_date, auth.amz_date
            )));
        }
        if auth.region != self.region {
            return Err(SigV4Error::InvalidScope(format!(
                "credential should be scoped to region {:?}, not {:?}",
                self.region, auth.region
            )));
        }
        if !self.services.contains(&auth.service) {
            return Err(SigV4Error::InvalidScope(format!(
                "credential should be scoped to one of the services {:?}, not {:?}",
                self.services, auth.service
            )));
        }
        let signed_headers: Vec<&str> = auth.signed_headers.split(';').collect();
        if signed_headers.iter().any(|h| h.is_empty()) {
            return Err(incomplete(format!(
                "malformed SignedHeaders {:?}",
                auth.signed_headers
            )));
        }
        if !signed_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("host"))
        {
            return Err(incomplete("the host header must be signed"));
        }

        // Who signed, and whether they present the right session token.
        let credentials = (self.lookup)(&auth.access_key_id)
            .ok_or_else(|| SigV4Error::UnknownAccessKey(auth.access_key_id.clone()))?;
        check_session_token(&credentials, &params, request.headers)?;

        // When.
        self.check_time(signed_at, auth.expires, now)?;

        // What: recompute and compare.
        let (payload_hash, payload_signed) = payload_hash(request)?;
        let canonical_params = params.iter().filter(|(k, _)| {
            let dropped = (presigned && k == X_AMZ_SIGNATURE.as_bytes())
                || (self.security_token_unsigned && k == X_AMZ_SECURITY_TOKEN.as_bytes());
            !dropped
        });
        let creq = build_canonical_request(
            request.method,
            request.path,
            canonical_query_of(canonical_params),
            request.headers,
            &auth.signed_headers,
            &payload_hash,
        )?;
        let scope = format!(
            "{}/{}/{}/{SCOPE_TERMINATOR}",
            auth.scope_date, auth.region, auth.service
        );
        let sts = string_to_sign(&auth.amz_date, &scope, &creq);
        let key = Zeroizing::new(signing_key(
            credentials.secret_access_key(),
            &auth.scope_date,
            &auth.region,
            &auth.service,
        ));
        let tag = decode_signature(&auth.signature).ok_or(SigV4Error::SignatureDoesNotMatch)?;
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_slice()),
            sts.as_bytes(),
            &tag,
        )
        .map_err(|_| SigV4Error::SignatureDoesNotMatch)?;

        Ok(Verified {
            access_key_id: auth.access_key_id,
            region: auth.region,
            service: auth.service,
            signed_at,
            payload_signed,
        })
    }

    fn check_time(
        &self,
        signed_at: OffsetDateTime,
        expires: Option<u64>,
        now: OffsetDateTime,
    ) -> Result<(), SigV4Error> {
        let skew = time::Duration::try_from(self.max_skew).unwrap_or(time::Duration::MAX);
        let expired = || SigV4Error::RequestExpired {
            signed_at,
            now,
            max_skew_secs: self.max_skew.as_secs(),
        };
        // Signed in the future, beyond the skew: refused whichever way it was signed.
        if signed_at.checked_sub(skew).is_some_and(|t| now < t) {
            return Err(expired());
        }
        match expires {
            None => {
                if signed_at.checked_add(skew).is_some_and(|t| now > t) {
                    return Err(expired());
                }
            }
            Some(secs) => {
                let expired_at = signed_at + time::Duration::seconds(secs as i64);
                if now > expired_at {
                    return Err(SigV4Error::PresignExpired { expired_at, now });
                }
            }
        }
        Ok(())
    }
}

/// The signature information of a request, from its `Authorization` header or its query.
struct AuthInfo {
    access_key_id: String,
    scope_date: String,
    region: String,
    service: String,
    signed_headers: String,
    signature: String,
    amz_date: String,
    expires: Option<u64>,
}

impl AuthInfo {
    fn from_header(value: &str, headers: &[(String, String)]) -> Result<AuthInfo, SigV4Error> {
        let value = value.trim_matches(' ');
        let (algorithm, rest) = value
            .split_once(' ')
            .ok_or_else(|| incomplete("the Authorization header is not AWS4-HMAC-SHA256"))?;
        if algorithm != ALGORITHM {
            return Err(incomplete(format!(
                "unsupported signature algorithm {algorithm:?}"
            )));
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for component in rest.split(',') {
            let component = component.trim_matches(' ');
            let (name, val) = component.split_once('=').ok_or_else(|| {
                incomplete(format!(
                    "Authorization component {component:?} is not name=value"
                ))
            })?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                other => {
                    return Err(incomplete(format!(
                        "unknown Authorization component {other:?}"
                    )));
                }
            };
            if slot.replace(val).is_some() {
                return Err(incomplete(format!(
                    "Authorization component {name} given twice"
                )));
            }
        }
        let missing = |name: &str| incomplete(format!("the Authorization header lacks {name}"));
        let credential = credential.ok_or_else(|| missing("Credential"))?;
        let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| missing("Signature"))?;
        let amz_date = match header_values(headers, "x-amz-date").as_slice() {
            [date] => date.trim_matches(' ').to_string(),
            [] => return Err(incomplete("the X-Amz-Date header is missing")),
            _ => return Err(incomplete("more than one X-Amz-Date header")),
        };
        let (access_key_id, scope_date, region, service) = parse_credential(credential)?;
        Ok(AuthInfo {
            access_key_id,
            scope_date,
            region,
            service,
            signed_headers: signed_headers.to_string(),
            signature: signature.to_string(),
            amz_date,
            expires: None,
        })
    }

    fn from_query(params: &[(Vec<u8>, Vec<u8>)]) -> Result<AuthInfo, SigV4Error> {
        let get = |name: &str| -> Result<Option<String>, SigV4Error> {
            let mut found = params.iter().filter(|(k, _)| k == name.as_bytes());
            let first = found.next();
            if found.next().is_some() {
                return Err(incomplete(format!("query parameter {name} given twice")));
            }
            first
                .map(|(_, v)| {
                    String::from_utf8(v.clone())
                        .map_err(|_| incomplete(format!("query parameter {name} is not UTF-8")))
                })
                .transpose()
        };
        let require = |name: &str| {
            get(name)?.ok_or_else(|| incomplete(format!("query parameter {name} is missing")))
        };
        let algorithm = require(X_AMZ_ALGORITHM)?;
        if algorithm != ALGORITHM {
            return Err(incomplete(format!(
                "unsupported signature algorithm {algorithm:?}"
            )));
        }
        let credential = require(X_AMZ_CREDENTIAL)?;
        let amz_date = require(X_AMZ_DATE)?;
        let signed_headers = require(X_AMZ_SIGNED_HEADERS)?;
        let signature = require(X_AMZ_SIGNATURE)?;
        let expires = match get(X_AMZ_EXPIRES)? {
            None => None,
            Some(text) => {
                let secs = (!text.is_empty()
                    && text.len() <= 7
                    && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| incomplete(format!("invalid X-Amz-Expires {text:?}")))?;
                if secs > MAX_PRESIGN_EXPIRES_SECS {
                    return Err(incomplete(format!(
                        "X-Amz-Expires must be at most {MAX_PRESIGN_EXPIRES_SECS} seconds"
                    )));
                }
                Some(secs)
            }
        };
        let (access_key_id, scope_date, region, service) = parse_credential(&credential)?;
        Ok(AuthInfo {
            access_key_id,
            scope_date,
            region,
            service,
            signed_headers,
            signature,
            amz_date,
            expires,
        })
    }
}

/// `AKID/yyyymmdd/region/service/aws4_request` → its parts.
fn parse_credential(credential: &str) -> Result<(String, String, String, String), SigV4Error> {
    let malformed = || incomplete(format!("malformed credential {credential:?}"));
    let mut parts = credential.rsplitn(5, '/');
    let terminator = parts.next().ok_or_else(malformed)?;
    let service = parts.next().ok_or_else(malformed)?;
    let region = parts.next().ok_or_else(malformed)?;
    let date = parts.next().ok_or_else(malformed)?;
    let akid = parts.next().ok_or_else(malformed)?;
    if terminator != SCOPE_TERMINATOR
        || akid.is_empty()
        || akid.contains('/')
        || region.is_empty()
        || service.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(malformed());
    }
    Ok((akid.into(), date.into(), region.into(), service.into()))
}

fn check_session_token(
    credentials: &AwsCredentials,
    params: &[(Vec<u8>, Vec<u8>)],
    headers: &[(String, String)],
) -> Result<(), SigV4Error> {
    let mut presented: Vec<&[u8]> = params
        .iter()
        .filter(|(k, _)| k == X_AMZ_SECURITY_TOKEN.as_bytes())
        .map(|(_, v)| v.as_slice())
        .collect();
    presented.extend(
        header_values(headers, "x-amz-security-token")
            .into_iter()
            .map(|v| v.trim_matches(' ').as_bytes()),
    );
    match (credentials.session_token(), presented.as_slice()) {
        (None, []) => Ok(()),
        (Some(expected), [given]) if bool::from(expected.as_bytes().ct_eq(given)) => Ok(()),
        // Given twice (query and header) is accepted only if both are the right token.
        (Some(expected), [a, b])
            if bool::from(expected.as_bytes().ct_eq(a) & expected.as_bytes().ct_eq(b)) =>
        {
            Ok(())
        }
        _ => Err(SigV4Error::InvalidSecurityToken),
    }
}

/// The payload hash for the canonical request, and whether it covers the body.
fn payload_hash(request: &SignedRequest<'_>) -> Result<(String, bool), SigV4Error> {
    let body_hash = || hex(digest::digest(&digest::SHA256, request.body).as_ref());
    match header_values(request.headers, "x-amz-content-sha256").as_slice() {
        [] => Ok((body_hash(), true)),
        [declared] => {
            let declared = declared.trim_matches(' ');
            if declared == UNSIGNED_PAYLOAD {
                Ok((declared.to_string(), false))
            } else if declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit()) {
                if declared.eq_ignore_ascii_case(&body_hash()) {
                    Ok((declared.to_string(), true))
                } else {
                    Err(SigV4Error::ContentSha256Mismatch)
                }
            } else {
                Err(incomplete(format!(
                    "unsupported x-amz-content-sha256 {declared:?}"
                )))
            }
        }
        _ => Err(incomplete("more than one x-amz-content-sha256 header")),
    }
}

// ------------------------------------------------------------------------------------------
// Canonicalization (pure helpers)
// ------------------------------------------------------------------------------------------

/// The SigV4 signing key for a secret, a date (`yyyymmdd`), a region and a service:
/// `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
///
/// Treat the result as a secret.
pub fn signing_key(secret_access_key: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k_secret = Zeroizing::new(Vec::with_capacity(4 + secret_access_key.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret_access_key.as_bytes());
    let k_date = Zeroizing::new(hmac_sha256(&k_secret, date.as_bytes()));
    let k_region = Zeroizing::new(hmac_sha256(k_date.as_slice(), region.as_bytes()));
    let k_service = Zeroizing::new(hmac_sha256(k_region.as_slice(), service.as_bytes()));
    hmac_sha256(k_service.as_slice(), SCOPE_TERMINATOR.as_bytes())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The string to sign: `AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hex(SHA-256(canonical_request))}`,
/// where `scope` is `yyyymmdd/region/service/aws4_request`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref());
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hash}")
}

/// The canonical request for a request as received (see the [module](self) documentation
/// for the rules). Every query parameter in `raw_query` is included: a verifier removes
/// `X-Amz-Signature` first. `signed_headers` is the `;`-separated list, as in the
/// `Authorization` header.
///
/// # Errors
///
/// [`SigV4Error::IncompleteSignature`] if a signed header is absent from `headers`.
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    signed_headers: &str,
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let params = parse_query(raw_query);
    build_canonical_request(
        method,
        raw_path,
        canonical_query_of(params.iter()),
        headers,
        signed_headers,
        payload_hash,
    )
}

fn build_canonical_request(
    method: &str,
    raw_path: &str,
    canonical_query: String,
    headers: &[(String, String)],
    signed_headers: &str,
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    out.push_str(&canonical_uri(raw_path));
    out.push('\n');
    out.push_str(&canonical_query);
    out.push('\n');
    for name in signed_headers.split(';') {
        let values = header_values(headers, name);
        if values.is_empty() {
            return Err(incomplete(format!(
                "signed header {name:?} is not in the request"
            )));
        }
        out.push_str(&name.to_ascii_lowercase());
        out.push(':');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_trimmed(&mut out, value);
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(signed_headers);
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The canonical URI of a path as received: `.`/`..` segments resolved, empty segments
/// removed, then every byte but the unreserved characters and `/` percent-encoded (so an
/// already-encoded `%20` becomes `%2520`).
pub fn canonical_uri(raw_path: &str) -> String {
    let normalized = normalize_path(raw_path);
    let mut out = String::with_capacity(normalized.len() + 8);
    encode_into(&mut out, normalized.as_bytes(), false);
    out
}

/// The canonical query string of a raw query: parameters decoded, re-encoded and sorted.
pub fn canonical_query(raw_query: &str) -> String {
    canonical_query_of(parse_query(raw_query).iter())
}

fn canonical_query_of<'p>(params: impl Iterator<Item = &'p (Vec<u8>, Vec<u8>)>) -> String {
    let mut encoded: Vec<(String, String)> = params
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            encode_into(&mut ek, k, true);
            encode_into(&mut ev, v, true);
            (ek, ev)
        })
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Resolves `.` and `..` and drops empty segments, keeping a trailing slash.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// Splits a raw query into decoded `(name, value)` pairs; empty pieces are skipped and a
/// piece without `=` has an empty value.
fn parse_query(raw: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

/// Form-style decoding: `+` is a space, `%XX` a byte; an invalid escape stays as it is.
fn decode_component(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// SigV4's `UriEncode`: everything but `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex), and
/// `/` too unless `encode_slash` is false.
fn encode_into(out: &mut String, bytes: &[u8], encode_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash)
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
    }
}

/// Appends a header value with leading/trailing spaces removed and runs of spaces collapsed.
fn push_trimmed(out: &mut String, value: &str) {
    let mut previous_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            if !previous_space {
                out.push(' ');
            }
            previous_space = true;
        } else {
            out.push(c);
            previous_space = false;
        }
    }
}

/// Every value of the header `name` (case-insensitive), in order.
fn header_values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A 64-character hex signature as 32 bytes.
fn decode_signature(signature: &str) -> Option<[u8; 32]> {
    let bytes = signature.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(out)
}

/// `yyyymmddThhmmssZ` → a UTC time.
fn parse_amz_date(text: &str) -> Option<OffsetDateTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = &b[range];
        digits.iter().all(u8::is_ascii_digit).then(|| {
            digits
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
        })
    };
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(num(0..4)?).ok()?, month, num(6..8)? as u8)
            .ok()?;
    let time =
        time::Time::from_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// A UTC time as `yyyymmddThhmmssZ` (seconds truncated).
fn amz_date(t: &OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

// ------------------------------------------------------------------------------------------
// Signing (feature `aws`): through the official aws-sigv4 crate
// ------------------------------------------------------------------------------------------

#[cfg(feature = "aws")]
pub use signing::{presign_url, presign_websocket_url, sign_headers};

#[cfg(feature = "aws")]
mod signing {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime};

    use aws_sigv4::http_request::{
        SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;

    use super::{
        ALGORITHM, AwsCredentials, IOT_DEVICE_GATEWAY_SERVICE, MAX_PRESIGN_EXPIRES_SECS,
        SCOPE_TERMINATOR, X_AMZ_ALGORITHM, X_AMZ_CREDENTIAL, X_AMZ_DATE, X_AMZ_SECURITY_TOKEN,
        X_AMZ_SIGNATURE, X_AMZ_SIGNED_HEADERS, amz_date, encode_into,
    };
    use crate::{Error, Result};

    /// Signs an HTTP request in its headers (for example an AWS IoT control-plane call,
    /// service `iot`) and returns the headers to add: `x-amz-date`, `authorization`, and
    /// `x-amz-security-token` when the credentials carry a session token.
    ///
    /// `url` is absolute (`https://iot.us-east-1.amazonaws.com/things?maxResults=5`) with its
    /// path and query already percent-encoded, exactly as they will be sent. `headers` are the
    /// request's other headers: all are signed except those proxies may change (`user-agent`,
    /// `x-amzn-trace-id`, `transfer-encoding`), and `host` comes from `url` unless given. They
    /// must not include `authorization`, `x-amz-date` or `x-amz-security-token`. The body is
    /// hashed into the signature; no `x-amz-content-sha256` header is added (only S3 needs it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a relative or unparsable URL, a header the signer sets
    /// itself, or a header that cannot be signed.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_headers(
        credentials: &AwsCredentials,
        region: &str,
        service: &str,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>> {
        check_url(url)?;
        check_scope(region, service)?;
        if let Some((name, _)) = headers.iter().find(|(n, _)| {
            ["authorization", "x-amz-date", "x-amz-security-token"]
                .iter()
                .any(|reserved| n.eq_ignore_ascii_case(reserved))
        }) {
            return Err(Error::invalid(
                "headers",
                format!("{name} is set by the signer"),
            ));
        }
        let identity = sdk_credentials(credentials).into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Error::invalid("signing parameters", e.to_string()))?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| Error::invalid("url", e.to_string()))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| Error::invalid("request", e.to_string()))?
            .into_parts();
        let (signed, _params) = instructions.into_parts();
        Ok(signed
            .into_iter()
            .map(|h| (h.name().to_string(), h.value().to_string()))
            .collect())
    }

    /// The pre-signed WebSocket URL for MQTT over WSS to AWS IoT Core:
    /// `wss://{host}/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…&X-Amz-Date=…&X-Amz-SignedHeaders=host&X-Amz-Signature=…`,
    /// signed for the service `iotdevicegateway` with `host` the only signed header
    /// (PROTOCOLS.md §1.2).
    ///
    /// Like AWS's own example, the URL has no `X-Amz-Expires` unless `expires` is given (at
    /// most 7 days). When the credentials carry a session token,
    /// `&X-Amz-Security-Token={url-encoded token}` is appended *after* signing: AWS IoT does
    /// not include it in the signature. A hub verifies such a URL with a [`Verifier`] set to
    /// [`security_token_unsigned(true)`](super::Verifier::security_token_unsigned).
    ///
    /// `host` is the endpoint as the `Host` header will carry it
    /// (`a3qjEXAMPLEffp-ats.iot.us-west-2.amazonaws.com`; no port for 443).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use fleetkit::auth::sigv4::{presign_websocket_url, AwsCredentials, SignedRequest, Verifier};
    ///
    /// let creds = AwsCredentials::new("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    ///     .with_session_token("FQoGZXIvYXdzEXAMPLE/token+==");
    /// let host = "a3qjEXAMPLEffp-ats.iot.us-west-2.amazonaws.com";
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let url = presign_websocket_url(&creds, "us-west-2", host, now, None)?;
    /// assert!(url.starts_with(&format!("wss://{host}/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&")));
    /// assert!(url.ends_with("&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2Ftoken%2B%3D%3D"));
    /// assert!(!url.contains("X-Amz-Expires"));
    ///
    /// // The hub's side of the handshake.
    /// let query = url.split_once('?').unwrap().1;
    /// let headers = vec![("Host".to_string(), host.to_string())];
    /// let request = SignedRequest { method: "GET", path: "/mqtt", query, headers: &headers, body: b"" };
    /// let verifier = Verifier::with_credentials("us-west-2", ["iotdevicegateway"], [creds])
    ///     .security_token_unsigned(true);
    /// let verified = verifier.verify(&request, time::OffsetDateTime::from(now))?;
    /// assert_eq!(verified.access_key_id, "ASIAEXAMPLE");
    /// # Ok::<(), fleetkit::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty or malformed host, or `expires` over 7 days.
    ///
    /// [`Verifier`]: super::Verifier
    pub fn presign_websocket_url(
        credentials: &AwsCredentials,
        region: &str,
        host: &str,
        time: SystemTime,
        expires: Option<Duration>,
    ) -> Result<String> {
        if host.is_empty()
            || host
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@\\".contains(&b))
        {
            return Err(Error::invalid(
                "host",
                format!("{host:?} is not a host name"),
            ));
        }
        presign(
            credentials,
            region,
            IOT_DEVICE_GATEWAY_SERVICE,
            "GET",
            &format!("wss://{host}/mqtt"),
            Some(host),
            time,
            expires,
            false,
        )
    }

    /// Pre-signs a request in its query string (standard SigV4 query signing): returns `url`
    /// with `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires` (when
    /// `expires` is given, at most 7 days), `X-Amz-SignedHeaders=host`, `X-Amz-Signature`
    /// and, for temporary credentials, `X-Amz-Security-Token` (which standard SigV4 signs).
    ///
    /// `url` is absolute, with path and query already percent-encoded. The payload hash is
    /// that of an empty body.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a relative or unparsable URL, or `expires` over 7 days.
    pub fn presign_url(
        credentials: &AwsCredentials,
        region: &str,
        service: &str,
        method: &str,
        url: &str,
        time: SystemTime,
        expires: Option<Duration>,
    ) -> Result<String> {
        presign(
            credentials,
            region,
            service,
            method,
            url,
            None,
            time,
            expires,
            true,
        )
    }

    /// Query signing. With `expires`, aws-sigv4 signs in query mode. Without it, aws-sigv4's
    /// query mode cannot be used (it always writes `X-Amz-Expires`), so the query parameters
    /// are placed in the URL first and aws-sigv4 signs that URL in header mode with
    /// `x-amz-date` left out of the signed headers: its canonical request is then exactly the
    /// query-signing one (the date is in the string to sign either way).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn presign(
        credentials: &AwsCredentials,
        region: &str,
        service: &str,
        method: &str,
        url: &str,
        host: Option<&str>,
        time: SystemTime,
        expires: Option<Duration>,
        token_signed: bool,
    ) -> Result<String> {
        check_url(url)?;
        check_scope(region, service)?;
        if let Some(d) = expires
            && d.as_secs() > MAX_PRESIGN_EXPIRES_SECS
        {
            return Err(Error::invalid(
                "expires",
                format!("at most {MAX_PRESIGN_EXPIRES_SECS} seconds (7 days)"),
            ));
        }
        // `https://host` and `https://host/` are the same request; write the path out so the
        // query is not glued to the authority.
        let url = &with_path(url);
        let token = credentials.session_token();
        let host_header: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let identity = sdk_credentials(credentials).into();
        let mut settings = SigningSettings::default();
        settings.session_token_mode = if token_signed {
            SessionTokenMode::Include
        } else {
            SessionTokenMode::Exclude
        };

        let (signed_url, signature) = match expires {
            Some(expires) => {
                settings.signature_location = SignatureLocation::QueryParams;
                settings.expires_in = Some(expires);
                let params = v4::SigningParams::builder()
                    .identity(&identity)
                    .region(region)
                    .name(service)
                    .time(time)
                    .settings(settings)
                    .build()
                    .map_err(|e| Error::invalid("signing parameters", e.to_string()))?
                    .into();
                let request = SignableRequest::new(
                    method,
                    url,
                    host_header.iter().copied(),
                    SignableBody::Bytes(&[]),
                )
                .map_err(|e| Error::invalid("url", e.to_string()))?;
                let (instructions, signature) = sign(request, &params)
                    .map_err(|e| Error::invalid("request", e.to_string()))?
                    .into_parts();
                let (_headers, query) = instructions.into_parts();
                let mut out = String::from(url);
                for (name, value) in &query {
                    // The signature and any token go last, below.
                    if *name != X_AMZ_SIGNATURE && *name != X_AMZ_SECURITY_TOKEN {
                        push_param(&mut out, name, value);
                    }
                }
                (out, signature)
            }
            None => {
                let scope_date = &amz_date(&time::OffsetDateTime::from(time))[..8];
                let mut out = String::from(url);
                push_param(&mut out, X_AMZ_ALGORITHM, ALGORITHM);
                push_param(
                    &mut out,
                    X_AMZ_CREDENTIAL,
                    &format!(
                        "{}/{scope_date}/{region}/{service}/{SCOPE_TERMINATOR}",
                        credentials.access_key_id()
                    ),
                );
                push_param(
                    &mut out,
                    X_AMZ_DATE,
                    &amz_date(&time::OffsetDateTime::from(time)),
                );
                push_param(&mut out, X_AMZ_SIGNED_HEADERS, "host");
                if let (Some(token), true) = (token, token_signed) {
                    push_param(&mut out, X_AMZ_SECURITY_TOKEN, token);
                }
                settings.signature_location = SignatureLocation::Headers;
                // The token is in the query (or not signed at all), never a signed header.
                settings.session_token_mode = SessionTokenMode::Exclude;
                settings
                    .excluded_headers
                    .get_or_insert_with(Vec::new)
                    .push(Cow::Borrowed("x-amz-date"));
                let params = v4::SigningParams::builder()
                    .identity(&identity)
                    .region(region)
                    .name(service)
                    .time(time)
                    .settings(settings)
                    .build()
                    .map_err(|e| Error::invalid("signing parameters", e.to_string()))?
                    .into();
                let request = SignableRequest::new(
                    method,
                    out.as_str(),
                    host_header.iter().copied(),
                    SignableBody::Bytes(&[]),
                )
                .map_err(|e| Error::invalid("url", e.to_string()))?;
                let signature = sign(request, &params)
                    .map_err(|e| Error::invalid("request", e.to_string()))?
                    .signature()
                    .to_string();
                (out, signature)
            }
        };
        let mut out = signed_url;
        push_param(&mut out, X_AMZ_SIGNATURE, &signature);
        if let Some(token) = token {
            if token_signed {
                if expires.is_some() {
                    push_param(&mut out, X_AMZ_SECURITY_TOKEN, token);
                }
            } else {
                // AWS IoT: appended after signing, outside the canonical query.
                push_param(&mut out, X_AMZ_SECURITY_TOKEN, token);
            }
        }
        Ok(out)
    }

    /// `url` with `/` as its path when it has none.
    fn with_path(url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if rest[end..].starts_with('/') {
            url.to_string()
        } else {
            format!("{scheme}://{}/{}", &rest[..end], &rest[end..])
        }
    }

    fn push_param(url: &mut String, name: &str, value: &str) {
        if !url.contains('?') {
            url.push('?');
        } else if !url.ends_with('?') && !url.ends_with('&') {
            url.push('&');
        }
        encode_into(url, name.as_bytes(), true);
        url.push('=');
        encode_into(url, value.as_bytes(), true);
    }

    fn sdk_credentials(credentials: &AwsCredentials) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            credentials.session_token().map(str::to_string),
            None,
            "fleetkit",
        )
    }

    /// aws-sigv4 panics on a URL without an authority; refuse those first.
    fn check_url(url: &str) -> Result<()> {
        let authority = url
            .split_once("://")
            .filter(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            })
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .unwrap_or("");
        if authority.is_empty() {
            return Err(Error::invalid(
                "url",
                format!("{url:?} is not an absolute URL with a host"),
            ));
        }
        if url.contains('#') {
            return Err(Error::invalid("url", "a URL to sign has no fragment"));
        }
        Ok(())
    }

    fn check_scope(region: &str, service: &str) -> Result<()> {
        for (field, value) in [("region", region), ("service", service)] {
            if value.is_empty()
                || value.contains('/')
                || value.bytes().any(|b| !b.is_ascii_graphic())
            {
                return Err(Error::invalid(field, format!("{value:?} is not valid")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
