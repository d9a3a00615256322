//! AWS IoT's control plane (REST-JSON, SigV4) served by the local hub.
//!
//! [`AwsControlPlane`] answers the subset of the AWS IoT control-plane API that fleet tooling
//! uses to register things, certificates, CAs and policies, on top of a running
//! [`LocalHub`]: fleetkit's AWS `FleetAdmin` client — and in principle the AWS CLI or an AWS
//! SDK with an endpoint override — can run against the hub unchanged.
//!
//! - **Loopback only**, HTTPS with a server certificate for `localhost`, `127.0.0.1` and `::1`
//!   issued by the hub's CA (the admin API's TLS setup), HTTP/1.1.
//! - **Every request is verified with SigV4** (signing name `iot`, the configured region, a
//!   clock skew of 5 minutes, header or query signing) against the configured
//!   [`AwsCredentials`] *before* it is even routed. A refused request gets AWS's error
//!   (`403 MissingAuthenticationTokenException`, `403 InvalidSignatureException`, `403
//!   UnrecognizedClientException`, `400 IncompleteSignatureException`…) and changes nothing.
//! - Bodies are limited to [`MAX_BODY`] (128 KiB); a larger one is `413
//!   RequestEntityTooLargeException`, before the signature is checked.
//!
//! # Operations
//!
//! | Operation | Request | Response |
//! |---|---|---|
//! | CreateThing | `POST /things/{thingName}` `{thingTypeName?, attributePayload?: {attributes}}` | `{thingName, thingArn, thingId}` |
//! | DescribeThing | `GET /things/{thingName}` | `{defaultClientId, thingName, thingId, thingArn, thingTypeName?, attributes, version}` |
//! | ListThingGroupsForThing | `GET /things/{thingName}/thing-groups` | `{thingGroups: [{groupName, groupArn}]}` |
//! | AttachThingPrincipal | `PUT /things/{thingName}/principals`, header `x-amzn-principal: <cert ARN>` | `{}` |
//! | CreateThingGroup | `POST /thing-groups/{thingGroupName}` `{thingGroupProperties?, tags?}` | `{thingGroupName, thingGroupArn, thingGroupId}` |
//! | DescribeThingGroup | `GET /thing-groups/{thingGroupName}` | `{thingGroupName, thingGroupId, thingGroupArn, version, thingGroupProperties, thingGroupMetadata}` |
//! | AddThingToThingGroup | `PUT /thing-groups/addThingToThingGroup` `{thingGroupName\|thingGroupArn, thingName\|thingArn}` | `{}` |
//! | CreateKeysAndCertificate | `POST /keys-and-certificate?setAsActive=` | `{certificateArn, certificateId, certificatePem, keyPair: {PublicKey, PrivateKey}}` |
//! | CreateCertificateFromCsr | `POST /certificates?setAsActive=` `{certificateSigningRequest}` | `{certificateArn, certificateId, certificatePem}` |
//! | RegisterCertificate | `POST /certificate/register?setAsActive=` `{certificatePem, caCertificatePem?, status?}` | `{certificateArn, certificateId}` |
//! | UpdateCertificate | `PUT /certificates/{certificateId}?newStatus=` | empty |
//! | DescribeCertificate | `GET /certificates/{certificateId}` | `{certificateDescription: {…}}` |
//! | GetRegistrationCode | `GET /registrationcode` | `{registrationCode}` |
//! | RegisterCACertificate | `POST /cacertificate?setAsActive=&allowAutoRegistration=` `{caCertificate, verificationCertificate?, certificateMode?}` | `{certificateArn, certificateId}` |
//! | UpdateCACertificate | `PUT /cacertificate/{caCertificateId}?newStatus=` | empty |
//! | DescribeCACertificate | `GET /cacertificate/{caCertificateId}` | `{certificateDescription: {…}}` |
//! | CreatePolicy | `POST /policies/{policyName}` `{policyDocument}` | `{policyName, policyArn, policyDocument, policyVersionId}` |
//! | CreatePolicyVersion | `POST /policies/{policyName}/version?setAsDefault=true` `{policyDocument}` | `{policyArn, policyDocument, policyVersionId, isDefaultVersion}` |
//! | AttachPolicy | `PUT /target-policies/{policyName}` `{target}` | empty |
//! | DetachPolicy | `POST /target-policies/{policyName}` `{target}` | empty |
//! | DescribeEndpoint | `GET /endpoint?endpointType=` | `{endpointAddress}` |
//! | CreateProvisioningTemplate | `POST /provisioning-templates` | `{templateArn, templateName, defaultVersionId}` |
//!
//! Timestamps are epoch seconds (REST-JSON's default). ARNs are
//! `arn:aws:iot:<region>:<account>:thing/<name>` (`thinggroup/`, `cert/<id>`, `cacert/<id>`,
//! `policy/<name>`); certificate ids are the lowercase hex SHA-256 of the DER (an id is also
//! accepted in upper case or with a `0x` prefix).
//!
//! # How AWS's model maps onto the hub
//!
//! - **Things are registry devices.** `thingId` is a UUID-shaped id derived from the name
//!   (SHA-256), so it is stable across restarts. A CreateThing identical to the existing
//!   thing (same type and attributes) succeeds again, as AWS documents; a different one is
//!   `409 ResourceAlreadyExistsException`. Thing types are not modelled: any
//!   `thingTypeName` is accepted. Thing names follow fleetkit's portable device-id rule.
//! - **Thing groups** created here are recorded by the control plane; groups that devices
//!   already carry in the registry exist too. Nested groups (`parentGroupName`) are refused.
//!   AddThingToThingGroup puts the device in the group in the hub's registry
//!   ([`LocalHub::set_device_groups`]), so the group's policies apply to it at once, also on
//!   live connections.
//! - **Certificates exist before they belong to a thing.** Certificates made or registered
//!   here are kept by the control plane (with their status and CA) until AttachThingPrincipal
//!   names a thing; then they are registered in the hub for that device with their status.
//!   DescribeCertificate and UpdateCertificate work in both states. The hub binds a
//!   certificate to one device, so attaching an attached certificate to a *second* thing is
//!   `400 InvalidRequestException` (AWS allows several things per certificate); attaching it
//!   again to the same thing succeeds.
//! - **CreateKeysAndCertificate** generates a **P-256** key (AWS generates RSA-2048; fleetkit
//!   only does P-256) and issues the certificate from the hub CA with subject
//!   `CN=AWS IoT Certificate`. The private key is PKCS#8 PEM; the response is the only copy.
//!   **CreateCertificateFromCsr** verifies the CSR's signature and issues from the hub CA with
//!   the CSR's subject (nothing else from the CSR is copied). Both certificates are valid for
//!   a year (within the CA's validity); `certificatePem` is the leaf followed by the hub CA's
//!   intermediates, if any.
//! - **RegisterCertificate** requires a certificate signed by a CA registered in the hub (the
//!   one given as `caCertificatePem`, or found by issuer name and signature);
//!   RegisterCertificateWithoutCA is not offered. The status is `status` if given, else
//!   ACTIVE with `setAsActive=true`, else INACTIVE (AWS's default).
//! - **RegisterCACertificate** needs a `verificationCertificate` signed by the CA's key whose
//!   CN is the registration code of GetRegistrationCode (a random 64-hex code per control
//!   plane), unless `certificateMode` is `SNI_ONLY` (then there must be none). The CA is
//!   registered in the hub's trust store ACTIVE or INACTIVE (`setAsActive`, default false).
//!   `allowAutoRegistration` is recorded and reported, but the hub does no just-in-time
//!   registration.
//! - **Policies** are the hub's policies. CreatePolicy of an existing name is `409
//!   ResourceAlreadyExistsException`; an unparsable document is `400
//!   MalformedPolicyException` with the parser's message. CreatePolicyVersion always makes
//!   the new version the default (the hub has no way to add a non-default version), so
//!   `setAsDefault=true` is required; a sixth version is `409
//!   VersionsLimitExceededException`, as in AWS. Policies attach to `cert/<id>` (a
//!   certificate known here or to the hub) and `thinggroup/<name>` targets; other ARNs are
//!   `400 InvalidRequestException`. Attaching is idempotent; detaching what is not attached
//!   succeeds too.
//! - **DescribeEndpoint** answers the configured address for `iot:Data-ATS`, `iot:Data`,
//!   `iot:CredentialProvider` and `iot:Jobs`.
//!
//! The control plane's own records (unattached certificates, thing-group records, creation
//! dates, the registration code) live in memory: they do not survive a restart, while
//! everything handed to the hub does when the hub has a data directory.
//!
//! # Errors
//!
//! Errors are REST-JSON: the status, header `x-amzn-ErrorType: <Code>` and body
//! `{"message": "…"}` (`ResourceAlreadyExistsException` adds `resourceId` and, where known,
//! `resourceArn`). fleetkit errors from the hub map in one place: `NotFound` →
//! `404 ResourceNotFoundException`, `AlreadyExists` → `409 ResourceAlreadyExistsException`,
//! `InvalidInput` and `NotSupported` → `400 InvalidRequestException`, `Conflict` → `409
//! VersionConflictException`, `Precondition` → `406 CertificateStateException` (a revoked
//! certificate cannot be reactivated), `Expired`, `Revoked`, `Untrusted` → `400
//! CertificateValidationException`, `PermissionDenied` → `401 UnauthorizedException`,
//! `Unavailable` and `Timeout` → `503 ServiceUnavailableException`, anything else → `500
//! InternalFailureException`. A body that is not JSON (or has a member of the wrong type) is
//! `400 SerializationException`, the code AWS's JSON protocols use for unparsable input. A
//! method and path that name no operation is `404 UnknownOperationException` — a choice:
//! AWS's answer for unknown paths is not documented — and only after the signature was
//! verified, so an unauthenticated caller learns nothing about the routes. Every response
//! carries an `x-amzn-RequestId`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::auth::sigv4::{AwsCredentials, SigV4Error, SignedRequest, Verifier};
use crate::identity::{Signer as _, SoftwareKey};
use crate::local::admin::{Serving, server_config};
use crate::local::{CaStatus, CertificateState, DeviceRecord, LocalHub};
use crate::pki::{Certificate, DeviceCsr};
use crate::policy::{AttachTarget, PolicyDocument};
use crate::{Error, Result};

/// The largest request body accepted (128 KiB): AWS limits certificates and policy
/// documents to well under that.
pub const MAX_BODY: usize = 128 * 1024;

/// The SigV4 signing name of AWS IoT's control plane.
pub const SIGNING_NAME: &str = "iot";

/// The subject of certificates made by CreateKeysAndCertificate (AWS's).
const GENERATED_SUBJECT: &str = "AWS IoT Certificate";

/// How long certificates issued here are valid (within the hub CA's validity).
const ISSUED_VALIDITY: time::Duration = time::Duration::days(365);

/// How far issued certificates are backdated, for devices with slow clocks.
const ISSUED_BACKDATE: time::Duration = time::Duration::hours(1);

/// The endpoint types DescribeEndpoint knows.
const ENDPOINT_TYPES: [&str; 4] = [
    "iot:Data",
    "iot:Data-ATS",
    "iot:CredentialProvider",
    "iot:Jobs",
];

// ---------------------------------------------------------------------------------------------
// Options and the server handle

/// Options for the control plane: where it listens, the region and account it answers for,
/// the credentials that may call it, and what DescribeEndpoint answers.
///
/// `Debug` shows the access key ids only (secrets are redacted).
///
/// ```
/// use fleetkit::auth::sigv4::AwsCredentials;
/// use fleetkit::local::dialect::aws::rest::ControlPlaneOptions;
///
/// let options = ControlPlaneOptions::new()
///     .region("eu-west-1")
///     .credentials(AwsCredentials::new("AKIDLOCAL", "local-secret"))
///     .endpoint_address("localhost");
/// assert!(!format!("{options:?}").contains("local-secret"));
/// ```
#[derive(Clone)]
pub struct ControlPlaneOptions {
    bind: SocketAddr,
    region: String,
    account_id: String,
    credentials: Vec<AwsCredentials>,
    endpoint_address: Option<String>,
    provisioning: Option<Arc<super::AwsHubDialect>>,
}

impl fmt::Debug for ControlPlaneOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneOptions")
            .field("bind", &self.bind)
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("credentials", &self.credentials)
            .field("endpoint_address", &self.endpoint_address)
            .field("provisioning", &self.provisioning.is_some())
            .finish()
    }
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlPlaneOptions {
    /// Defaults: `127.0.0.1:0` (a free port), region `us-east-1`, account `123456789012`,
    /// no credentials (add at least one), DescribeEndpoint answering `localhost`.
    pub fn new() -> Self {
        ControlPlaneOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            region: "us-east-1".to_string(),
            account_id: "123456789012".to_string(),
            credentials: Vec::new(),
            endpoint_address: None,
            provisioning: None,
        }
    }

    /// Where to listen: a loopback address (port 0 picks a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The region requests must be signed for, and that ARNs name.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The account id ARNs name (12 digits).
    pub fn account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = account_id.into();
        self
    }

    /// Adds credentials that may call the control plane (several may be added).
    pub fn credentials(mut self, credentials: AwsCredentials) -> Self {
        self.credentials.push(credentials);
        self
    }

    /// What DescribeEndpoint answers (default `localhost`): the host devices connect to.
    pub fn endpoint_address(mut self, host: impl Into<String>) -> Self {
        self.endpoint_address = Some(host.into());
        self
    }

    /// Serves CreateProvisioningTemplate into `dialect`'s fleet-provisioning service (the
    /// hub's AWS dialect, shared with [`LocalHubBuilder::dialect_shared`]); without it that
    /// operation is refused.
    ///
    /// [`LocalHubBuilder::dialect_shared`]: crate::local::LocalHubBuilder::dialect_shared
    pub fn provisioning(mut self, dialect: Arc<super::AwsHubDialect>) -> Self {
        self.provisioning = Some(dialect);
        self
    }

    fn validate(&self) -> Result<()> {
        if !self.bind.ip().is_loopback() {
            return Err(Error::invalid(
                "control plane bind",
                format!(
                    "{} is not a loopback address; the control plane only listens on \
                     127.0.0.1 or ::1",
                    self.bind
                ),
            ));
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 64
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(Error::invalid(
                "region",
                format!(
                    "{:?} is not a region name (lowercase letters, digits, '-')",
                    self.region
                ),
            ));
        }
        if self.account_id.len() != 12 || !self.account_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::invalid(
                "account id",
                format!("{:?} is not 12 digits", self.account_id),
            ));
        }
        if self.credentials.is_empty() {
            return Err(Error::invalid(
                "credentials",
                "no credentials configured: every request would be refused",
            ));
        }
        if let Some(host) = &self.endpoint_address
            && (host.trim().is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/'))
        {
            return Err(Error::invalid(
                "endpoint address",
                format!("{host:?} is not a host name"),
            ));
        }
        Ok(())
    }
}

/// The AWS IoT control plane (REST-JSON, SigV4) of a running [`LocalHub`]; see the
/// [module documentation](self) for the operations and how they map onto the hub.
///
/// Dropping it stops the server (connections in flight are cut off;
/// [`shutdown`](Self::shutdown) lets them finish).
///
/// ```no_run
/// # async fn f() -> fleetkit::Result<()> {
/// use std::sync::Arc;
/// use fleetkit::auth::sigv4::AwsCredentials;
/// use fleetkit::local::LocalHub;
/// use fleetkit::local::dialect::aws::rest::{AwsControlPlane, ControlPlaneOptions};
///
/// let hub = Arc::new(LocalHub::builder().start().await?);
/// let options = ControlPlaneOptions::new()
///     .credentials(AwsCredentials::new("AKIDLOCAL", "local-secret"));
/// let control = AwsControlPlane::start(hub.clone(), options).await?;
/// // e.g. aws iot describe-endpoint --endpoint-url <url> --region us-east-1
/// println!("AWS IoT control plane at {}", control.url());
/// control.shutdown().await;
/// # Ok(()) }
/// ```
pub struct AwsControlPlane {
    addr: SocketAddr,
    region: String,
    account_id: String,
    serving: Serving,
}

impl fmt::Debug for AwsControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsControlPlane")
            .field("addr", &self.addr)
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

impl AwsControlPlane {
    /// Starts serving the control plane of `hub` with `options`. Must be called inside a
    /// tokio runtime.
    ///
    /// Fails with [`Error::InvalidInput`] for a non-loopback address, a malformed region or
    /// account id, no credentials or a malformed endpoint address, and with [`Error::Io`] if
    /// the address cannot be bound.
    pub async fn start(
        hub: Arc<LocalHub>,
        options: ControlPlaneOptions,
    ) -> Result<AwsControlPlane> {
        options.validate()?;
        let tls = tokio_rustls::TlsAcceptor::from(server_config(&hub)?);
        let listener = TcpListener::bind(options.bind)
            .await
            .map_err(|e| Error::io(format!("{}", options.bind), e))?;
        let addr = listener.local_addr()?;
        let plane = Arc::new(ControlPlane::new(hub, &options)?);
        let router = Router::new().fallback(handle).with_state(plane);
        let serving = Serving::start(listener, tls, router);
        tracing::info!(%addr, region = %options.region, "AWS IoT control plane listening");
        Ok(AwsControlPlane {
            addr,
            region: options.region,
            account_id: options.account_id,
            serving,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `https://127.0.0.1:<port>`: the endpoint override for AWS clients.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The region requests must be signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The account id in its ARNs.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Stops accepting, lets requests in flight finish (up to a few seconds), and returns.
    /// Dropping it stops it at once.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An AWS error answer: status, `x-amzn-ErrorType` code, message, and for
/// `ResourceAlreadyExistsException` the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AwsError {
    status: u16,
    code: &'static str,
    message: String,
    resource_id: Option<String>,
    resource_arn: Option<String>,
}

impl AwsError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
            resource_id: None,
            resource_arn: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestException", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }

    fn exists(message: impl Into<String>, id: &str, arn: Option<String>) -> Self {
        AwsError {
            resource_id: Some(id.to_string()),
            resource_arn: arn,
            ..Self::new(409, "ResourceAlreadyExistsException", message)
        }
    }

    fn certificate_validation(message: impl Into<String>) -> Self {
        Self::new(400, "CertificateValidationException", message)
    }

    fn serialization(message: impl Into<String>) -> Self {
        Self::new(400, "SerializationException", message)
    }

    fn sigv4(e: &SigV4Error) -> Self {
        Self::new(e.http_status(), e.json_code(), e.to_string())
    }
}

/// The one mapping of fleetkit errors to AWS IoT error codes.
impl From<Error> for AwsError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::NotFound { .. } => AwsError::not_found(message),
            Error::AlreadyExists { id, .. } => AwsError::exists(message, &id, None),
            Error::InvalidInput { .. } | Error::NotSupported(_) => AwsError::invalid(message),
            Error::Conflict { .. } => AwsError::new(409, "VersionConflictException", message),
            Error::Precondition(_) => AwsError::new(406, "CertificateStateException", message),
            Error::Expired(_) | Error::Revoked(_) | Error::Untrusted(_) => {
                AwsError::certificate_validation(message)
            }
            Error::PermissionDenied(_) => AwsError::new(401, "UnauthorizedException", message),
            Error::Unavailable(_) | Error::Timeout(_) => {
                AwsError::new(503, "ServiceUnavailableException", message)
            }
            _ => AwsError::new(500, "InternalFailureException", message),
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        if self.status >= 500 {
            tracing::warn!(code = self.code, message = %self.message, "AWS control-plane request failed");
        }
        let mut body = json!({ "message": self.message });
        if let Some(id) = self.resource_id {
            body["resourceId"] = Value::from(id);
        }
        if let Some(arn) = self.resource_arn {
            body["resourceArn"] = Value::from(arn);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.code));
        response
    }
}

type OpResult = std::result::Result<Reply, AwsError>;

/// A successful answer: a JSON body, or an empty one.
#[derive(Debug)]
enum Reply {
    Json(Value),
    /// JSON that carries a private key: sent with `Cache-Control: no-store`.
    Secret(Value),
    Empty,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Json(v) => (StatusCode::OK, axum::Json(v)).into_response(),
            Reply::Secret(v) => {
                let mut r = (StatusCode::OK, axum::Json(v)).into_response();
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Reply::Empty => StatusCode::OK.into_response(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

/// One request, taken apart: what the operation needs after the signature was verified.
#[derive(Debug, Default)]
struct Call {
    query: BTreeMap<String, String>,
    body: Bytes,
    principal: Option<String>,
}

impl Call {
    fn flag(&self, name: &str) -> std::result::Result<Option<bool>, AwsError> {
        match self.query.get(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" => Ok(Some(true)),
            Some(v) if v == "false" => Ok(Some(false)),
            Some(v) => Err(AwsError::invalid(format!(
                "{name} must be true or false, not {v:?}"
            ))),
        }
    }

    /// The body as `T`; an empty body is `{}`.
    fn json<T: DeserializeOwned>(&self) -> std::result::Result<T, AwsError> {
        let body: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| AwsError::serialization(format!("the body is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(AwsError::serialization("the body must be a JSON object"));
        }
        serde_json::from_value(value).map_err(|e| AwsError::serialization(e.to_string()))
    }
}

/// The operations served, with their path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    CreateThing(String),
    DescribeThing(String),
    ListThingGroupsForThing(String),
    AttachThingPrincipal(String),
    CreateThingGroup(String),
    DescribeThingGroup(String),
    AddThingToThingGroup,
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterCertificate,
    UpdateCertificate(String),
    DescribeCertificate(String),
    GetRegistrationCode,
    RegisterCaCertificate,
    UpdateCaCertificate(String),
    DescribeCaCertificate(String),
    CreatePolicy(String),
    CreatePolicyVersion(String),
    AttachPolicy(String),
    DetachPolicy(String),
    DescribeEndpoint,
    CreateProvisioningTemplate,
}

/// Finds the operation for a method and a raw (percent-encoded) path.
fn route(method: &str, raw_path: &str) -> Option<Op> {
    let segments: Vec<String> = raw_path
        .strip_prefix('/')?
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
        })
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    if segments.iter().any(String::is_empty) {
        return None;
    }
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let name = |i: usize| s[i].to_string();
    Some(match (method, s.as_slice()) {
        ("POST", ["things", _]) => Op::CreateThing(name(1)),
        ("GET", ["things", _]) => Op::DescribeThing(name(1)),
        ("GET", ["things", _, "thing-groups"]) => Op::ListThingGroupsForThing(name(1)),
        ("PUT", ["things", _, "principals"]) => Op::AttachThingPrincipal(name(1)),
        ("PUT", ["thing-groups", "addThingToThingGroup"]) => Op::AddThingToThingGroup,
        ("POST", ["thing-groups", _]) => Op::CreateThingGroup(name(1)),
        ("GET", ["thing-groups", _]) => Op::DescribeThingGroup(name(1)),
        ("POST", ["keys-and-certificate"]) => Op::CreateKeysAndCertificate,
        ("POST", ["certificates"]) => Op::CreateCertificateFromCsr,
        ("POST", ["certificate", "register"]) => Op::RegisterCertificate,
        ("PUT", ["certificates", _]) => Op::UpdateCertificate(name(1)),
        ("GET", ["certificates", _]) => Op::DescribeCertificate(name(1)),
        ("GET", ["registrationcode"]) => Op::GetRegistrationCode,
        ("POST", ["cacertificate"]) => Op::RegisterCaCertificate,
        ("PUT", ["cacertificate", _]) => Op::UpdateCaCertificate(name(1)),
        ("GET", ["cacertificate", _]) => Op::DescribeCaCertificate(name(1)),
        ("POST", ["policies", _]) => Op::CreatePolicy(name(1)),
        ("POST", ["policies", _, "version"]) => Op::CreatePolicyVersion(name(1)),
        ("PUT", ["target-policies", _]) => Op::AttachPolicy(name(1)),
        ("POST", ["target-policies", _]) => Op::DetachPolicy(name(1)),
        ("GET", ["endpoint"]) => Op::DescribeEndpoint,
        ("POST", ["provisioning-templates"]) => Op::CreateProvisioningTemplate,
        _ => return None,
    })
}

/// Parses a raw query string: `+` is a space, `%XX` decoded; the last of repeated names wins.
fn parse_query(raw: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A random id for `x-amzn-RequestId`, UUID-shaped.
fn request_id() -> String {
    let mut raw = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    uuid_text(&raw)
}

/// 16 bytes as a version-4-style UUID (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
fn uuid_text(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::pki::hex_lower(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A stable UUID-shaped id for a named resource: from the SHA-256 of `kind/name`.
fn derived_id(kind: &str, name: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("fleetkit:{kind}/{name}").as_bytes(),
    );
    uuid_text(digest.as_ref())
}

async fn handle(State(plane): State<Arc<ControlPlane>>, request: Request) -> Response {
    let id = request_id();
    let mut response = match plane.serve(request).await {
        Ok(reply) => reply.into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", v);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// The control plane's state

/// A certificate the control plane made or registered.
#[derive(Debug, Clone)]
struct CertMeta {
    certificate: Certificate,
    /// The registered CA it chains to (RegisterCertificate); `None` when the hub CA issued it.
    ca_id: Option<String>,
    created: OffsetDateTime,
    modified: OffsetDateTime,
    /// Its status while no thing is attached (afterwards the hub's registry holds it).
    status: CertificateState,
}

/// A CA registered through the control plane.
#[derive(Debug, Clone)]
struct CaMeta {
    created: OffsetDateTime,
    modified: OffsetDateTime,
    sni_only: bool,
    auto_registration: bool,
}

/// A thing group created through the control plane.
#[derive(Debug, Clone)]
struct GroupMeta {
    properties: Value,
    created: OffsetDateTime,
}

#[derive(Debug, Default)]
struct PlaneState {
    /// Provisioning templates created here.
    templates: std::collections::BTreeSet<String>,
    certificates: HashMap<String, CertMeta>,
    cas: HashMap<String, CaMeta>,
    groups: BTreeMap<String, GroupMeta>,
}

struct ControlPlane {
    hub: Arc<LocalHub>,
    verifier: Verifier,
    region: String,
    account_id: String,
    partition: &'static str,
    endpoint_address: String,
    registration_code: String,
    provisioning: Option<Arc<super::AwsHubDialect>>,
    state: Mutex<PlaneState>,
}

/// The ARN partition of a region.
fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// A certificate id as given (`0x` prefix and upper case accepted), normalised; `None` if it
/// is not 64 hex digits.
fn normalise_certificate_id(id: &str) -> Option<String> {
    let id = id
        .strip_prefix("0x")
        .or_else(|| id.strip_prefix("0X"))
        .unwrap_or(id);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn epoch(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn certificate_state_name(state: CertificateState) -> &'static str {
    match state {
        CertificateState::Active => "ACTIVE",
        CertificateState::Inactive => "INACTIVE",
        _ => "REVOKED",
    }
}

/// Parses a certificate status of UpdateCertificate or RegisterCertificate.
fn parse_certificate_status(text: &str) -> std::result::Result<CertificateState, AwsError> {
    match text {
        "ACTIVE" => Ok(CertificateState::Active),
        "INACTIVE" => Ok(CertificateState::Inactive),
        "REVOKED" => Ok(CertificateState::Revoked),
        "PENDING_TRANSFER" | "PENDING_ACTIVATION" | "REGISTER_INACTIVE" => Err(AwsError::invalid(
            format!("status {text} cannot be set here; use ACTIVE, INACTIVE or REVOKED"),
        )),
        _ => Err(AwsError::invalid(format!(
            "{text:?} is not a certificate status (ACTIVE, INACTIVE, REVOKED)"
        ))),
    }
}

/// Whether `certificate` is signed by `issuer`'s key, under `issuer`'s name.
fn signed_by(certificate: &Certificate, issuer: &Certificate) -> bool {
    if certificate.issuer_der() != issuer.subject_der() {
        return false;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(certificate.der().as_ref()) else {
        return false;
    };
    let Ok((_, ca)) = x509_parser::parse_x509_certificate(issuer.der().as_ref()) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Parses a PEM certificate, as CertificateValidationException when it is not one.
fn parse_certificate(pem: &str, what: &str) -> std::result::Result<Certificate, AwsError> {
    Certificate::from_pem(pem).map_err(|e| {
        AwsError::certificate_validation(format!("{what} is not a readable PEM certificate: {e}"))
    })
}

fn required<'a>(value: &'a Option<String>, name: &str) -> std::result::Result<&'a str, AwsError> {
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(AwsError::invalid(format!("{name} is required"))),
    }
}

// Request bodies (unknown members are ignored, as AWS does).

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateThingBody {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    billing_group_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AttributePayload {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateThingGroupBody {
    parent_group_name: Option<String>,
    thing_group_properties: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AddThingToThingGroupBody {
    thing_group_name: Option<String>,
    thing_group_arn: Option<String>,
    thing_name: Option<String>,
    thing_arn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CsrBody {
    certificate_signing_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RegisterCertificateBody {
    certificate_pem: Option<String>,
    ca_certificate_pem: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RegisterCaBody {
    ca_certificate: Option<String>,
    verification_certificate: Option<String>,
    certificate_mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TemplateBody {
    template_name: Option<String>,
    template_body: Option<String>,
    provisioning_role_arn: Option<String>,
    enabled: Option<bool>,
    pre_provisioning_hook: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PolicyBody {
    policy_document: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TargetBody {
    target: Option<String>,
}

/// What a policy target ARN names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Certificate(String),
    ThingGroup(String),
}

impl ControlPlane {
    fn new(hub: Arc<LocalHub>, options: &ControlPlaneOptions) -> Result<Self> {
        let mut code = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut code)
            .map_err(|_| Error::Crypto("no randomness for the registration code".into()))?;
        Ok(ControlPlane {
            hub,
            verifier: Verifier::with_credentials(
                options.region.clone(),
                [SIGNING_NAME],
                options.credentials.clone(),
            ),
            region: options.region.clone(),
            account_id: options.account_id.clone(),
            partition: partition_of(&options.region),
            endpoint_address: options
                .endpoint_address
                .clone()
                .unwrap_or_else(|| "localhost".to_string()),
            registration_code: crate::pki::hex_lower(&code),
            provisioning: options.provisioning.clone(),
            state: Mutex::new(PlaneState::default()),
        })
    }

    fn arn(&self, resource: &str) -> String {
        format!(
            "arn:{}:iot:{}:{}:{resource}",
            self.partition, self.region, self.account_id
        )
    }

    /// Verifies the signature, then routes and runs the operation.
    async fn serve(self: Arc<Self>, request: Request) -> OpResult {
        let (parts, body) = request.into_parts();
        let too_large = || {
            AwsError::new(
                413,
                "RequestEntityTooLargeException",
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| too_large())?;
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let path = parts.uri.path();
        let raw_query = parts.uri.query().unwrap_or("");
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path,
            query: raw_query,
            headers: &headers,
            body: &body,
        };
        if let Err(e) = self.verifier.verify(&signed, OffsetDateTime::now_utc()) {
            tracing::info!(method = %parts.method, path, code = e.json_code(), reason = %e,
                "AWS control-plane request refused");
            return Err(AwsError::sigv4(&e));
        }
        let op = route(parts.method.as_str(), path).ok_or_else(|| {
            AwsError::new(
                404,
                "UnknownOperationException",
                format!("no AWS IoT operation is served at {} {path}", parts.method),
            )
        })?;
        let call = Call {
            query: parse_query(raw_query),
            body,
            principal: parts
                .headers
                .get("x-amzn-principal")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        };
        // Hub changes write (and fsync) the data directory: off the async threads. The
        // operation runs to completion even if the client goes away.
        tokio::task::spawn_blocking(move || self.execute(op, &call))
            .await
            .map_err(|e| {
                AwsError::new(
                    500,
                    "InternalFailureException",
                    format!("the operation did not complete: {e}"),
                )
            })?
    }

    /// Runs one operation. The state lock is held throughout, so the control plane's checks
    /// and changes are not interleaved with another request's.
    fn execute(&self, op: Op, call: &Call) -> OpResult {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *state;
        match op {
            Op::CreateThing(name) => self.create_thing(&name, call),
            Op::DescribeThing(name) => self.describe_thing(st, &name),
            Op::ListThingGroupsForThing(name) => self.list_thing_groups(st, &name),
            Op::AttachThingPrincipal(name) => self.attach_thing_principal(st, &name, call),
            Op::CreateThingGroup(name) => self.create_thing_group(st, &name, call),
            Op::DescribeThingGroup(name) => self.describe_thing_group(st, &name),
            Op::AddThingToThingGroup => self.add_thing_to_thing_group(st, call),
            Op::CreateKeysAndCertificate => self.create_keys_and_certificate(st, call),
            Op::CreateCertificateFromCsr => self.create_certificate_from_csr(st, call),
            Op::RegisterCertificate => self.register_certificate(st, call),
            Op::UpdateCertificate(id) => self.update_certificate(st, &id, call),
            Op::DescribeCertificate(id) => self.describe_certificate(st, &id),
            Op::GetRegistrationCode => Ok(Reply::Json(
                json!({ "registrationCode": self.registration_code }),
            )),
            Op::RegisterCaCertificate => self.register_ca_certificate(st, call),
            Op::UpdateCaCertificate(id) => self.update_ca_certificate(st, &id, call),
            Op::DescribeCaCertificate(id) => self.describe_ca_certificate(st, &id),
            Op::CreatePolicy(name) => self.create_policy(&name, call),
            Op::CreatePolicyVersion(name) => self.create_policy_version(&name, call),
            Op::AttachPolicy(name) => self.attach_policy(st, &name, call, true),
            Op::DetachPolicy(name) => self.attach_policy(st, &name, call, false),
            Op::DescribeEndpoint => self.describe_endpoint(call),
            Op::CreateProvisioningTemplate => self.create_provisioning_template(st, call),
        }
    }

    // --- Provisioning templates ---------------------------------------------------------------

    fn create_provisioning_template(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let Some(aws) = &self.provisioning else {
            return Err(AwsError::invalid(
                "this control plane serves no fleet provisioning (ControlPlaneOptions::provisioning)",
            ));
        };
        let body: TemplateBody = call.json()?;
        let name = required(&body.template_name, "templateName")?.to_string();
        let text = required(&body.template_body, "templateBody")?;
        required(&body.provisioning_role_arn, "provisioningRoleArn")?;
        if body.pre_provisioning_hook.is_some() {
            return Err(AwsError::invalid(
                "preProvisioningHook: Lambda hooks cannot run on the hub (use \
                 ProvisioningTemplate::with_hook in code)",
            ));
        }
        if let Some(kind) = body.kind.as_deref()
            && kind != "FLEET_PROVISIONING"
        {
            return Err(AwsError::invalid(format!(
                "type {kind:?}: only FLEET_PROVISIONING templates are supported"
            )));
        }
        if !body.enabled.unwrap_or(false) {
            return Err(AwsError::invalid(
                "a disabled template provisions nothing; the hub takes enabled templates only \
                 (pass \"enabled\": true)",
            ));
        }
        let arn = self.arn(&format!("provisioningtemplate/{name}"));
        if st.templates.contains(&name) {
            return Err(AwsError::exists(
                format!("provisioning template {name} already exists"),
                &name,
                Some(arn),
            ));
        }
        let parsed: Value = serde_json::from_str(text)
            .map_err(|e| AwsError::invalid(format!("templateBody is not JSON: {e}")))?;
        let template = super::super::ProvisioningTemplate::from_aws_template_body(&name, &parsed)?;
        aws.provisioning().put_template(template);
        st.templates.insert(name.clone());
        Ok(Reply::Json(json!({
            "templateArn": arn,
            "templateName": name,
            "defaultVersionId": 1,
        })))
    }

    // --- Things ------------------------------------------------------------------------------

    fn device(&self, name: &str) -> Option<DeviceRecord> {
        self.hub.with_registry(|r| r.device(name).cloned())
    }

    fn thing_or_404(&self, name: &str) -> std::result::Result<DeviceRecord, AwsError> {
        self.device(name)
            .ok_or_else(|| AwsError::not_found(format!("thing {name} does not exist")))
    }

    fn thing_ids(&self, name: &str) -> (String, String) {
        (
            self.arn(&format!("thing/{name}")),
            derived_id("thing", name),
        )
    }

    fn create_thing(&self, name: &str, call: &Call) -> OpResult {
        let body: CreateThingBody = call.json()?;
        if let Some(billing) = &body.billing_group_name {
            return Err(AwsError::not_found(format!(
                "billing group {billing} does not exist (the hub has no billing groups)"
            )));
        }
        let thing_type = match body.thing_type_name {
            Some(t) if t.trim().is_empty() => {
                return Err(AwsError::invalid("thingTypeName must not be empty"));
            }
            other => other,
        };
        let attributes = body.attribute_payload.unwrap_or_default().attributes;
        for (k, v) in &attributes {
            let ok = |s: &str| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c))
            };
            if k.is_empty() || k.len() > 128 || !ok(k) || v.len() > 800 || !ok(v) {
                return Err(AwsError::invalid(format!(
                    "attribute {k:?}={v:?}: names (1-128) and values (0-800) use letters, \
                     digits and _.,@/:#=[]-"
                )));
            }
        }
        let (arn, id) = self.thing_ids(name);
        let answer = json!({ "thingName": name, "thingArn": arn, "thingId": id });
        if let Some(existing) = self.device(name) {
            let existing_attributes: BTreeMap<String, String> =
                existing.attributes.iter().cloned().collect();
            if existing.thing_type == thing_type && existing_attributes == attributes {
                return Ok(Reply::Json(answer));
            }
            return Err(AwsError::exists(
                format!("thing {name} already exists with a different configuration"),
                &id,
                Some(arn),
            ));
        }
        let mut device = DeviceRecord::new(name);
        device.thing_type = thing_type;
        for (k, v) in &attributes {
            device = device.with_attribute(k, v);
        }
        self.hub.create_device(device)?;
        Ok(Reply::Json(answer))
    }

    fn describe_thing(&self, _st: &PlaneState, name: &str) -> OpResult {
        let device = self.thing_or_404(name)?;
        let (arn, id) = self.thing_ids(name);
        let attributes: Map<String, Value> = device
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let mut answer = json!({
            "defaultClientId": name,
            "thingName": name,
            "thingId": id,
            "thingArn": arn,
            "attributes": attributes,
            "version": 1,
        });
        if let Some(t) = device.thing_type {
            answer["thingTypeName"] = Value::from(t);
        }
        Ok(Reply::Json(answer))
    }

    /// The groups `device` is in (its registry record's).
    fn groups_of(&self, _st: &PlaneState, device: &DeviceRecord) -> BTreeSet<String> {
        device.groups.iter().cloned().collect()
    }

    fn list_thing_groups(&self, st: &PlaneState, name: &str) -> OpResult {
        let device = self.thing_or_404(name)?;
        let groups: Vec<Value> = self
            .groups_of(st, &device)
            .into_iter()
            .map(|g| json!({ "groupName": g, "groupArn": self.arn(&format!("thinggroup/{g}")) }))
            .collect();
        Ok(Reply::Json(json!({ "thingGroups": groups })))
    }

    // --- Thing groups ------------------------------------------------------------------------

    fn group_exists(&self, st: &PlaneState, name: &str) -> bool {
        st.groups.contains_key(name)
            || self.hub.with_registry(|r| {
                r.snapshot()
                    .devices
                    .iter()
                    .any(|d| d.groups.iter().any(|g| g == name))
            })
    }

    fn create_thing_group(&self, st: &mut PlaneState, name: &str, call: &Call) -> OpResult {
        let body: CreateThingGroupBody = call.json()?;
        if body.parent_group_name.is_some() {
            return Err(AwsError::invalid(
                "nested thing groups (parentGroupName) are not supported by the local hub",
            ));
        }
        let ok = name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
        if !ok {
            return Err(AwsError::invalid(format!(
                "thing group name {name:?}: 1 to 128 letters, digits and :_-"
            )));
        }
        let properties = body.thing_group_properties.unwrap_or_else(|| json!({}));
        let arn = self.arn(&format!("thinggroup/{name}"));
        let id = derived_id("thinggroup", name);
        let answer = json!({ "thingGroupName": name, "thingGroupArn": arn, "thingGroupId": id });
        if let Some(existing) = st.groups.get(name) {
            if existing.properties == properties {
                return Ok(Reply::Json(answer));
            }
            return Err(AwsError::exists(
                format!("thing group {name} already exists with different properties"),
                &id,
                Some(arn),
            ));
        }
        st.groups.insert(
            name.to_string(),
            GroupMeta {
                properties,
                created: OffsetDateTime::now_utc(),
            },
        );
        Ok(Reply::Json(answer))
    }

    fn describe_thing_group(&self, st: &PlaneState, name: &str) -> OpResult {
        if !self.group_exists(st, name) {
            return Err(AwsError::not_found(format!(
                "thing group {name} does not exist"
            )));
        }
        let meta = st.groups.get(name);
        let mut metadata = json!({});
        if let Some(m) = meta {
            metadata["creationDate"] = Value::from(epoch(m.created));
        }
        Ok(Reply::Json(json!({
            "thingGroupName": name,
            "thingGroupId": derived_id("thinggroup", name),
            "thingGroupArn": self.arn(&format!("thinggroup/{name}")),
            "version": 1,
            "thingGroupProperties": meta.map_or_else(|| json!({}), |m| m.properties.clone()),
            "thingGroupMetadata": metadata,
        })))
    }

    /// The name in `arn` of resource kind `kind` (`thing`, `thinggroup`, `cert`), checked
    /// against this control plane's partition, region and account.
    fn name_in_arn(
        &self,
        arn: &str,
        kinds: &[&str],
    ) -> std::result::Result<(String, String), AwsError> {
        let bad = || {
            AwsError::invalid(format!(
                "{arn:?} is not an ARN of this hub's {}",
                kinds.join(" or ")
            ))
        };
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
            return Err(bad());
        };
        if *prefix != "arn" || *service != "iot" {
            return Err(bad());
        }
        if *partition != self.partition || *region != self.region || *account != self.account_id {
            return Err(AwsError::invalid(format!(
                "{arn} names another partition, region or account than this hub's \
                 ({}:{}:{})",
                self.partition, self.region, self.account_id
            )));
        }
        let (kind, name) = resource.split_once('/').ok_or_else(bad)?;
        if !kinds.contains(&kind) || name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok((kind.to_string(), name.to_string()))
    }

    fn add_thing_to_thing_group(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let body: AddThingToThingGroupBody = call.json()?;
        let group = match (&body.thing_group_name, &body.thing_group_arn) {
            (Some(n), _) => n.clone(),
            (None, Some(arn)) => self.name_in_arn(arn, &["thinggroup"])?.1,
            (None, None) => {
                return Err(AwsError::invalid(
                    "thingGroupName or thingGroupArn is required",
                ));
            }
        };
        let thing = match (&body.thing_name, &body.thing_arn) {
            (Some(n), _) => n.clone(),
            (None, Some(arn)) => self.name_in_arn(arn, &["thing"])?.1,
            (None, None) => return Err(AwsError::invalid("thingName or thingArn is required")),
        };
        let device = self.thing_or_404(&thing)?;
        if !self.group_exists(st, &group) {
            return Err(AwsError::not_found(format!(
                "thing group {group} does not exist"
            )));
        }
        if !device.groups.contains(&group) {
            let mut groups: Vec<&str> = device.groups.iter().map(String::as_str).collect();
            groups.push(&group);
            self.hub.set_device_groups(&thing, &groups)?;
        }
        Ok(Reply::Json(json!({})))
    }

    // --- Certificates ------------------------------------------------------------------------

    fn certificate_arn(&self, id: &str) -> String {
        self.arn(&format!("cert/{id}"))
    }

    fn certificate_id(&self, id: &str) -> std::result::Result<String, AwsError> {
        normalise_certificate_id(id).ok_or_else(|| {
            AwsError::invalid(format!("{id:?} is not a certificate id (64 hex digits)"))
        })
    }

    /// Whether the certificate is known here or to the hub.
    fn certificate_known(&self, st: &PlaneState, id: &str) -> bool {
        st.certificates.contains_key(id) || self.hub.with_registry(|r| r.certificate(id).is_some())
    }

    fn initial_status(call: &Call) -> std::result::Result<CertificateState, AwsError> {
        Ok(if call.flag("setAsActive")?.unwrap_or(false) {
            CertificateState::Active
        } else {
            CertificateState::Inactive
        })
    }

    /// Issues a client certificate for `spki` from the hub CA with `subject`.
    fn issue(&self, subject: DistinguishedName, spki: &[u8]) -> Result<Certificate> {
        let ca = self.hub.ca();
        let issuer = ca.certificate();
        let now = OffsetDateTime::now_utc();
        if !issuer.is_valid_at(now) {
            return Err(Error::Expired(format!(
                "the hub CA {} is valid from {} to {}; it cannot issue now",
                issuer.subject(),
                issuer.not_before(),
                issuer.not_after()
            )));
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| Error::invalid("public key", format!("not a supported key: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.not_before = (now - ISSUED_BACKDATE).max(issuer.not_before());
        params.not_after = (now + ISSUED_VALIDITY).min(issuer.not_after());
        params.serial_number = Some(crate::pki::random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&public_key, ca.rcgen_issuer())
            .map_err(|e| Error::Crypto(format!("signing the certificate: {e}")))?;
        Certificate::from_der(cert.der().as_ref())
    }

    /// The leaf PEM followed by the hub CA's intermediates (nothing more for a root CA).
    fn issued_pem(&self, certificate: &Certificate) -> String {
        let mut pem = certificate.to_pem();
        for c in self.hub.ca().chain_for_devices() {
            pem.push_str(&c.to_pem());
        }
        pem
    }

    fn remember(
        &self,
        st: &mut PlaneState,
        certificate: Certificate,
        ca_id: Option<String>,
        status: CertificateState,
    ) -> String {
        let id = certificate.fingerprint_sha256();
        let now = OffsetDateTime::now_utc();
        st.certificates.insert(
            id.clone(),
            CertMeta {
                certificate,
                ca_id,
                created: now,
                modified: now,
                status,
            },
        );
        id
    }

    fn create_keys_and_certificate(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let status = Self::initial_status(call)?;
        let key = SoftwareKey::generate_p256()?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, GENERATED_SUBJECT);
        let certificate = self.issue(subject, key.public_key_spki())?;
        let private_key = key.to_pkcs8_pem()?;
        let pem = self.issued_pem(&certificate);
        let id = self.remember(st, certificate, None, status);
        Ok(Reply::Secret(json!({
            "certificateArn": self.certificate_arn(&id),
            "certificateId": id,
            "certificatePem": pem,
            "keyPair": {
                "PublicKey": key.public_key_pem(),
                "PrivateKey": private_key.as_str(),
            },
        })))
    }

    fn create_certificate_from_csr(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let status = Self::initial_status(call)?;
        let body: CsrBody = call.json()?;
        let pem = required(
            &body.certificate_signing_request,
            "certificateSigningRequest",
        )?;
        let csr = DeviceCsr::from_pem(pem).map_err(|e| {
            AwsError::invalid(format!("the certificate signing request is refused: {e}"))
        })?;
        let subject = csr_subject(csr.der())?;
        let certificate = self.issue(subject, csr.public_key_spki())?;
        let pem = self.issued_pem(&certificate);
        let id = self.remember(st, certificate, None, status);
        Ok(Reply::Json(json!({
            "certificateArn": self.certificate_arn(&id),
            "certificateId": id,
            "certificatePem": pem,
        })))
    }

    fn register_certificate(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let body: RegisterCertificateBody = call.json()?;
        let status = match &body.status {
            Some(s) => parse_certificate_status(s)?,
            None => Self::initial_status(call)?,
        };
        let certificate = parse_certificate(
            required(&body.certificate_pem, "certificatePem")?,
            "certificatePem",
        )?;
        if certificate.is_ca() {
            return Err(AwsError::certificate_validation(
                "a CA certificate cannot be registered as a device certificate",
            ));
        }
        let now = OffsetDateTime::now_utc();
        if !certificate.is_valid_at(now) {
            return Err(AwsError::certificate_validation(format!(
                "the certificate is not valid now (valid from {} to {})",
                certificate.not_before(),
                certificate.not_after()
            )));
        }
        let cas = self.hub.trust_store().cas();
        let ca = match &body.ca_certificate_pem {
            Some(pem) if !pem.trim().is_empty() => {
                let given = parse_certificate(pem, "caCertificatePem")?;
                let id = given.fingerprint_sha256();
                let (ca, status) = cas
                    .into_iter()
                    .find(|(c, _)| c.fingerprint_sha256() == id)
                    .ok_or_else(|| {
                        AwsError::certificate_validation(format!(
                            "the CA certificate {id} is not registered"
                        ))
                    })?;
                if !signed_by(&certificate, &ca) {
                    return Err(AwsError::certificate_validation(
                        "the certificate is not signed by the CA certificate given",
                    ));
                }
                (ca, status)
            }
            _ => cas
                .into_iter()
                .find(|(c, _)| signed_by(&certificate, c))
                .ok_or_else(|| {
                    AwsError::certificate_validation(format!(
                        "the certificate's issuer ({}) is not a registered CA",
                        certificate.issuer()
                    ))
                })?,
        };
        if ca.1 == CaStatus::Revoked {
            return Err(AwsError::new(
                406,
                "CertificateStateException",
                format!(
                    "the CA certificate {} is revoked",
                    ca.0.fingerprint_sha256()
                ),
            ));
        }
        let id = certificate.fingerprint_sha256();
        if self.certificate_known(st, &id) {
            return Err(AwsError::exists(
                format!("certificate {id} is already registered"),
                &id,
                Some(self.certificate_arn(&id)),
            ));
        }
        let ca_id = ca.0.fingerprint_sha256();
        let hub_ca = self.hub.ca_certificate().fingerprint_sha256();
        self.remember(st, certificate, (ca_id != hub_ca).then_some(ca_id), status);
        Ok(Reply::Json(json!({
            "certificateArn": self.certificate_arn(&id),
            "certificateId": id,
        })))
    }

    fn update_certificate(&self, st: &mut PlaneState, id: &str, call: &Call) -> OpResult {
        let id = self.certificate_id(id)?;
        let new = call
            .query
            .get("newStatus")
            .ok_or_else(|| AwsError::invalid("newStatus is required"))?;
        let new = parse_certificate_status(new)?;
        let attached = self.hub.with_registry(|r| r.certificate(&id).is_some());
        if attached {
            self.hub.set_certificate_state(&id, new)?;
            if let Some(meta) = st.certificates.get_mut(&id) {
                meta.status = new;
                meta.modified = OffsetDateTime::now_utc();
            }
            return Ok(Reply::Empty);
        }
        let meta = st
            .certificates
            .get_mut(&id)
            .ok_or_else(|| AwsError::not_found(format!("certificate {id} does not exist")))?;
        if meta.status == CertificateState::Revoked && new != CertificateState::Revoked {
            return Err(Error::Precondition(format!(
                "certificate {id} is revoked; revocation is permanent"
            ))
            .into());
        }
        meta.status = new;
        meta.modified = OffsetDateTime::now_utc();
        Ok(Reply::Empty)
    }

    fn describe_certificate(&self, st: &PlaneState, id: &str) -> OpResult {
        let id = self.certificate_id(id)?;
        let record = self.hub.with_registry(|r| r.certificate(&id).cloned());
        let meta = st.certificates.get(&id);
        let (certificate, status) = match (&record, meta) {
            (Some(r), _) => (r.certificate.clone(), r.state),
            (None, Some(m)) => (m.certificate.clone(), m.status),
            (None, None) => {
                return Err(AwsError::not_found(format!(
                    "certificate {id} does not exist"
                )));
            }
        };
        let created = meta.map_or(certificate.not_before(), |m| m.created);
        let modified = meta.map_or(created, |m| m.modified);
        let mut description = json!({
            "certificateArn": self.certificate_arn(&id),
            "certificateId": id,
            "status": certificate_state_name(status),
            "certificatePem": certificate.to_pem(),
            "ownedBy": self.account_id,
            "creationDate": epoch(created),
            "lastModifiedDate": epoch(modified),
            "customerVersion": 1,
            "validity": {
                "notBefore": epoch(certificate.not_before()),
                "notAfter": epoch(certificate.not_after()),
            },
            "certificateMode": "DEFAULT",
        });
        if let Some(ca) = meta.and_then(|m| m.ca_id.as_ref()) {
            description["caCertificateId"] = Value::from(ca.as_str());
            if st.cas.get(ca).is_some_and(|c| c.sni_only) {
                description["certificateMode"] = Value::from("SNI_ONLY");
            }
        }
        Ok(Reply::Json(
            json!({ "certificateDescription": description }),
        ))
    }

    fn attach_thing_principal(&self, st: &mut PlaneState, thing: &str, call: &Call) -> OpResult {
        let principal = call
            .principal
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| AwsError::invalid("the x-amzn-principal header is required"))?;
        let (_, id) = self.name_in_arn(principal.trim(), &["cert"])?;
        let id = self.certificate_id(&id)?;
        self.thing_or_404(thing)?;
        let registered = self.hub.with_registry(|r| r.certificate(&id).cloned());
        if let Some(record) = registered {
            if record.device == thing {
                return Ok(Reply::Json(json!({})));
            }
            return Err(AwsError::invalid(format!(
                "certificate {id} is attached to thing {}; the local hub binds a certificate \
                 to one thing",
                record.device
            )));
        }
        let meta = st
            .certificates
            .get(&id)
            .ok_or_else(|| AwsError::not_found(format!("certificate {id} does not exist")))?;
        self.hub
            .register_certificate(meta.certificate.clone(), thing)?;
        if meta.status != CertificateState::Active {
            self.hub.set_certificate_state(&id, meta.status)?;
        }
        Ok(Reply::Json(json!({})))
    }

    // --- CA certificates ---------------------------------------------------------------------

    fn ca_id(&self, id: &str) -> std::result::Result<String, AwsError> {
        normalise_certificate_id(id).ok_or_else(|| {
            AwsError::invalid(format!("{id:?} is not a CA certificate id (64 hex digits)"))
        })
    }

    fn register_ca_certificate(&self, st: &mut PlaneState, call: &Call) -> OpResult {
        let body: RegisterCaBody = call.json()?;
        let active = call.flag("setAsActive")?.unwrap_or(false);
        let auto_registration = call.flag("allowAutoRegistration")?.unwrap_or(false);
        let sni_only = match body.certificate_mode.as_deref() {
            None | Some("DEFAULT") => false,
            Some("SNI_ONLY") => true,
            Some(other) => {
                return Err(AwsError::invalid(format!(
                    "certificateMode {other:?} is not DEFAULT or SNI_ONLY"
                )));
            }
        };
        let ca = parse_certificate(
            required(&body.ca_certificate, "caCertificate")?,
            "caCertificate",
        )?;
        ca.ensure_ca()
            .map_err(|e| AwsError::certificate_validation(e.to_string()))?;
        if !ca.is_valid_at(OffsetDateTime::now_utc()) {
            return Err(AwsError::certificate_validation(format!(
                "the CA certificate is not valid now (valid from {} to {})",
                ca.not_before(),
                ca.not_after()
            )));
        }
        let verification = body
            .verification_certificate
            .as_deref()
            .filter(|v| !v.trim().is_empty());
        match (sni_only, verification) {
            (true, Some(_)) => {
                return Err(AwsError::invalid(
                    "certificateMode SNI_ONLY takes no verificationCertificate",
                ));
            }
            (false, None) => {
                return Err(AwsError::invalid(
                    "a verificationCertificate is required (or certificateMode SNI_ONLY)",
                ));
            }
            (false, Some(pem)) => {
                let proof = parse_certificate(pem, "verificationCertificate")?;
                if !signed_by(&proof, &ca) {
                    return Err(AwsError::certificate_validation(
                        "the verification certificate is not signed by the CA certificate's key",
                    ));
                }
                if proof.subject_common_name() != Some(self.registration_code.as_str()) {
                    return Err(AwsError::new(
                        400,
                        "RegistrationCodeValidationException",
                        "the verification certificate's common name is not this account's \
                         registration code (GetRegistrationCode)",
                    ));
                }
            }
            (true, None) => {}
        }
        let id = ca.fingerprint_sha256();
        let arn = self.arn(&format!("cacert/{id}"));
        if self.hub.trust_store().ca(&id).is_some() {
            return Err(AwsError::exists(
                format!("CA certificate {id} is already registered"),
                &id,
                Some(arn),
            ));
        }
        let status = if active {
            CaStatus::Active
        } else {
            CaStatus::Inactive
        };
        if active {
            self.hub.register_ca(&ca)?;
        } else {
            // Registered INACTIVE at once (never trusted, not even for a moment); setting the
            // status it has then saves the trust store in the hub's data directory.
            self.hub
                .trust_store()
                .register_ca_with_status(ca.clone(), status)?;
            self.hub.set_ca_status(&ca, status)?;
        }
        let now = OffsetDateTime::now_utc();
        st.cas.insert(
            id.clone(),
            CaMeta {
                created: now,
                modified: now,
                sni_only,
                auto_registration,
            },
        );
        Ok(Reply::Json(
            json!({ "certificateArn": arn, "certificateId": id }),
        ))
    }

    fn update_ca_certificate(&self, st: &mut PlaneState, id: &str, call: &Call) -> OpResult {
        let id = self.ca_id(id)?;
        let (ca, _) =
            self.hub.trust_store().ca(&id).ok_or_else(|| {
                AwsError::not_found(format!("CA certificate {id} does not exist"))
            })?;
        let status = match call.query.get("newStatus").map(String::as_str) {
            None => None,
            Some("ACTIVE") => Some(CaStatus::Active),
            Some("INACTIVE") => Some(CaStatus::Inactive),
            Some(other) => {
                return Err(AwsError::invalid(format!(
                    "newStatus {other:?} is not ACTIVE or INACTIVE"
                )));
            }
        };
        let auto = match call
            .query
            .get("newAutoRegistrationStatus")
            .map(String::as_str)
        {
            None => None,
            Some("ENABLE") => Some(true),
            Some("DISABLE") => Some(false),
            Some(other) => {
                return Err(AwsError::invalid(format!(
                    "newAutoRegistrationStatus {other:?} is not ENABLE or DISABLE"
                )));
            }
        };
        if let Some(status) = status {
            self.hub.set_ca_status(&ca, status)?;
        }
        let now = OffsetDateTime::now_utc();
        let meta = st.cas.entry(id).or_insert_with(|| CaMeta {
            created: ca.not_before(),
            modified: now,
            sni_only: false,
            auto_registration: false,
        });
        meta.modified = now;
        if let Some(auto) = auto {
            meta.auto_registration = auto;
        }
        Ok(Reply::Empty)
    }

    fn describe_ca_certificate(&self, st: &PlaneState, id: &str) -> OpResult {
        let id = self.ca_id(id)?;
        let (ca, status) =
            self.hub.trust_store().ca(&id).ok_or_else(|| {
                AwsError::not_found(format!("CA certificate {id} does not exist"))
            })?;
        let meta = st.cas.get(&id);
        let created = meta.map_or(ca.not_before(), |m| m.created);
        Ok(Reply::Json(json!({
            "certificateDescription": {
                "certificateArn": self.arn(&format!("cacert/{id}")),
                "certificateId": id,
                "status": status.as_str(),
                "certificatePem": ca.to_pem(),
                "ownedBy": self.account_id,
                "creationDate": epoch(created),
                "lastModifiedDate": epoch(meta.map_or(created, |m| m.modified)),
                "customerVersion": 1,
                "autoRegistrationStatus":
                    if meta.is_some_and(|m| m.auto_registration) { "ENABLE" } else { "DISABLE" },
                "validity": {
                    "notBefore": epoch(ca.not_before()),
                    "notAfter": epoch(ca.not_after()),
                },
                "certificateMode":
                    if meta.is_some_and(|m| m.sni_only) { "SNI_ONLY" } else { "DEFAULT" },
            }
        })))
    }

    // --- Policies ----------------------------------------------------------------------------

    fn parse_policy(call: &Call) -> std::result::Result<(String, PolicyDocument), AwsError> {
        let body: PolicyBody = call.json()?;
        let text = required(&body.policy_document, "policyDocument")?.to_string();
        let document = PolicyDocument::from_json(&text)
            .map_err(|e| AwsError::new(400, "MalformedPolicyException", e.to_string()))?;
        Ok((text, document))
    }

    fn create_policy(&self, name: &str, call: &Call) -> OpResult {
        let arn = self.arn(&format!("policy/{name}"));
        let (text, document) = Self::parse_policy(call)?;
        if self
            .hub
            .with_registry(|r| r.policies().policy(name).is_ok())
        {
            return Err(AwsError::exists(
                format!("policy {name} already exists"),
                name,
                Some(arn),
            ));
        }
        let version = self.hub.put_policy(name, &document)?;
        Ok(Reply::Json(json!({
            "policyName": name,
            "policyArn": arn,
            "policyDocument": text,
            "policyVersionId": version.to_string(),
        })))
    }

    fn create_policy_version(&self, name: &str, call: &Call) -> OpResult {
        let arn = self.arn(&format!("policy/{name}"));
        let (text, document) = Self::parse_policy(call)?;
        let info = self
            .hub
            .with_registry(|r| r.policies().policy(name))
            .map_err(|_| AwsError::not_found(format!("policy {name} does not exist")))?;
        if !call.flag("setAsDefault")?.unwrap_or(false) {
            return Err(AwsError::invalid(
                "the local hub makes every new policy version the default: call with \
                 setAsDefault=true",
            ));
        }
        if info.versions.len() >= crate::policy::MAX_POLICY_VERSIONS {
            return Err(AwsError::new(
                409,
                "VersionsLimitExceededException",
                format!(
                    "policy {name} has {} versions, the most allowed",
                    info.versions.len()
                ),
            ));
        }
        let version = self.hub.put_policy(name, &document)?;
        Ok(Reply::Json(json!({
            "policyArn": arn,
            "policyDocument": text,
            "policyVersionId": version.to_string(),
            "isDefaultVersion": true,
        })))
    }

    fn attach_policy(
        &self,
        st: &mut PlaneState,
        name: &str,
        call: &Call,
        attach: bool,
    ) -> OpResult {
        let body: TargetBody = call.json()?;
        let arn = required(&body.target, "target")?;
        let (kind, target_name) = self
            .name_in_arn(arn.trim(), &["cert", "thinggroup"])
            .map_err(|_| {
                AwsError::invalid(format!(
                    "target {arn:?}: the local hub attaches policies to certificates \
                 ({}) and thing groups ({})",
                    self.arn("cert/<id>"),
                    self.arn("thinggroup/<name>")
                ))
            })?;
        let target = if kind == "cert" {
            Target::Certificate(self.certificate_id(&target_name)?)
        } else {
            Target::ThingGroup(target_name)
        };
        if self
            .hub
            .with_registry(|r| r.policies().policy(name).is_err())
        {
            return Err(AwsError::not_found(format!("policy {name} does not exist")));
        }
        let hub_target = match &target {
            Target::Certificate(id) => {
                if !self.certificate_known(st, id) {
                    return Err(AwsError::not_found(format!(
                        "certificate {id} does not exist"
                    )));
                }
                AttachTarget::Certificate(id.clone())
            }
            Target::ThingGroup(group) => {
                if !self.group_exists(st, group) {
                    return Err(AwsError::not_found(format!(
                        "thing group {group} does not exist"
                    )));
                }
                AttachTarget::Group(group.clone())
            }
        };
        if attach {
            self.hub.attach_policy(name, hub_target)?;
        } else {
            match self.hub.detach_policy(name, &hub_target) {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Reply::Empty)
    }

    // --- Endpoint ----------------------------------------------------------------------------

    fn describe_endpoint(&self, call: &Call) -> OpResult {
        let kind = call
            .query
            .get("endpointType")
            .map_or("iot:Data", String::as_str);
        if !ENDPOINT_TYPES.contains(&kind) {
            return Err(AwsError::invalid(format!(
                "endpointType {kind:?} is not one of {}",
                ENDPOINT_TYPES.join(", ")
            )));
        }
        Ok(Reply::Json(
            json!({ "endpointAddress": self.endpoint_address }),
        ))
    }
}

/// The subject of a (verified) CSR, as a distinguished name to issue with; `CN=AWS IoT
/// Certificate` when it is empty.
fn csr_subject(der: &[u8]) -> std::result::Result<DistinguishedName, AwsError> {
    use x509_parser::prelude::FromDer as _;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| AwsError::invalid(format!("the certificate signing request: {e}")))?;
    let mut dn = DistinguishedName::new();
    for rdn in csr.certification_request_info.subject.iter() {
        for attr in rdn.iter() {
            let oid: Vec<u64> = attr
                .attr_type()
                .iter()
                .ok_or_else(|| AwsError::invalid("the CSR subject has an unreadable attribute"))?
                .collect();
            let value = attr.as_str().map_err(|e| {
                AwsError::invalid(format!("the CSR subject has a non-string attribute: {e}"))
            })?;
            dn.push(DnType::from_oid(&oid), value);
        }
    }
    if dn.iter().next().is_none() {
        dn.push(DnType::CommonName, GENERATED_SUBJECT);
    }
    Ok(dn)
}

#[cfg(test)]
mod tests;
