//! [`AwsAdmin`]: the AWS IoT control plane (REST-JSON over HTTPS, signed with SigV4) as a
//! [`FleetAdmin`].
//!
//! Every request is signed with [`sign_headers`] for the service `iot` in the configuration's
//! region, and sent with reqwest over rustls with the *ring* provider and the configuration's
//! trust anchors. Throttling and server errors are retried with full-jitter backoff; see
//! [`AwsAdmin`] for the rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::AwsIot;
use crate::auth::sigv4::{AwsCredentials, sign_headers};
use crate::backend::{CaStatus, CertificateState, DeviceRecord, FleetAdmin};
use crate::pki::{Certificate, Crl};
use crate::policy::{AttachTarget, PolicyDocument};
use crate::protocol::{Backoff, BackoffConfig};
use crate::{Error, Result};

/// The SigV4 signing name of the AWS IoT control plane.
const SERVICE: &str = "iot";

/// Retry defaults: the first delay is at most 100 ms, no delay exceeds 5 s, 5 attempts in all.
const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(100);
const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(5);
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many pages of a listing are followed before giving up (a server that always returns a
/// `nextToken` must not keep the client busy forever).
const MAX_PAGES: usize = 100;

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~` is percent-encoded, in path
/// segments and in query names and values alike (what SigV4 canonicalization expects).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

// ------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------

/// Which AWS IoT endpoint [`AwsAdmin::describe_endpoint`] asks for.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointType {
    /// `iot:Data-ATS`: the data endpoint with an Amazon Trust Services certificate (use this
    /// one).
    DataAts,
    /// `iot:Data`: the legacy data endpoint with a VeriSign certificate.
    Data,
    /// `iot:CredentialProvider`: exchanges a device certificate for temporary AWS
    /// credentials.
    CredentialProvider,
    /// `iot:Jobs`: the jobs data endpoint.
    Jobs,
}

impl EndpointType {
    /// The name AWS uses, e.g. `iot:Data-ATS`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointType::DataAts => "iot:Data-ATS",
            EndpointType::Data => "iot:Data",
            EndpointType::CredentialProvider => "iot:CredentialProvider",
            EndpointType::Jobs => "iot:Jobs",
        }
    }
}

impl fmt::Display for EndpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate's status as AWS IoT reports it: one of the three states fleetkit models,
/// or another AWS status (`PENDING_TRANSFER`, `PENDING_ACTIVATION`, `REGISTER_INACTIVE`)
/// kept as AWS spelled it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AwsCertificateStatus {
    /// `ACTIVE`, `INACTIVE` or `REVOKED`.
    State(CertificateState),
    /// Any other status, verbatim.
    Other(String),
}

impl AwsCertificateStatus {
    fn parse(s: &str) -> Self {
        match s {
            "ACTIVE" => AwsCertificateStatus::State(CertificateState::Active),
            "INACTIVE" => AwsCertificateStatus::State(CertificateState::Inactive),
            "REVOKED" => AwsCertificateStatus::State(CertificateState::Revoked),
            other => AwsCertificateStatus::Other(other.to_string()),
        }
    }

    /// The state, if it is one fleetkit models.
    pub fn state(&self) -> Option<CertificateState> {
        match self {
            AwsCertificateStatus::State(s) => Some(*s),
            AwsCertificateStatus::Other(_) => None,
        }
    }
}

impl fmt::Display for AwsCertificateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsCertificateStatus::State(s) => f.write_str(certificate_state_str(*s)),
            AwsCertificateStatus::Other(s) => f.write_str(s),
        }
    }
}

/// A device certificate as `DescribeCertificate` returns it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateDescription {
    /// The certificate id: the lowercase hex SHA-256 of its DER.
    pub certificate_id: String,
    /// Its ARN, `arn:aws:iot:<region>:<account>:cert/<id>`.
    pub certificate_arn: String,
    /// The id of the registered CA that issued it, if any.
    pub ca_certificate_id: Option<String>,
    /// Its status.
    pub status: AwsCertificateStatus,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The account that owns it, if reported.
    pub owned_by: Option<String>,
    /// When it was registered or created, if reported.
    pub creation_date: Option<OffsetDateTime>,
}

/// A certificate AWS IoT registered or created: its id and ARN.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredCertificate {
    /// The certificate id (lowercase hex SHA-256 of the DER).
    pub certificate_id: String,
    /// The certificate ARN, the principal to attach to things and policies.
    pub certificate_arn: String,
}

/// A certificate AWS IoT issued for a CSR.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedCertificate {
    /// The certificate id (lowercase hex SHA-256 of the DER).
    pub certificate_id: String,
    /// The certificate ARN.
    pub certificate_arn: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

/// A certificate *and its private key*, generated by AWS IoT
/// ([`AwsAdmin::create_keys_and_certificate`]).
///
/// AWS returns the private key exactly once. It is held in memory that is zeroed on drop, and
/// `Debug` never shows it.
#[derive(Clone)]
pub struct KeysAndCertificate {
    certificate_id: String,
    certificate_arn: String,
    certificate_pem: String,
    public_key_pem: String,
    private_key_pem: Zeroizing<String>,
}

impl KeysAndCertificate {
    /// The certificate id (lowercase hex SHA-256 of the DER).
    pub fn certificate_id(&self) -> &str {
        &self.certificate_id
    }

    /// The certificate ARN.
    pub fn certificate_arn(&self) -> &str {
        &self.certificate_arn
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The public key, PEM.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// The private key, PEM (an RSA-2048 key). A secret: store it on the device, never log
    /// it.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// The certificate, parsed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if AWS returned something that is not a certificate.
    pub fn certificate(&self) -> Result<Certificate> {
        Certificate::from_pem(&self.certificate_pem)
    }
}

impl fmt::Debug for KeysAndCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeysAndCertificate")
            .field("certificate_id", &self.certificate_id)
            .field("certificate_arn", &self.certificate_arn)
            .field("private_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A thing group as `CreateThingGroup` returns it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingGroup {
    /// The group name.
    pub name: String,
    /// Its ARN, the target to attach policies to.
    pub arn: String,
    /// Its id.
    pub id: String,
}

// ------------------------------------------------------------------------------------------
// The client
// ------------------------------------------------------------------------------------------

/// The AWS IoT control plane: registry, certificates and policies over AWS IoT's HTTPS API,
/// as a [`FleetAdmin`] plus the AWS-only operations provisioning tools need.
///
/// Made from an [`AwsIot`] configuration ([`AwsIot::admin`]) that carries credentials: every
/// request is signed with SigV4 (service `iot`, the configuration's region) and sent to the
/// configuration's [control endpoint](AwsIot::control_endpoint) — by default
/// `https://iot.<region>.amazonaws.com`, or a local hub that serves the same API.
///
/// # Trust
///
/// fleetkit bundles no root certificates. The server certificate is checked against the
/// configuration's [roots](AwsIot::roots): for AWS, `AmazonRootCA1.pem` (the Amazon Trust
/// Services root that also anchors the ATS data endpoint) or a system bundle named in
/// `AWS_CA_BUNDLE` (e.g. `/etc/ssl/certs/ca-certificates.crt`); for a local hub, its CA.
/// [`AwsAdmin::with_roots`] takes a different set for the control plane only. TLS is rustls
/// with the *ring* provider; plain `http://` is accepted for loopback hosts only.
///
/// # How FleetAdmin maps onto AWS IoT
///
/// | [`FleetAdmin`] | AWS IoT |
/// |---|---|
/// | `create_device` | `CreateThing`; per group `DescribeThingGroup`, `CreateThingGroup` if missing, `AddThingToThingGroup` |
/// | `device` | `DescribeThing` + `ListThingGroupsForThing`; `enabled` is always `true` |
/// | `set_device_enabled` | [`NotSupported`](Error::NotSupported): things have no switch; deactivate the thing's certificates |
/// | `register_ca` | `RegisterCACertificate`, `certificateMode` `SNI_ONLY`, active |
/// | `set_ca_status` | `UpdateCACertificate`; `Revoked` is [`NotSupported`](Error::NotSupported) |
/// | `add_crl` | [`NotSupported`](Error::NotSupported): AWS IoT takes no CRLs |
/// | `register_certificate` | `RegisterCertificate` (active) + `AttachThingPrincipal` |
/// | `set_certificate_state` | `UpdateCertificate` |
/// | `put_policy` | `CreatePolicy`, or `CreatePolicyVersion` (default) if it exists |
/// | `attach_policy` / `detach_policy` | `AttachPolicy` / `DetachPolicy` to a certificate or thing-group ARN, looked up with `DescribeCertificate` / `DescribeThingGroup` |
///
/// # Errors and retries
///
/// AWS error codes (`x-amzn-ErrorType`, or `__type` / `code` in the body) become fleetkit
/// errors: `ResourceNotFoundException` → [`NotFound`](Error::NotFound),
/// `ResourceAlreadyExistsException` → [`AlreadyExists`](Error::AlreadyExists), validation
/// failures → [`InvalidInput`](Error::InvalidInput), signature and credential failures →
/// [`Unauthenticated`](Error::Unauthenticated), `AccessDeniedException` →
/// [`PermissionDenied`](Error::PermissionDenied), `CertificateStateException` →
/// [`Precondition`](Error::Precondition), `VersionConflictException` →
/// [`Conflict`](Error::Conflict). AWS's code and message are kept in the error text.
///
/// Throttling (`ThrottlingException`, HTTP 429) and server errors (500, 502, 503, 504) are
/// retried with capped exponential backoff and full jitter — by default at most 5 attempts,
/// the first delay at most 100 ms, no delay over 5 s — and each attempt is signed afresh. If
/// every attempt fails the error is [`Unavailable`](Error::Unavailable). A request that could
/// not be delivered is retried too, but a `POST` only if the connection was never made: once
/// a `POST` may have reached AWS it is not repeated, and the error
/// ([`Unavailable`](Error::Unavailable), or [`Timeout`](Error::Timeout)) says it may have taken
/// effect. A TLS failure (an untrusted server certificate) is not retried.
///
/// `Debug` shows the region and the endpoint only; credentials never appear in `Debug`, logs
/// or errors.
///
/// # Example
///
/// ```no_run
/// use fleetkit::aws::{AwsIot, EndpointType};
/// use fleetkit::backend::{CertificateState, DeviceRecord, FleetAdmin};
/// use fleetkit::pki::Certificate;
/// use fleetkit::policy::{AttachTarget, builtin};
///
/// # async fn run(device_cert: Certificate) -> fleetkit::Result<()> {
/// let amazon_root = Certificate::from_pem(&std::fs::read_to_string("AmazonRootCA1.pem")?)?;
/// let aws = AwsIot::builder()
///     .region("eu-west-1")
///     .account_endpoint("a3qjexampleffp")
///     .root_ca(&amazon_root)
///     .access_key_id("AKIAIOSFODNN7EXAMPLE")
///     .secret_access_key(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default())
///     .build()?;
/// let admin = aws.admin()?;
///
/// println!("devices connect to {}", admin.describe_endpoint(EndpointType::DataAts).await?);
/// admin.create_device(DeviceRecord::new("sensor-7").in_group("line-2")).await?;
/// let id = admin.register_certificate(&device_cert, "sensor-7").await?;
/// admin.put_policy("device", &builtin::aws_thing_scoped()).await?;
/// admin.attach_policy("device", AttachTarget::Group("line-2".into())).await?;
/// // Later, the device is compromised:
/// admin.set_certificate_state(&id, CertificateState::Revoked).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AwsAdmin {
    http: reqwest::Client,
    /// The control endpoint, without a trailing `/`.
    base: String,
    region: String,
    credentials: AwsCredentials,
    retry: BackoffConfig,
    max_attempts: u32,
}

impl fmt::Debug for AwsAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsAdmin")
            .field("region", &self.region)
            .field("endpoint", &self.base)
            .finish_non_exhaustive()
    }
}

impl AwsIot {
    /// The control-plane client for this account and region: an [`AwsAdmin`] that trusts
    /// this configuration's [roots](AwsIot::roots) and signs with its credentials.
    ///
    /// ```no_run
    /// use fleetkit::aws::AwsIotBuilder;
    /// use fleetkit::backend::FleetAdmin;
    ///
    /// # async fn run() -> fleetkit::Result<()> {
    /// // AWS_REGION, AWS_IOT_ENDPOINT, AWS_CA_BUNDLE and the AWS_* credential variables.
    /// let admin = AwsIotBuilder::from_env().build()?.admin()?;
    /// let device = admin.device("sensor-7").await?;
    /// println!("{device:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`AwsAdmin::new`].
    pub fn admin(&self) -> Result<AwsAdmin> {
        AwsAdmin::new(self)
    }
}

impl AwsAdmin {
    /// The control-plane client for `config`, trusting `config`'s roots.
    ///
    /// ```no_run
    /// use fleetkit::aws::{AwsAdmin, AwsIot};
    /// # fn run(config: AwsIot) -> fleetkit::Result<()> {
    /// let admin = AwsAdmin::new(&config)?;
    /// assert_eq!(admin.region(), config.region());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `config` has no credentials (field `credentials`) or no
    /// roots (field `roots`), or its control endpoint is plain `http://` to a host that is not
    /// a loopback address; [`Error::NotSupported`] if the TLS or HTTP client cannot be set up.
    pub fn new(config: &AwsIot) -> Result<AwsAdmin> {
        Self::with_roots(config, config.roots())
    }

    /// Like [`new`](Self::new), but trusting `roots` for the control endpoint instead of the
    /// configuration's (for example a system bundle, while the configuration holds only
    /// `AmazonRootCA1.pem` for the data endpoint).
    ///
    /// ```no_run
    /// use fleetkit::aws::{AwsAdmin, AwsIot};
    /// use fleetkit::pki::Certificate;
    /// # fn run(config: AwsIot) -> fleetkit::Result<()> {
    /// let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")?;
    /// let roots: Vec<_> = Certificate::chain_from_pem(&bundle)?
    ///     .iter()
    ///     .map(|c| c.der().clone())
    ///     .collect();
    /// let admin = AwsAdmin::with_roots(&config, &roots)?;
    /// # let _ = admin;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); `roots` must not be empty and must hold usable certificates.
    pub fn with_roots(config: &AwsIot, roots: &[CertificateDer<'static>]) -> Result<AwsAdmin> {
        let credentials = credentials_of(config)?;
        let base = config.control_endpoint().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base).map_err(|e| {
            Error::invalid("control_endpoint", format!("{base:?} is not a URL: {e}"))
        })?;
        let loopback = is_loopback(&url);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(Error::invalid(
                    "control_endpoint",
                    format!("{base:?}: plain http is allowed for loopback hosts only; use https"),
                ));
            }
            other => {
                return Err(Error::invalid(
                    "control_endpoint",
                    format!("{base:?}: unsupported scheme {other:?}"),
                ));
            }
        }
        if roots.is_empty() {
            return Err(Error::invalid(
                "roots",
                "no trust anchor for the AWS IoT control plane: fleetkit bundles no root \
                 certificates. Pass AmazonRootCA1.pem \
                 (https://www.amazontrust.com/repository/AmazonRootCA1.pem) or a system bundle \
                 (e.g. /etc/ssl/certs/ca-certificates.crt) with AwsIotBuilder::root_ca()/roots() \
                 or AWS_CA_BUNDLE, or to AwsAdmin::with_roots()",
            ));
        }
        let mut store = rustls::RootCertStore::empty();
        for (i, root) in roots.iter().enumerate() {
            store.add(root.clone()).map_err(|e| {
                Error::invalid(
                    "roots",
                    format!("root {i} is not a usable certificate: {e}"),
                )
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::NotSupported(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if url.scheme() == "https" {
            builder = builder.https_only(true);
        }
        if loopback {
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| {
            Error::NotSupported(format!("cannot set up the HTTP client: {}", chain(&e)))
        })?;
        let retry = BackoffConfig::new()
            .with_base(DEFAULT_RETRY_BASE)
            .with_cap(DEFAULT_RETRY_CAP);
        Ok(AwsAdmin {
            http,
            base,
            region: config.region().to_string(),
            credentials,
            retry,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        })
    }

    /// Changes how throttled and failed requests are retried: `max_attempts` attempts in all
    /// (1 disables retries), waiting a full-jitter delay below `backoff`'s ceiling between
    /// them (only the base and cap of `backoff` are used). The default is 5 attempts, base
    /// 100 ms, cap 5 s.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use fleetkit::aws::AwsIot;
    /// use fleetkit::protocol::BackoffConfig;
    /// # fn run(config: AwsIot) -> fleetkit::Result<()> {
    /// let patient = BackoffConfig::new()
    ///     .with_base(Duration::from_millis(250))
    ///     .with_cap(Duration::from_secs(20));
    /// let admin = config.admin()?.with_retry(patient, 8)?;
    /// # let _ = admin;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `max_attempts` is 0 or `backoff` does not
    /// [validate](BackoffConfig::validate).
    pub fn with_retry(mut self, backoff: BackoffConfig, max_attempts: u32) -> Result<Self> {
        backoff.validate()?;
        if max_attempts == 0 {
            return Err(Error::invalid(
                "max_attempts",
                "must be at least 1 (1 disables retries)",
            ));
        }
        self.retry = backoff;
        self.max_attempts = max_attempts;
        Ok(self)
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The control endpoint requests go to (no trailing `/`).
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `DescribeEndpoint`: the host of the account's endpoint of `endpoint_type`, e.g.
    /// `a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com` for
    /// [`EndpointType::DataAts`].
    ///
    /// ```no_run
    /// use fleetkit::aws::{AwsIot, EndpointType};
    /// # async fn run(config: AwsIot) -> fleetkit::Result<()> {
    /// let admin = config.admin()?;
    /// let host = admin.describe_endpoint(EndpointType::DataAts).await?;
    /// let devices = AwsIot::builder()
    ///     .region(config.region())
    ///     .endpoint(host)
    ///     .roots(config.roots().to_vec())
    ///     .build()?;
    /// # let _ = devices;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As any request (see [`AwsAdmin`]).
    pub async fn describe_endpoint(&self, endpoint_type: EndpointType) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            endpoint_address: String,
        }
        let out: Out = self
            .call(
                Call::new("DescribeEndpoint", Method::GET, &["endpoint"])?
                    .query("endpointType", endpoint_type.as_str())
                    .about("endpoint", endpoint_type.as_str()),
            )
            .await?;
        Ok(out.endpoint_address)
    }

    /// `CreateKeysAndCertificate`: AWS generates a key pair and a certificate signed by its
    /// own CA, ACTIVE if `set_active`. The private key is returned only this once.
    ///
    /// ```no_run
    /// # async fn run(aws: fleetkit::aws::AwsIot) -> fleetkit::Result<()> {
    /// let admin = aws.admin()?;
    /// let created = admin.create_keys_and_certificate(true).await?;
    /// admin.attach_thing_principal("sensor-7", created.certificate_arn()).await?;
    /// std::fs::write("sensor-7.key.pem", created.private_key_pem())?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As any request (see [`AwsAdmin`]).
    pub async fn create_keys_and_certificate(
        &self,
        set_active: bool,
    ) -> Result<KeysAndCertificate> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            certificate_arn: String,
            certificate_id: String,
            certificate_pem: String,
            key_pair: KeyPair,
        }
        #[derive(Deserialize)]
        struct KeyPair {
            #[serde(rename = "PublicKey", default)]
            public_key: String,
            #[serde(rename = "PrivateKey", deserialize_with = "zeroizing_string")]
            private_key: Zeroizing<String>,
        }
        let out: Out = self
            .call(
                Call::new(
                    "CreateKeysAndCertificate",
                    Method::POST,
                    &["keys-and-certificate"],
                )?
                .query("setAsActive", bool_str(set_active))
                .about("certificate", "(new)"),
            )
            .await?;
        Ok(KeysAndCertificate {
            certificate_id: out.certificate_id,
            certificate_arn: out.certificate_arn,
            certificate_pem: out.certificate_pem,
            public_key_pem: out.key_pair.public_key,
            private_key_pem: out.key_pair.private_key,
        })
    }

    /// `CreateCertificateFromCsr`: AWS signs `csr_pem` with its own CA (ACTIVE if
    /// `set_active`); the key never leaves the device.
    ///
    /// ```no_run
    /// use fleetkit::pki::DeviceCsr;
    /// # async fn run(aws: fleetkit::aws::AwsIot, csr: DeviceCsr) -> fleetkit::Result<()> {
    /// let admin = aws.admin()?;
    /// let created = admin.create_certificate_from_csr(&csr.to_pem(), true).await?;
    /// admin.attach_thing_principal("sensor-7", &created.certificate_arn).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if AWS refuses the CSR; otherwise as any request.
    pub async fn create_certificate_from_csr(
        &self,
        csr_pem: &str,
        set_active: bool,
    ) -> Result<CreatedCertificate> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            certificate_arn: String,
            certificate_id: String,
            certificate_pem: String,
        }
        let out: Out = self
            .call(
                Call::new("CreateCertificateFromCsr", Method::POST, &["certificates"])?
                    .query("setAsActive", bool_str(set_active))
                    .json(json!({ "certificateSigningRequest": csr_pem }))
                    .about("certificate", "(from CSR)"),
            )
            .await?;
        Ok(CreatedCertificate {
            certificate_id: out.certificate_id,
            certificate_arn: out.certificate_arn,
            certificate_pem: out.certificate_pem,
        })
    }

    /// `AttachThingPrincipal`: attaches the principal `principal_arn` (a certificate ARN) to
    /// the thing `thing`, so the certificate may connect as it.
    ///
    /// ```no_run
    /// # async fn run(aws: fleetkit::aws::AwsIot) -> fleetkit::Result<()> {
    /// let admin = aws.admin()?;
    /// let cert = admin.describe_certificate("3f1d…").await?;
    /// admin.attach_thing_principal("sensor-7", &cert.certificate_arn).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the thing does not exist; otherwise as any request.
    pub async fn attach_thing_principal(&self, thing: &str, principal_arn: &str) -> Result<()> {
        self.call_empty(
            Call::new(
                "AttachThingPrincipal",
                Method::PUT,
                &["things", thing, "principals"],
            )?
            .header("x-amzn-principal", principal_arn)
            .about("thing", thing),
        )
        .await
    }

    /// `CreateThingGroup`: creates the thing group `name` (no parent, no properties).
    ///
    /// ```no_run
    /// # async fn run(aws: fleetkit::aws::AwsIot) -> fleetkit::Result<()> {
    /// let group = aws.admin()?.create_thing_group("line-2").await?;
    /// println!("attach policies to {}", group.arn);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As any request (AWS answers an identical existing group with success).
    pub async fn create_thing_group(&self, name: &str) -> Result<ThingGroup> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            thing_group_name: String,
            thing_group_arn: String,
            #[serde(default)]
            thing_group_id: String,
        }
        let out: Out = self
            .call(
                Call::new("CreateThingGroup", Method::POST, &["thing-groups", name])?
                    .json(json!({}))
                    .about("thing group", name),
            )
            .await?;
        Ok(ThingGroup {
            name: out.thing_group_name,
            arn: out.thing_group_arn,
            id: out.thing_group_id,
        })
    }

    /// `CreateProvisioningTemplate`: an enabled fleet-provisioning template `name` with the
    /// template `body` (AWS's template JSON: parameters and the thing, certificate and policy
    /// resources), assumed role `provisioning_role_arn`; returns the template's ARN.
    ///
    /// ```no_run
    /// # async fn run(aws: fleetkit::aws::AwsIot) -> fleetkit::Result<()> {
    /// let body = serde_json::json!({
    ///     "Parameters": {"SerialNumber": {"Type": "String"}},
    ///     "Resources": {
    ///         "thing": {"Type": "AWS::IoT::Thing", "Properties": {
    ///             "ThingName": {"Fn::Join": ["", ["meter-", {"Ref": "SerialNumber"}]]}}},
    ///         "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
    ///             "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
    ///         "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
    ///     }
    /// });
    /// let arn = aws.admin()?
    ///     .create_provisioning_template("meters", &body, "arn:aws:iam::123456789012:role/Provisioning")
    ///     .await?;
    /// # let _ = arn; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] for an existing name, [`Error::InvalidInput`] for a template
    /// the service refuses; otherwise as any request.
    pub async fn create_provisioning_template(
        &self,
        name: &str,
        body: &serde_json::Value,
        provisioning_role_arn: &str,
    ) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            template_arn: String,
        }
        let out: Out = self
            .call(
                Call::new(
                    "CreateProvisioningTemplate",
                    Method::POST,
                    &["provisioning-templates"],
                )?
                .json(json!({
                    "templateName": name,
                    "templateBody": body.to_string(),
                    "provisioningRoleArn": provisioning_role_arn,
                    "enabled": true,
                }))
                .about("provisioning template", name),
            )
            .await?;
        Ok(out.template_arn)
    }

    /// `DescribeCertificate`: a device certificate's ARN, status, issuer and PEM.
    ///
    /// ```no_run
    /// use fleetkit::aws::AwsCertificateStatus;
    /// use fleetkit::backend::CertificateState;
    /// # async fn run(aws: fleetkit::aws::AwsIot, id: &str) -> fleetkit::Result<()> {
    /// let cert = aws.admin()?.describe_certificate(id).await?;
    /// if cert.status == AwsCertificateStatus::State(CertificateState::Revoked) {
    ///     println!("{} is revoked", cert.certificate_id);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such certificate; otherwise as any request.
    pub async fn describe_certificate(&self, id: &str) -> Result<CertificateDescription> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            certificate_description: Description,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Description {
            certificate_arn: String,
            certificate_id: String,
            #[serde(default)]
            ca_certificate_id: Option<String>,
            status: String,
            #[serde(default)]
            certificate_pem: String,
            #[serde(default)]
            owned_by: Option<String>,
            #[serde(default)]
            creation_date: Option<f64>,
        }
        let out: Out = self
            .call(
                Call::new("DescribeCertificate", Method::GET, &["certificates", id])?
                    .about("certificate", id),
            )
            .await?;
        let d = out.certificate_description;
        Ok(CertificateDescription {
            certificate_id: d.certificate_id,
            certificate_arn: d.certificate_arn,
            ca_certificate_id: d.ca_certificate_id,
            status: AwsCertificateStatus::parse(&d.status),
            certificate_pem: d.certificate_pem,
            owned_by: d.owned_by,
            creation_date: d.creation_date.and_then(epoch_seconds),
        })
    }

    /// `RegisterCACertificate` in `DEFAULT` mode, with proof of possession: the CA `ca` and a
    /// `verification_certificate` signed by its key whose subject common name is the
    /// account's registration code (`aws iot get-registration-code`). The CA is made ACTIVE,
    /// auto-registration stays off. A `DEFAULT`-mode CA is registered in one account per
    /// region, and its devices may connect without SNI;
    /// [`register_ca`](FleetAdmin::register_ca) registers in `SNI_ONLY` mode instead (the
    /// multi-account mode), which needs no verification certificate but requires devices to
    /// send SNI.
    ///
    /// ```no_run
    /// use fleetkit::pki::Certificate;
    /// # async fn run(aws: fleetkit::aws::AwsIot, ca: Certificate, proof: Certificate)
    /// #     -> fleetkit::Result<()> {
    /// let registered = aws.admin()?.register_ca_with_verification(&ca, &proof).await?;
    /// assert_eq!(registered.certificate_id, ca.fingerprint_sha256());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `ca` is not a CA certificate or AWS refuses the
    /// verification certificate; [`Error::AlreadyExists`] if the CA is registered; otherwise
    /// as any request.
    pub async fn register_ca_with_verification(
        &self,
        ca: &Certificate,
        verification_certificate: &Certificate,
    ) -> Result<RegisteredCertificate> {
        ca.ensure_ca()?;
        self.register_ca_certificate(
            ca,
            json!({
                "caCertificate": ca.to_pem(),
                "verificationCertificate": verification_certificate.to_pem(),
                "certificateMode": "DEFAULT",
            }),
        )
        .await
    }

    async fn register_ca_certificate(
        &self,
        ca: &Certificate,
        body: serde_json::Value,
    ) -> Result<RegisteredCertificate> {
        let out: Registered = self
            .call(
                Call::new("RegisterCACertificate", Method::POST, &["cacertificate"])?
                    .query("setAsActive", "true")
                    .query("allowAutoRegistration", "false")
                    .json(body)
                    .about("CA certificate", &ca.fingerprint_sha256()),
            )
            .await?;
        Ok(out.into())
    }

    /// `DescribeThingGroup` → the group's ARN.
    async fn thing_group_arn(&self, name: &str) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            thing_group_arn: String,
        }
        let out: Out = self
            .call(
                Call::new("DescribeThingGroup", Method::GET, &["thing-groups", name])?
                    .about("thing group", name),
            )
            .await?;
        Ok(out.thing_group_arn)
    }

    /// The ARN a policy is attached to.
    async fn target_arn(&self, target: &AttachTarget) -> Result<String> {
        match target {
            AttachTarget::Certificate(id) => {
                Ok(self.describe_certificate(id).await?.certificate_arn)
            }
            AttachTarget::Group(group) => self.thing_group_arn(group).await,
            AttachTarget::Device(device) => Err(Error::NotSupported(format!(
                "AWS IoT attaches policies to certificates and thing groups, not to things: \
                 attach it to device {device}'s certificate, or to a group it is in"
            ))),
            AttachTarget::Scope(scope) => Err(Error::NotSupported(format!(
                "AWS IoT has no token scopes (scope {scope}): attach the policy to a \
                 certificate or a thing group"
            ))),
        }
    }

    async fn policy_target_call(
        &self,
        op: &'static str,
        method: Method,
        name: &str,
        target: &AttachTarget,
    ) -> Result<()> {
        let arn = self.target_arn(target).await?;
        self.call_empty(
            Call::new(op, method, &["target-policies", name])?
                .json(json!({ "target": arn }))
                .about("policy", name),
        )
        .await
    }

    // --------------------------------------------------------------------------------------
    // Sending
    // --------------------------------------------------------------------------------------

    /// Sends `call` and parses the JSON response as `T`.
    async fn call<T: for<'de> Deserialize<'de>>(&self, call: Call) -> Result<T> {
        let op = call.op;
        let body = self.send(call).await?;
        serde_json::from_slice(&body).map_err(|e| {
            Error::Unavailable(format!(
                "AWS IoT {op}: the response is not what the API defines: {e}"
            ))
        })
    }

    /// Sends `call`, ignoring the response body.
    async fn call_empty(&self, call: Call) -> Result<()> {
        self.send(call).await.map(drop)
    }

    /// Sends `call`, signing each attempt, retrying as the type documentation says; returns
    /// the body of a 2xx response.
    async fn send(&self, call: Call) -> Result<Zeroizing<Vec<u8>>> {
        let mut url = format!("{}{}", self.base, call.path);
        if !call.query.is_empty() {
            let query: Vec<String> = call
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let url = reqwest::Url::parse(&url)
            .map_err(|e| Error::invalid(call.op, format!("cannot build the URL: {e}")))?;
        if !url.path().ends_with(&call.path) {
            // The URL parser rewrote the path (it never should for encoded segments), so what
            // is signed would not be what is sent.
            return Err(Error::invalid(
                call.op,
                format!("the path {:?} does not survive URL parsing", call.path),
            ));
        }
        let mut headers = call.headers.clone();
        if call.body.is_some() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        let body: &[u8] = call.body.as_deref().unwrap_or_default();
        let idempotent = matches!(call.method, Method::GET | Method::PUT | Method::DELETE);
        let mut backoff = Backoff::new(self.retry)?;
        let mut attempt = 1;
        loop {
            let signed = sign_headers(
                &self.credentials,
                &self.region,
                SERVICE,
                call.method.as_str(),
                url.as_str(),
                &headers,
                body,
                SystemTime::now(),
            )?;
            let mut request = self.http.request(call.method.clone(), url.clone());
            for (name, value) in headers.iter().chain(signed.iter()) {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            let last = attempt >= self.max_attempts;
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let error_type = response
                        .headers()
                        .get("x-amzn-errortype")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match read_body(response).await {
                        Ok(bytes) if (200..300).contains(&status) => return Ok(bytes),
                        Ok(bytes) => {
                            let error = AwsError::parse(status, error_type.as_deref(), &bytes);
                            if !error.retryable() {
                                return Err(error.into_error(&call));
                            }
                            Failure::Service(error)
                        }
                        // The request was delivered; what is missing is the answer.
                        Err(e) => Failure::Transport {
                            retry: idempotent,
                            error: e,
                        },
                    }
                }
                Err(e) => {
                    if let Some(tls) = tls_failure(&e) {
                        return Err(Error::Unavailable(format!(
                            "AWS IoT {}: TLS with {} failed: {tls}. Is the server's root \
                             certificate among the roots (AmazonRootCA1.pem for AWS, the \
                             hub's CA for a local hub)?",
                            call.op, self.base
                        )));
                    }
                    Failure::Transport {
                        // A connect error means nothing was sent.
                        retry: idempotent || e.is_connect(),
                        error: e,
                    }
                }
            };
            match failure {
                Failure::Service(error) if last => {
                    return Err(Error::Unavailable(format!(
                        "AWS IoT {}: {} (gave up after {attempt} attempts)",
                        call.op,
                        error.describe()
                    )));
                }
                Failure::Transport { retry, error } if last || !retry => {
                    return Err(transport_error(&call, &error, attempt, retry));
                }
                Failure::Service(error) => {
                    tracing::debug!(
                        op = call.op,
                        status = error.status,
                        code = %error.code,
                        attempt,
                        "AWS IoT request throttled or failed; retrying"
                    );
                }
                Failure::Transport { error, .. } => {
                    tracing::debug!(
                        op = call.op,
                        error = %chain(&error),
                        attempt,
                        "AWS IoT request not delivered; retrying"
                    );
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
            attempt += 1;
        }
    }
}

enum Failure {
    Service(AwsError),
    Transport { retry: bool, error: reqwest::Error },
}

/// Reads a response body into memory that is zeroed when dropped (it may hold a private
/// key).
async fn read_body(mut response: reqwest::Response) -> reqwest::Result<Zeroizing<Vec<u8>>> {
    let capacity = response
        .content_length()
        .map_or(0, |n| usize::try_from(n.min(1 << 20)).unwrap_or(0));
    let mut body = Zeroizing::new(Vec::with_capacity(capacity));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > body.capacity() {
            // Grow by hand so the old buffer is zeroed rather than left behind.
            let mut bigger = Zeroizing::new(Vec::with_capacity((body.len() + chunk.len()) * 2));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(call: &Call, error: &reqwest::Error, attempts: u32, retry: bool) -> Error {
    let detail = chain(error);
    let mut text = format!("AWS IoT {}: {detail}", call.op);
    if retry && attempts > 1 {
        text.push_str(&format!(" (gave up after {attempts} attempts)"));
    }
    if !retry {
        text.push_str(&format!(
            "; the {} request may have reached AWS and taken effect, so it was not repeated",
            call.method
        ));
    }
    if error.is_timeout() {
        Error::Timeout(text)
    } else {
        Error::Unavailable(text)
    }
}

/// The rustls error inside `error`, if TLS failed (retrying will not help). It may sit
/// inside nested `io::Error`s, whose `source()` skips the wrapped error.
fn tls_failure(error: &reqwest::Error) -> Option<String> {
    fn inside<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        inside(inner)
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = inside(e) {
            return Some(tls.to_string());
        }
        source = e.source();
    }
    None
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn credentials_of(config: &AwsIot) -> Result<AwsCredentials> {
    match (config.access_key_id(), config.secret_access_key()) {
        (Some(id), Some(secret)) => {
            let credentials = AwsCredentials::new(id, secret);
            Ok(match config.session_token() {
                Some(token) => credentials.with_session_token(token),
                None => credentials,
            })
        }
        _ => Err(Error::invalid(
            "credentials",
            "the control plane needs AWS credentials: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials), or call \
             AwsIotBuilder::credentials()",
        )),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn certificate_state_str(state: CertificateState) -> &'static str {
    match state {
        CertificateState::Active => "ACTIVE",
        CertificateState::Inactive => "INACTIVE",
        CertificateState::Revoked => "REVOKED",
    }
}

fn epoch_seconds(secs: f64) -> Option<OffsetDateTime> {
    if !secs.is_finite() {
        return None;
    }
    let nanos = (secs * 1e9) as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

fn zeroizing_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// `{"certificateArn", "certificateId"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registered {
    certificate_arn: String,
    certificate_id: String,
}

impl From<Registered> for RegisteredCertificate {
    fn from(r: Registered) -> Self {
        RegisteredCertificate {
            certificate_id: r.certificate_id,
            certificate_arn: r.certificate_arn,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/// One control-plane operation, ready to sign and send.
struct Call {
    /// The AWS operation name, for errors.
    op: &'static str,
    method: Method,
    /// The path, each segment percent-encoded.
    path: String,
    query: Vec<(&'static str, String)>,
    /// Headers besides those of the signature.
    headers: Vec<(String, String)>,
    /// The JSON body, if the operation has body members.
    body: Option<Vec<u8>>,
    /// What the operation is about, for NotFound / AlreadyExists.
    what: &'static str,
    id: String,
}

impl Call {
    fn new(op: &'static str, method: Method, segments: &[&str]) -> Result<Self> {
        let mut path = String::new();
        for segment in segments {
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return Err(Error::invalid(
                    op,
                    format!("{segment:?} cannot be a name in a URL path"),
                ));
            }
            path.push('/');
            path.push_str(&encode(segment));
        }
        Ok(Call {
            op,
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            what: "resource",
            id: String::new(),
        })
    }

    fn query(mut self, name: &'static str, value: &str) -> Self {
        self.query.push((name, value.to_string()));
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }

    fn about(mut self, what: &'static str, id: &str) -> Self {
        self.what = what;
        self.id = id.to_string();
        self
    }

    /// What the operation is about, for [`Error::InvalidInput`]'s field:
    /// `policy device (CreatePolicy)`.
    fn subject(&self) -> String {
        if self.id.is_empty() {
            self.op.to_string()
        } else {
            format!("{} {} ({})", self.what, self.id, self.op)
        }
    }
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// An AWS error response.
#[derive(Debug)]
struct AwsError {
    status: u16,
    /// The bare code (`ThrottlingException`), or `HTTP <status>` when none was given.
    code: String,
    message: String,
    resource_id: Option<String>,
}

impl AwsError {
    fn parse(status: u16, error_type: Option<&str>, body: &[u8]) -> AwsError {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| json.get(*n).and_then(|v| v.as_str()))
                .map(str::to_string)
        };
        let code = error_type
            .map(str::to_string)
            .or_else(|| field(&["__type", "code", "Code"]))
            .map(|c| bare_code(&c))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("HTTP {status}"));
        let message = field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| {
            if json.is_null() && !body.is_empty() {
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
            } else {
                String::new()
            }
        });
        AwsError {
            status,
            code,
            message,
            resource_id: field(&["resourceId"]),
        }
    }

    fn retryable(&self) -> bool {
        matches!(self.status, 429 | 500 | 502 | 503 | 504)
            || matches!(
                self.code.as_str(),
                "ThrottlingException"
                    | "Throttling"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "InternalFailureException"
                    | "InternalFailure"
                    | "InternalServerException"
                    | "ServiceUnavailableException"
                    | "ServiceUnavailable"
            )
    }

    /// `Code: message`.
    fn describe(&self) -> String {
        if self.message.is_empty() {
            format!("{} (HTTP {})", self.code, self.status)
        } else {
            format!("{}: {}", self.code, self.message)
        }
    }

    fn into_error(self, call: &Call) -> Error {
        let text = format!("AWS IoT {}: {}", call.op, self.describe());
        match self.code.as_str() {
            "ResourceNotFoundException" => Error::NotFound {
                what: call.what,
                id: call.id.clone(),
            },
            "ResourceAlreadyExistsException" => Error::AlreadyExists {
                what: call.what,
                id: self.resource_id.unwrap_or_else(|| call.id.clone()),
            },
            "InvalidRequestException"
            | "MalformedPolicyException"
            | "CertificateValidationException"
            | "CertificateConflictException"
            | "SerializationException"
            | "ValidationException"
            | "InvalidAggregationException"
            | "InvalidQueryException" => Error::invalid(call.subject(), self.describe()),
            "UnauthorizedException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "UnrecognizedClientException"
            | "MissingAuthenticationTokenException"
            | "MissingAuthenticationToken"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "RequestExpired" => Error::Unauthenticated(text),
            "AccessDeniedException" | "ForbiddenException" | "AccessDenied" => {
                Error::PermissionDenied(text)
            }
            "CertificateStateException"
            | "DeleteConflictException"
            | "LimitExceededException"
            | "VersionsLimitExceededException"
            | "InvalidStateTransitionException" => Error::Precondition(text),
            "VersionConflictException" => Error::Conflict {
                // AWS does not say which versions; 0 stands for "not reported".
                what: format!("{} {} ({})", call.what, call.id, self.describe()),
                expected: 0,
                current: 0,
            },
            _ => match self.status {
                400 | 413 | 414 | 415 | 422 => Error::invalid(call.subject(), self.describe()),
                401 => Error::Unauthenticated(text),
                403 => Error::PermissionDenied(text),
                404 => Error::NotFound {
                    what: call.what,
                    id: call.id.clone(),
                },
                409 | 410 | 412 => Error::Precondition(text),
                _ => Error::Unavailable(text),
            },
        }
    }
}

/// `aws.protocoltests#ThrottlingException:http://…` → `ThrottlingException`.
fn bare_code(code: &str) -> String {
    let code = code.split(':').next().unwrap_or_default();
    let code = code.rsplit('#').next().unwrap_or_default();
    code.trim().to_string()
}

// ------------------------------------------------------------------------------------------
// FleetAdmin
// ------------------------------------------------------------------------------------------

#[async_trait]
impl FleetAdmin for AwsAdmin {
    /// `CreateThing` with the type and attributes, then for each group `DescribeThingGroup`,
    /// `CreateThingGroup` if it does not exist, and `AddThingToThingGroup`. `enabled` is
    /// ignored: AWS things have no such flag.
    async fn create_device(&self, device: DeviceRecord) -> Result<()> {
        let mut body = serde_json::Map::new();
        if let Some(thing_type) = &device.thing_type {
            body.insert("thingTypeName".into(), json!(thing_type));
        }
        if !device.attributes.is_empty() {
            let attributes: serde_json::Map<String, serde_json::Value> = device
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            body.insert(
                "attributePayload".into(),
                json!({ "attributes": attributes }),
            );
        }
        self.call_empty(
            Call::new("CreateThing", Method::POST, &["things", &device.id])?
                .json(serde_json::Value::Object(body))
                .about("device", &device.id),
        )
        .await?;
        for group in &device.groups {
            match self.thing_group_arn(group).await {
                Ok(_) => {}
                Err(Error::NotFound { .. }) => match self.create_thing_group(group).await {
                    Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
            self.call_empty(
                Call::new(
                    "AddThingToThingGroup",
                    Method::PUT,
                    &["thing-groups", "addThingToThingGroup"],
                )?
                .json(json!({ "thingGroupName": group, "thingName": device.id }))
                .about("thing group", group),
            )
            .await?;
        }
        Ok(())
    }

    /// `DescribeThing` and `ListThingGroupsForThing`. `enabled` is always `true`: AWS things
    /// have no enabled flag (whether a device can connect depends on its certificates).
    async fn device(&self, id: &str) -> Result<DeviceRecord> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Thing {
            thing_name: String,
            #[serde(default)]
            thing_type_name: Option<String>,
            #[serde(default)]
            attributes: BTreeMap<String, String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Groups {
            #[serde(default)]
            thing_groups: Vec<GroupName>,
            #[serde(default)]
            next_token: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct GroupName {
            group_name: String,
        }
        let thing: Thing = self
            .call(Call::new("DescribeThing", Method::GET, &["things", id])?.about("device", id))
            .await?;
        let mut groups = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut call = Call::new(
                "ListThingGroupsForThing",
                Method::GET,
                &["things", id, "thing-groups"],
            )?
            .about("device", id);
            if let Some(token) = &next {
                call = call.query("nextToken", token);
            }
            let page: Groups = self.call(call).await?;
            groups.extend(page.thing_groups.into_iter().map(|g| g.group_name));
            next = page.next_token.filter(|t| !t.is_empty());
            if next.is_none() {
                break;
            }
        }
        Ok(DeviceRecord {
            id: thing.thing_name,
            thing_type: thing.thing_type_name,
            attributes: thing.attributes.into_iter().collect(),
            groups,
            enabled: true,
        })
    }

    /// Always [`Error::NotSupported`]: AWS IoT has no per-thing switch. Deactivate the
    /// thing's certificates instead (`set_certificate_state(id, Inactive)`).
    async fn set_device_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        let _ = enabled;
        Err(Error::NotSupported(format!(
            "AWS IoT things have no enabled flag (device {id}): to stop a device connecting, \
             set its certificates INACTIVE (set_certificate_state) — or REVOKED for good"
        )))
    }

    /// `RegisterCACertificate` with `certificateMode` `SNI_ONLY`, ACTIVE, auto-registration
    /// off. `DEFAULT` mode would need a verification certificate signed with the CA's key,
    /// which this method does not have: use
    /// [`register_ca_with_verification`](AwsAdmin::register_ca_with_verification) for it.
    /// Devices under an `SNI_ONLY` CA must send SNI (fleetkit's device client sends the
    /// endpoint's DNS name).
    async fn register_ca(&self, ca: &Certificate) -> Result<()> {
        ca.ensure_ca()?;
        self.register_ca_certificate(
            ca,
            json!({ "caCertificate": ca.to_pem(), "certificateMode": "SNI_ONLY" }),
        )
        .await
        .map(drop)
    }

    /// `UpdateCACertificate` to ACTIVE or INACTIVE. [`CaStatus::Revoked`] is
    /// [`Error::NotSupported`]: AWS CAs are only ACTIVE or INACTIVE.
    async fn set_ca_status(&self, ca: &Certificate, status: CaStatus) -> Result<()> {
        let id = ca.fingerprint_sha256();
        if status == CaStatus::Revoked {
            return Err(Error::NotSupported(format!(
                "AWS IoT CA certificates are only ACTIVE or INACTIVE (CA {id}): set the CA \
                 INACTIVE and revoke the device certificates it issued"
            )));
        }
        self.call_empty(
            Call::new("UpdateCACertificate", Method::PUT, &["cacertificate", &id])?
                .query("newStatus", status.as_str())
                .json(json!({}))
                .about("CA certificate", &id),
        )
        .await
    }

    /// Always [`Error::NotSupported`]: AWS IoT takes no CRLs.
    async fn add_crl(&self, crl: Crl) -> Result<()> {
        drop(crl);
        Err(Error::NotSupported(
            "AWS IoT Core does not accept CRLs: revoke each certificate \
             (set_certificate_state(id, Revoked)), or set the issuing CA INACTIVE"
                .into(),
        ))
    }

    /// `RegisterCertificate` (ACTIVE), then `AttachThingPrincipal` to the thing `device`.
    /// Returns the certificate id. If the attachment fails, the certificate stays registered.
    async fn register_certificate(
        &self,
        certificate: &Certificate,
        device: &str,
    ) -> Result<String> {
        let id = certificate.fingerprint_sha256();
        let registered: Registered = self
            .call(
                Call::new(
                    "RegisterCertificate",
                    Method::POST,
                    &["certificate", "register"],
                )?
                .query("setAsActive", "true")
                .json(json!({ "certificatePem": certificate.to_pem() }))
                .about("certificate", &id),
            )
            .await?;
        self.attach_thing_principal(device, &registered.certificate_arn)
            .await?;
        Ok(registered.certificate_id)
    }

    /// `UpdateCertificate` with the new status. Revocation is permanent.
    async fn set_certificate_state(&self, id: &str, state: CertificateState) -> Result<()> {
        self.call_empty(
            Call::new("UpdateCertificate", Method::PUT, &["certificates", id])?
                .query("newStatus", certificate_state_str(state))
                .about("certificate", id),
        )
        .await
    }

    /// `CreatePolicy` with the AWS JSON of `document`; if the policy exists,
    /// `CreatePolicyVersion` with `setAsDefault=true`. Returns the version number. AWS keeps at
    /// most 5 versions: beyond that the error is [`Error::Precondition`] (delete old ones).
    async fn put_policy(&self, name: &str, document: &PolicyDocument) -> Result<u32> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            policy_version_id: String,
        }
        let policy = document.to_aws_json()?;
        let created: Result<Out> = self
            .call(
                Call::new("CreatePolicy", Method::POST, &["policies", name])?
                    .json(json!({ "policyDocument": policy }))
                    .about("policy", name),
            )
            .await;
        let out = match created {
            Err(Error::AlreadyExists { .. }) => {
                self.call(
                    Call::new(
                        "CreatePolicyVersion",
                        Method::POST,
                        &["policies", name, "version"],
                    )?
                    .query("setAsDefault", "true")
                    .json(json!({ "policyDocument": policy }))
                    .about("policy", name),
                )
                .await?
            }
            other => other?,
        };
        out.policy_version_id.parse().map_err(|_| {
            Error::Unavailable(format!(
                "AWS IoT answered policy version {:?} for {name}, not a number",
                out.policy_version_id
            ))
        })
    }

    /// `AttachPolicy` to the target's ARN: a certificate's (from `DescribeCertificate`) or a
    /// thing group's (from `DescribeThingGroup`). Devices and scopes are
    /// [`Error::NotSupported`]: AWS attaches IoT policies to certificates and thing groups.
    async fn attach_policy(&self, name: &str, target: AttachTarget) -> Result<()> {
        self.policy_target_call("AttachPolicy", Method::PUT, name, &target)
            .await
    }

    /// `DetachPolicy` from the target's ARN (looked up as for
    /// [`attach_policy`](FleetAdmin::attach_policy)).
    async fn detach_policy(&self, name: &str, target: &AttachTarget) -> Result<()> {
        self.policy_target_call("DetachPolicy", Method::POST, name, target)
            .await
    }
}

#[cfg(all(test, feature = "local"))]
mod tests;
