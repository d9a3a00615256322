//! AWS IoT Core (feature `aws`).
//!
//! [`AwsIot`] is one AWS IoT Core account in one region, as a device sees it: the account's
//! data endpoint, how to reach it, which Amazon roots to trust, and the topic design the
//! fleet uses. Build it with [`AwsIot::builder`] — from code, from the usual `AWS_*`
//! environment variables ([`AwsIotBuilder::from_env`]) or from typed string keys
//! ([`AwsConfigKey`]) — and hand [`AwsIot::dialect`] to a
//! [`DeviceClient`](crate::device::DeviceClient).
//!
//! # What works today
//!
//! The device plane over MQTT 3.1.1 with X.509 mutual TLS ([`AwsDialect`]):
//!
//! - **Transports**: port 8883 ([`AwsTransport::Mqtt`]) or port 443 with the ALPN protocol
//!   `x-amzn-mqtt-ca` ([`AwsTransport::MqttAlpn443`]), for networks that only let HTTPS out.
//! - **Identity**: the MQTT client id is the thing name (the device id), so AWS's thing policy
//!   variables (`${iot:Connection.Thing.ThingName}`) resolve.
//! - **Telemetry** on a topic built from a template, by default `dt/{thing}/telemetry`
//!   (AWS's recommended `dt/<application>/<context>/<thing>/<type>` design; set your own with
//!   [`AwsIotBuilder::telemetry_topic`]). MQTT 3.1.1 has no user properties, so telemetry
//!   properties are [`NotSupported`](crate::Error::NotSupported): put them in the payload or
//!   the topic.
//! - **Commands** arrive on `cmd/{thing}/<name>` (prefix configurable with
//!   [`AwsIotBuilder::command_topic`]).
//! - **The twin is a Device Shadow**: the classic shadow, or a named one
//!   ([`AwsIotBuilder::shadow_name`]). Get, report (optionally conditional on the version)
//!   and delta notifications, mapped onto fleetkit's
//!   [`TwinDocument`](crate::device::twin::TwinDocument); shadow errors become typed errors
//!   (409 → [`Conflict`](crate::Error::Conflict), 404 → [`NotFound`](crate::Error::NotFound),
//!   …).
//!
//! - **Jobs** ([`Jobs`]): pending, start-next, describe, update and `notify-next`.
//! - **MQTT over WebSocket** ([`AwsTransport::WebSocket`]): `wss://<endpoint>/mqtt` with a
//!   URL pre-signed with SigV4 from IAM credentials, signed anew for every connection
//!   attempt ([`crate::auth::sigv4::presign_websocket_url`]).
//! - **HTTPS publish** ([`HttpsPublisher`]): one message per request with the device
//!   certificate, on 8443 or on 443 with ALPN `x-amzn-http-ca`.
//! - **Fleet provisioning by claim** ([`AwsIot::claim_provisioner`]): CreateCertificateFromCsr
//!   or CreateKeysAndCertificate, then RegisterThing through a template.
//!
//! The control plane ([`AwsAdmin`], from [`AwsIot::admin`]): fleetkit's
//! [`FleetAdmin`](crate::backend::FleetAdmin) over AWS IoT's REST API, every request signed
//! with SigV4 ([`crate::auth::sigv4`]), throttling retried with jittered backoff, AWS's error
//! codes mapped onto fleetkit's errors — plus the AWS-only operations (DescribeEndpoint,
//! CreateKeysAndCertificate, CreateCertificateFromCsr, AttachThingPrincipal, …).
//!
//! All of it runs against the local hub's AWS dialect
//! ([`AwsHubDialect`](crate::local::dialect::aws::AwsHubDialect) and its
//! [control plane](crate::local::dialect::aws::rest)) with only the endpoints and the CA
//! changed, which is how fleetkit tests it.
//!
//! # What is coming
//!
//! - Certificate rotation over AWS's own APIs (CreateCertificateFromCsr on the operational
//!   connection).
//!
//! # Trust
//!
//! fleetkit bundles no Amazon root certificate: download `AmazonRootCA1.pem` from
//! <https://www.amazontrust.com/repository/AmazonRootCA1.pem> (the root of the `iot:Data-ATS`
//! endpoints) and pass it with [`AwsIotBuilder::root_ca`] / [`AwsIotBuilder::roots`], or name
//! the PEM file in `AWS_CA_BUNDLE`. [`build`](AwsIotBuilder::build) refuses to go on without
//! one.
//!
//! # Example
//!
//! ```no_run
//! use fleetkit::aws::{AwsIot, AwsTransport};
//! use fleetkit::device::{DeviceClient, Telemetry};
//! use fleetkit::identity::{DeviceId, X509Credential};
//! use fleetkit::pki::Certificate;
//!
//! # async fn run(credential: X509Credential) -> fleetkit::Result<()> {
//! let amazon_root = Certificate::from_pem(&std::fs::read_to_string("AmazonRootCA1.pem")?)?;
//! let aws = AwsIot::builder()
//!     .region("eu-west-1")
//!     // `aws iot describe-endpoint --endpoint-type iot:Data-ATS` gives the prefix.
//!     .account_endpoint("a3qjexampleffp")
//!     .transport(AwsTransport::MqttAlpn443)
//!     .root_ca(&amazon_root)
//!     .telemetry_topic("dt/greenhouse/{thing}/climate")
//!     .build()?;
//! assert_eq!(aws.endpoint(), "a3qjexampleffp-ats.iot.eu-west-1.amazonaws.com");
//!
//! let client = DeviceClient::builder(aws.dialect(), DeviceId::new("sensor-1")?)
//!     .credential(credential)
//!     .connect()
//!     .await?;
//! client.send_telemetry(Telemetry::new(r#"{"temp": 21.5}"#)).await?;
//! let version = client.twin().report(serde_json::json!({"firmware": "1.2.0"})).await?;
//! # let _ = version;
//! client.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod admin;
mod builder;
mod dialect;
mod https;
mod jobs;

use std::fmt;

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

pub use admin::{
    AwsAdmin, AwsCertificateStatus, CertificateDescription, CreatedCertificate, EndpointType,
    KeysAndCertificate, RegisteredCertificate, ThingGroup,
};
pub use builder::{AwsConfigKey, AwsIotBuilder, AwsTransport};
pub use dialect::{AwsDialect, shadow_topic_prefix, topics};
pub use https::HttpsPublisher;
pub use jobs::{ExecutionState, JobExecution, JobStatus, JobSummary, JobUpdate, Jobs, PendingJobs};

/// One AWS IoT Core account in one region, as its devices reach it: validated configuration
/// made by [`AwsIotBuilder::build`].
///
/// `Debug` shows the access key id but never the secret access key or the session token.
#[derive(Clone)]
pub struct AwsIot {
    region: String,
    endpoint: String,
    port: u16,
    transport: AwsTransport,
    server_name: String,
    roots: Vec<CertificateDer<'static>>,
    control_endpoint: String,
    access_key_id: Option<String>,
    secret_access_key: Option<Zeroizing<String>>,
    session_token: Option<Zeroizing<String>>,
    telemetry_topic: String,
    command_topic: String,
    shadow_name: Option<String>,
    jobs: bool,
    https_port: u16,
}

impl AwsIot {
    /// A builder with nothing set (see [`AwsIotBuilder`]).
    pub fn builder() -> AwsIotBuilder {
        AwsIotBuilder::new()
    }

    /// The region, e.g. `us-east-1`.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The data endpoint's host, e.g. `a3qjexampleffp-ats.iot.us-east-1.amazonaws.com`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The TCP port devices connect to (by default the transport's: 8883 or 443).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How devices connect.
    pub fn transport(&self) -> AwsTransport {
        self.transport
    }

    /// The name the server certificate must carry, sent as SNI (by default the endpoint host).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The trust anchors for the endpoint's certificate.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The control-plane base URL, by default `https://iot.<region>.amazonaws.com` (no
    /// trailing `/`).
    pub fn control_endpoint(&self) -> &str {
        &self.control_endpoint
    }

    /// The access key id for signing control-plane requests, if credentials were given.
    pub fn access_key_id(&self) -> Option<&str> {
        self.access_key_id.as_deref()
    }

    /// The secret access key, if credentials were given. A secret: keep it out of logs.
    pub fn secret_access_key(&self) -> Option<&str> {
        self.secret_access_key.as_ref().map(|s| s.as_str())
    }

    /// The session token of temporary credentials, if one was given. A secret: keep it out
    /// of logs.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(|s| s.as_str())
    }

    /// The telemetry topic template (`{thing}` stands for the thing name).
    pub fn telemetry_topic(&self) -> &str {
        &self.telemetry_topic
    }

    /// The command topic prefix template; commands arrive on `<prefix>/<name>`.
    pub fn command_topic(&self) -> &str {
        &self.command_topic
    }

    /// The named shadow that is the device's twin; `None` for the classic shadow.
    pub fn shadow_name(&self) -> Option<&str> {
        self.shadow_name.as_deref()
    }

    /// The configured AWS credentials (for SigV4), if any.
    pub fn credentials(&self) -> Option<crate::auth::sigv4::AwsCredentials> {
        let key = self.access_key_id.as_ref()?;
        let secret = self.secret_access_key.as_ref()?;
        let credentials = crate::auth::sigv4::AwsCredentials::new(key.as_str(), secret.as_str());
        Some(match &self.session_token {
            Some(token) => credentials.with_session_token(token.as_str()),
            None => credentials,
        })
    }

    /// Whether devices take part in AWS IoT Jobs ([`AwsIotBuilder::jobs`]).
    pub fn jobs_enabled(&self) -> bool {
        self.jobs
    }

    /// A fleet-provisioning-by-claim [`ClaimProvisioner`](crate::lifecycle::provision::ClaimProvisioner)
    /// for this endpoint: a device holding only the shared `claim` credential gets its own
    /// identity through provisioning template `template` (AWS's CreateCertificateFromCsr or
    /// CreateKeysAndCertificate, then RegisterThing).
    pub fn claim_provisioner(
        &self,
        claim: crate::identity::X509Credential,
        template: &str,
    ) -> crate::lifecycle::provision::ClaimProvisioner {
        use crate::device::Dialect as _;
        crate::lifecycle::provision::ClaimProvisioner::new(
            self.dialect().endpoint().clone(),
            claim,
            template,
        )
    }

    /// The device-plane dialect for a [`DeviceClient`](crate::device::DeviceClient).
    pub fn dialect(&self) -> AwsDialect {
        AwsDialect::new(self)
    }
}

impl fmt::Debug for AwsIot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsIot")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("server_name", &self.server_name)
            .field("roots", &self.roots.len())
            .field("control_endpoint", &self.control_endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| builder::REDACTED),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| builder::REDACTED),
            )
            .field("telemetry_topic", &self.telemetry_topic)
            .field("command_topic", &self.command_topic)
            .field("shadow_name", &self.shadow_name)
            .finish()
    }
}
