//! [`AwsIotBuilder`]: AWS IoT Core configuration from code, the environment or string keys,
//! validated once in [`build`](AwsIotBuilder::build).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use zeroize::Zeroizing;

use super::AwsIot;
use super::dialect::topics;
use crate::pki::Certificate;
use crate::{Error, Result};

/// What `Debug` prints instead of a secret.
pub(super) const REDACTED: &str = "<redacted>";

/// How a device reaches the data endpoint (PROTOCOLS.md §1.1): MQTT over X.509 mutual TLS,
/// or MQTT over WebSocket authenticated with a SigV4-presigned URL (IAM credentials).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AwsTransport {
    /// MQTT over TLS on port 8883, no ALPN.
    #[default]
    Mqtt,
    /// MQTT over TLS on port 443, offering the ALPN protocol `x-amzn-mqtt-ca` — for networks
    /// that only let HTTPS out.
    MqttAlpn443,
    /// MQTT over WebSocket (`wss://<endpoint>/mqtt`, port 443) authenticated by a URL
    /// pre-signed with SigV4 (service `iotdevicegateway`) from the configured AWS
    /// credentials, signed anew for every connection attempt; a session token is appended
    /// after signing, as AWS IoT requires. No client certificate.
    WebSocket,
}

impl AwsTransport {
    /// The ALPN protocol AWS requires on port 443 for MQTT with a client certificate.
    pub const ALPN_MQTT_CA: &'static [u8] = b"x-amzn-mqtt-ca";

    /// The port AWS serves this transport on: 8883 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            AwsTransport::Mqtt => 8883,
            AwsTransport::MqttAlpn443 | AwsTransport::WebSocket => 443,
        }
    }

    /// The ALPN protocol to offer, if any.
    pub fn alpn(self) -> Option<&'static [u8]> {
        match self {
            AwsTransport::Mqtt => None,
            AwsTransport::MqttAlpn443 => Some(Self::ALPN_MQTT_CA),
            AwsTransport::WebSocket => None,
        }
    }

    /// The name used in configuration: `mqtt` or `mqtt-alpn-443`.
    pub fn as_str(self) -> &'static str {
        match self {
            AwsTransport::Mqtt => "mqtt",
            AwsTransport::MqttAlpn443 => "mqtt-alpn-443",
            AwsTransport::WebSocket => "websocket",
        }
    }
}

impl fmt::Display for AwsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AwsTransport {
    type Err = Error;

    /// `mqtt`, or `mqtt-alpn-443` (also `mqtt-alpn`, `alpn`); ASCII case and `_`/`-` do not
    /// matter.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mqtt" => Ok(AwsTransport::Mqtt),
            "mqtt-alpn-443" | "mqtt-alpn" | "alpn" => Ok(AwsTransport::MqttAlpn443),
            "websocket" | "wss" | "websockets" => Ok(AwsTransport::WebSocket),
            _ => Err(Error::invalid(
                "transport",
                format!(
                    "unknown AWS IoT transport {s:?}; expected \"mqtt\", \"mqtt-alpn-443\" or \"websocket\""
                ),
            )),
        }
    }
}

/// A configuration key of [`AwsIotBuilder::with_config`], in the manner of `object_store`'s
/// `AmazonS3ConfigKey`.
///
/// Each key has a canonical name (its [`as_ref`](AsRef::as_ref) and `Display`), which in upper
/// case is the environment variable [`AwsIotBuilder::from_env`] reads, plus short aliases that
/// [`FromStr`] also accepts (ASCII case-insensitively):
///
/// | key | canonical name (env var in upper case) | aliases | setter |
/// |---|---|---|---|
/// | `Region` | `aws_region` | `region` | [`region`](AwsIotBuilder::region) |
/// | `DefaultRegion` | `aws_default_region` | `default_region` | used when no region is set |
/// | `AccessKeyId` | `aws_access_key_id` | `access_key_id` | [`access_key_id`](AwsIotBuilder::access_key_id) |
/// | `SecretAccessKey` | `aws_secret_access_key` | `secret_access_key` | [`secret_access_key`](AwsIotBuilder::secret_access_key) |
/// | `SessionToken` | `aws_session_token` | `session_token`, `token` | [`session_token`](AwsIotBuilder::session_token) |
/// | `Endpoint` | `aws_iot_endpoint` | `iot_endpoint`, `endpoint` | [`endpoint`](AwsIotBuilder::endpoint) |
/// | `ControlEndpoint` | `aws_endpoint_url_iot` | `endpoint_url_iot`, `control_endpoint` | [`control_endpoint`](AwsIotBuilder::control_endpoint) |
/// | `CaBundle` | `aws_ca_bundle` | `ca_bundle` | [`ca_bundle`](AwsIotBuilder::ca_bundle) |
/// | `Port` | `aws_iot_port` | `port` | [`port`](AwsIotBuilder::port) |
/// | `Transport` | `aws_iot_transport` | `transport` | [`transport`](AwsIotBuilder::transport) |
/// | `ServerName` | `aws_iot_server_name` | `server_name` | [`server_name`](AwsIotBuilder::server_name) |
/// | `ShadowName` | `aws_iot_shadow_name` | `shadow_name` | [`shadow_name`](AwsIotBuilder::shadow_name) |
/// | `TelemetryTopic` | `aws_iot_telemetry_topic` | `telemetry_topic` | [`telemetry_topic`](AwsIotBuilder::telemetry_topic) |
/// | `CommandTopic` | `aws_iot_command_topic` | `command_topic` | [`command_topic`](AwsIotBuilder::command_topic) |
///
/// `AWS_REGION`, `AWS_DEFAULT_REGION`, the three credential variables, `AWS_CA_BUNDLE` and
/// `AWS_ENDPOINT_URL_IOT` are the AWS SDKs' own; the `AWS_IOT_*` ones are fleetkit's.
///
/// ```
/// use fleetkit::aws::AwsConfigKey;
///
/// let key: AwsConfigKey = "region".parse()?;
/// assert_eq!(key, AwsConfigKey::Region);
/// assert_eq!(key.as_ref(), "aws_region");
/// assert_eq!(AwsConfigKey::Endpoint.env_var(), "AWS_IOT_ENDPOINT");
/// assert!("colour".parse::<AwsConfigKey>().is_err());
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AwsConfigKey {
    /// The region (`AWS_REGION`).
    Region,
    /// The region to use when [`Region`](Self::Region) is not set (`AWS_DEFAULT_REGION`).
    DefaultRegion,
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    AccessKeyId,
    /// The secret access key (`AWS_SECRET_ACCESS_KEY`).
    SecretAccessKey,
    /// The session token of temporary credentials (`AWS_SESSION_TOKEN`).
    SessionToken,
    /// The data endpoint's host (`AWS_IOT_ENDPOINT`).
    Endpoint,
    /// The control-plane URL (`AWS_ENDPOINT_URL_IOT`, the AWS SDKs' per-service override).
    ControlEndpoint,
    /// A PEM file of trust anchors for the endpoint (`AWS_CA_BUNDLE`).
    CaBundle,
    /// The data endpoint's port (`AWS_IOT_PORT`).
    Port,
    /// The transport, `mqtt` or `mqtt-alpn-443` (`AWS_IOT_TRANSPORT`).
    Transport,
    /// The TLS server name (SNI) (`AWS_IOT_SERVER_NAME`).
    ServerName,
    /// The named shadow that is the twin (`AWS_IOT_SHADOW_NAME`).
    ShadowName,
    /// The telemetry topic template (`AWS_IOT_TELEMETRY_TOPIC`).
    TelemetryTopic,
    /// The command topic prefix template (`AWS_IOT_COMMAND_TOPIC`).
    CommandTopic,
}

impl AwsConfigKey {
    /// Every key.
    pub const ALL: &'static [AwsConfigKey] = &[
        AwsConfigKey::Region,
        AwsConfigKey::DefaultRegion,
        AwsConfigKey::AccessKeyId,
        AwsConfigKey::SecretAccessKey,
        AwsConfigKey::SessionToken,
        AwsConfigKey::Endpoint,
        AwsConfigKey::ControlEndpoint,
        AwsConfigKey::CaBundle,
        AwsConfigKey::Port,
        AwsConfigKey::Transport,
        AwsConfigKey::ServerName,
        AwsConfigKey::ShadowName,
        AwsConfigKey::TelemetryTopic,
        AwsConfigKey::CommandTopic,
    ];

    /// The environment variable [`AwsIotBuilder::from_env`] reads for this key.
    pub fn env_var(self) -> String {
        self.as_ref().to_ascii_uppercase()
    }

    /// Whether the value is a secret (never printed).
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            AwsConfigKey::SecretAccessKey | AwsConfigKey::SessionToken
        )
    }
}

impl AsRef<str> for AwsConfigKey {
    fn as_ref(&self) -> &str {
        match self {
            AwsConfigKey::Region => "aws_region",
            AwsConfigKey::DefaultRegion => "aws_default_region",
            AwsConfigKey::AccessKeyId => "aws_access_key_id",
            AwsConfigKey::SecretAccessKey => "aws_secret_access_key",
            AwsConfigKey::SessionToken => "aws_session_token",
            AwsConfigKey::Endpoint => "aws_iot_endpoint",
            AwsConfigKey::ControlEndpoint => "aws_endpoint_url_iot",
            AwsConfigKey::CaBundle => "aws_ca_bundle",
            AwsConfigKey::Port => "aws_iot_port",
            AwsConfigKey::Transport => "aws_iot_transport",
            AwsConfigKey::ServerName => "aws_iot_server_name",
            AwsConfigKey::ShadowName => "aws_iot_shadow_name",
            AwsConfigKey::TelemetryTopic => "aws_iot_telemetry_topic",
            AwsConfigKey::CommandTopic => "aws_iot_command_topic",
        }
    }
}

impl fmt::Display for AwsConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_ref())
    }
}

impl FromStr for AwsConfigKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "aws_region" | "region" => AwsConfigKey::Region,
            "aws_default_region" | "default_region" => AwsConfigKey::DefaultRegion,
            "aws_access_key_id" | "access_key_id" => AwsConfigKey::AccessKeyId,
            "aws_secret_access_key" | "secret_access_key" => AwsConfigKey::SecretAccessKey,
            "aws_session_token" | "session_token" | "token" => AwsConfigKey::SessionToken,
            "aws_iot_endpoint" | "iot_endpoint" | "endpoint" => AwsConfigKey::Endpoint,
            "aws_endpoint_url_iot" | "endpoint_url_iot" | "control_endpoint" => {
                AwsConfigKey::ControlEndpoint
            }
            "aws_ca_bundle" | "ca_bundle" => AwsConfigKey::CaBundle,
            "aws_iot_port" | "port" => AwsConfigKey::Port,
            "aws_iot_transport" | "transport" => AwsConfigKey::Transport,
            "aws_iot_server_name" | "server_name" => AwsConfigKey::ServerName,
            "aws_iot_shadow_name" | "shadow_name" => AwsConfigKey::ShadowName,
            "aws_iot_telemetry_topic" | "telemetry_topic" => AwsConfigKey::TelemetryTopic,
            "aws_iot_command_topic" | "command_topic" => AwsConfigKey::CommandTopic,
            _ => {
                return Err(Error::invalid(
                    "config key",
                    format!("{s:?} is not an AWS IoT configuration key"),
                ));
            }
        })
    }
}

/// The data endpoint as given: a host, or an account prefix completed with the region at
/// build time.
#[derive(Clone, Debug)]
enum EndpointSetting {
    Host(String),
    AccountPrefix(String),
}

/// Builds an [`AwsIot`]: set what you know, then [`build`](Self::build) checks it all at
/// once and fails with [`Error::InvalidInput`] naming the first setting that is wrong.
///
/// Required: a region, the data endpoint, and trust anchors for it (fleetkit bundles no
/// Amazon root; use `AmazonRootCA1.pem`). Everything else has a default.
///
/// ```
/// use fleetkit::aws::{AwsIot, AwsTransport};
/// # let root = fleetkit::pki::CertificateAuthority::new_root(&fleetkit::pki::CaOptions::new("r"))?;
/// # let amazon_root = root.certificate();
///
/// let aws = AwsIot::builder()
///     .region("us-west-2")
///     .account_endpoint("a3qjexampleffp")
///     .transport(AwsTransport::MqttAlpn443)
///     .root_ca(amazon_root)
///     .shadow_name("config")
///     .build()?;
/// assert_eq!(aws.endpoint(), "a3qjexampleffp-ats.iot.us-west-2.amazonaws.com");
/// assert_eq!(aws.port(), 443);
/// assert_eq!(aws.control_endpoint(), "https://iot.us-west-2.amazonaws.com");
///
/// // Against a local hub: an IP address to connect to, the name its certificate carries.
/// let local = AwsIot::builder()
///     .region("us-east-1")
///     .endpoint("127.0.0.1")
///     .port(18883)
///     .server_name("localhost")
///     .root_ca(amazon_root)
///     .build()?;
/// assert_eq!(local.server_name(), "localhost");
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct AwsIotBuilder {
    region: Option<String>,
    default_region: Option<String>,
    endpoint: Option<EndpointSetting>,
    port: Option<u16>,
    transport: AwsTransport,
    server_name: Option<String>,
    roots: Vec<CertificateDer<'static>>,
    ca_bundle: Option<PathBuf>,
    control_endpoint: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<Zeroizing<String>>,
    session_token: Option<Zeroizing<String>>,
    telemetry_topic: Option<String>,
    command_topic: Option<String>,
    shadow_name: Option<String>,
    /// Whether the device stays out of AWS IoT Jobs (its subscriptions are left out).
    jobs_off: bool,
    /// The HTTPS publish port when not on 443 with ALPN (default 8443).
    https_port: Option<u16>,
    /// The first value [`with_config`](Self::with_config) could not parse: (field, reason),
    /// reported by [`build`](Self::build).
    config_error: Option<(String, String)>,
}

impl fmt::Debug for AwsIotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsIotBuilder")
            .field("region", &self.region)
            .field("default_region", &self.default_region)
            .field("endpoint", &self.endpoint)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("server_name", &self.server_name)
            .field("roots", &self.roots.len())
            .field("ca_bundle", &self.ca_bundle)
            .field("control_endpoint", &self.control_endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| REDACTED),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| REDACTED),
            )
            .field("telemetry_topic", &self.telemetry_topic)
            .field("command_topic", &self.command_topic)
            .field("shadow_name", &self.shadow_name)
            .field("config_error", &self.config_error)
            .finish()
    }
}

impl AwsIotBuilder {
    /// A builder with nothing set.
    pub fn new() -> Self {
        AwsIotBuilder::default()
    }

    /// A builder filled from the process environment: every variable of
    /// [`AwsConfigKey`]'s table that is set (`AWS_REGION`, falling back to
    /// `AWS_DEFAULT_REGION`; `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`; `AWS_IOT_ENDPOINT`; `AWS_ENDPOINT_URL_IOT`; `AWS_CA_BUNDLE`; the
    /// other `AWS_IOT_*`). Variables that are empty or not UTF-8 count as unset. Setters
    /// called afterwards override what the environment said.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// [`from_env`](Self::from_env) over the given `(name, value)` pairs instead of the
    /// process environment (for tests, or configuration held elsewhere). Names are matched
    /// ASCII case-insensitively against the canonical key names (`AWS_REGION`, …); aliases
    /// and unknown names are ignored, and so are empty values.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut builder = AwsIotBuilder::new();
        for (name, value) in vars {
            let name = name.as_ref();
            let Ok(key) = name.parse::<AwsConfigKey>() else {
                continue;
            };
            // Only the canonical names: `PORT` or `TOKEN` in the environment are not ours.
            if !key.as_ref().eq_ignore_ascii_case(name) {
                continue;
            }
            let value = value.into();
            if value.is_empty() {
                continue;
            }
            builder = builder.with_config(key, value);
        }
        builder
    }

    /// Sets `key` to `value`, parsed as the matching setter would take it. A value that does
    /// not parse (a port that is not a number, an unknown transport) is reported by
    /// [`build`](Self::build), naming the key.
    pub fn with_config(mut self, key: AwsConfigKey, value: impl Into<String>) -> Self {
        let value = value.into();
        match key {
            AwsConfigKey::Region => self.region = Some(value),
            AwsConfigKey::DefaultRegion => self.default_region = Some(value),
            AwsConfigKey::AccessKeyId => self.access_key_id = Some(value),
            AwsConfigKey::SecretAccessKey => self.secret_access_key = Some(Zeroizing::new(value)),
            AwsConfigKey::SessionToken => self.session_token = Some(Zeroizing::new(value)),
            AwsConfigKey::Endpoint => self.endpoint = Some(EndpointSetting::Host(value)),
            AwsConfigKey::ControlEndpoint => self.control_endpoint = Some(value),
            AwsConfigKey::CaBundle => self.ca_bundle = Some(PathBuf::from(value)),
            AwsConfigKey::Port => match value.trim().parse::<u16>() {
                Ok(port) => self.port = Some(port),
                Err(_) => self.config_failed(key, format!("{value:?} is not a port number")),
            },
            AwsConfigKey::Transport => match value.parse::<AwsTransport>() {
                Ok(transport) => self.transport = transport,
                Err(_) => self.config_failed(
                    key,
                    format!("{value:?} is not a transport; expected \"mqtt\" or \"mqtt-alpn-443\""),
                ),
            },
            AwsConfigKey::ServerName => self.server_name = Some(value),
            AwsConfigKey::ShadowName => self.shadow_name = Some(value),
            AwsConfigKey::TelemetryTopic => self.telemetry_topic = Some(value),
            AwsConfigKey::CommandTopic => self.command_topic = Some(value),
        }
        self
    }

    fn config_failed(&mut self, key: AwsConfigKey, reason: String) {
        if self.config_error.is_none() {
            self.config_error = Some((key.as_ref().to_string(), reason));
        }
    }

    /// The region, e.g. `us-east-1` (`AWS_REGION`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The data endpoint's host, as `aws iot describe-endpoint --endpoint-type iot:Data-ATS`
    /// prints it: `<prefix>-ats.iot.<region>.amazonaws.com` (`AWS_IOT_ENDPOINT`). A host name
    /// or an IP address; no scheme, no port (see [`port`](Self::port)).
    pub fn endpoint(mut self, host: impl Into<String>) -> Self {
        self.endpoint = Some(EndpointSetting::Host(host.into()));
        self
    }

    /// The data endpoint of the account whose endpoint prefix is `prefix` (the part before
    /// `-ats.` in what `describe-endpoint` prints): `<prefix>-ats.iot.<region>.amazonaws.com`,
    /// completed with the region when the builder is built (the domain is `amazonaws.com.cn`
    /// in the `cn-` regions). When in doubt, pass `describe-endpoint`'s answer to
    /// [`endpoint`](Self::endpoint) instead.
    pub fn account_endpoint(mut self, prefix: impl Into<String>) -> Self {
        self.endpoint = Some(EndpointSetting::AccountPrefix(prefix.into()));
        self
    }

    /// The TCP port; by default the transport's (8883, or 443 for
    /// [`MqttAlpn443`](AwsTransport::MqttAlpn443)). Set it to reach a local hub.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// How devices connect (default [`AwsTransport::Mqtt`]).
    pub fn transport(mut self, transport: AwsTransport) -> Self {
        self.transport = transport;
        self
    }

    /// The name the server certificate must carry, sent as SNI; by default the endpoint host.
    /// Useful against a local hub reached as `127.0.0.1` whose certificate says `localhost`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Adds trust anchors for the endpoint's certificate (Amazon's roots: `AmazonRootCA1.pem`
    /// for the `iot:Data-ATS` endpoints).
    pub fn roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots.extend(roots);
        self
    }

    /// Adds one trust anchor for the endpoint's certificate.
    pub fn root_ca(mut self, root: &Certificate) -> Self {
        self.roots.push(root.der().clone());
        self
    }

    /// A PEM file of trust anchors, read by [`build`](Self::build) and added to the others
    /// (`AWS_CA_BUNDLE`).
    pub fn ca_bundle(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_bundle = Some(path.into());
        self
    }

    /// The access key id for the control plane (`AWS_ACCESS_KEY_ID`). Devices on mutual TLS
    /// need no AWS credentials.
    pub fn access_key_id(mut self, access_key_id: impl Into<String>) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self
    }

    /// The secret access key (`AWS_SECRET_ACCESS_KEY`), held in memory that is zeroed on drop
    /// and never printed.
    pub fn secret_access_key(mut self, secret: impl Into<String>) -> Self {
        self.secret_access_key = Some(Zeroizing::new(secret.into()));
        self
    }

    /// The session token of temporary credentials (`AWS_SESSION_TOKEN`), zeroed on drop and
    /// never printed.
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Zeroizing::new(token.into()));
        self
    }

    /// The control plane's base URL (`AWS_ENDPOINT_URL_IOT`); by default
    /// `https://iot.<region>.amazonaws.com`.
    pub fn control_endpoint(mut self, url: impl Into<String>) -> Self {
        self.control_endpoint = Some(url.into());
        self
    }

    /// The telemetry topic template; `{thing}` stands for the thing name. By default
    /// `dt/{thing}/telemetry`, after AWS's recommended design
    /// `dt/<application>/<context>/<thing>/<type>` — e.g. `dt/greenhouse/{thing}/climate`.
    /// A Basic Ingest topic (`$aws/rules/<rule>/…`) is allowed.
    pub fn telemetry_topic(mut self, template: impl Into<String>) -> Self {
        self.telemetry_topic = Some(template.into());
        self
    }

    /// The command topic prefix template; commands arrive on `<prefix>/<name>`. By default
    /// `cmd/{thing}`.
    pub fn command_topic(mut self, template: impl Into<String>) -> Self {
        self.command_topic = Some(template.into());
        self
    }

    /// Makes the named shadow `name` the device's twin instead of the classic shadow.
    pub fn shadow_name(mut self, name: impl Into<String>) -> Self {
        self.shadow_name = Some(name.into());
        self
    }

    /// Makes the classic (unnamed) shadow the device's twin (the default).
    pub fn classic_shadow(mut self) -> Self {
        self.shadow_name = None;
        self
    }

    /// The port of the HTTPS publish endpoint when the transport is not
    /// [`AwsTransport::MqttAlpn443`] (default 8443; with ALPN, HTTPS shares the MQTT port and
    /// is selected by ALPN `x-amzn-http-ca`).
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = Some(port);
        self
    }

    /// Whether the device takes part in AWS IoT Jobs (default `true`): its client subscribes
    /// to the thing's jobs topics and [`Jobs`](super::Jobs) works. Off, a device whose policy
    /// does not allow the jobs topics saves five subscriptions.
    pub fn jobs(mut self, enabled: bool) -> Self {
        self.jobs_off = !enabled;
        self
    }

    /// Checks everything and builds the [`AwsIot`].
    ///
    /// Fails with [`Error::InvalidInput`] whose `field` names the setting: a value
    /// [`with_config`](Self::with_config) could not parse; `region` missing or not like
    /// `us-east-1`; `endpoint` missing, empty, or with a scheme or a port; `port` 0;
    /// `server_name` not a DNS name or IP address; `roots` empty or not certificates;
    /// `credentials` incomplete; `control_endpoint` not an `http(s)://` URL; `shadow_name`
    /// not 1–64 of `[$a-zA-Z0-9:_-]`; a topic template without `{thing}`, with wildcards,
    /// empty levels, more than 7 slashes or more than 256 bytes for a 128-character thing
    /// name, or telemetry under the command prefix. Fails with [`Error::Io`] if the CA bundle
    /// cannot be read.
    pub fn build(self) -> Result<AwsIot> {
        if let Some((field, reason)) = self.config_error {
            return Err(Error::invalid(field, reason));
        }
        let region = self.region.or(self.default_region).ok_or_else(|| {
            Error::invalid(
                "region",
                "not set: set AWS_REGION (or AWS_DEFAULT_REGION) or call region()",
            )
        })?;
        check_region(&region)?;

        let endpoint = match self.endpoint {
            None => {
                return Err(Error::invalid(
                    "endpoint",
                    "not set: set AWS_IOT_ENDPOINT or call endpoint() with the host \
                     `aws iot describe-endpoint --endpoint-type iot:Data-ATS` prints, or \
                     account_endpoint() with its prefix",
                ));
            }
            Some(EndpointSetting::Host(host)) => host,
            Some(EndpointSetting::AccountPrefix(prefix)) => {
                check_account_prefix(&prefix)?;
                format!("{prefix}-ats.iot.{region}.{}", dns_suffix(&region))
            }
        };
        check_host(&endpoint)?;

        let port = self.port.unwrap_or(self.transport.default_port());
        if port == 0 {
            return Err(Error::invalid("port", "must not be 0"));
        }

        let server_name = self.server_name.unwrap_or_else(|| endpoint.clone());
        if ServerName::try_from(server_name.as_str()).is_err() {
            return Err(Error::invalid(
                "server_name",
                format!("{server_name:?} is neither a DNS name nor an IP address"),
            ));
        }

        let mut roots = self.roots;
        if let Some(path) = &self.ca_bundle {
            roots.extend(read_ca_bundle(path)?);
        }
        check_roots(&roots)?;

        let control_endpoint = match self.control_endpoint {
            Some(url) => check_control_endpoint(&url)?,
            None => format!("https://iot.{region}.{}", dns_suffix(&region)),
        };

        check_credentials(
            self.access_key_id.as_deref(),
            self.secret_access_key.is_some(),
            self.session_token.is_some(),
        )?;
        if self.transport == AwsTransport::WebSocket && self.access_key_id.is_none() {
            return Err(Error::invalid(
                "credentials",
                "the websocket transport signs its URL with AWS credentials: set an access key \
                 id and secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
            ));
        }

        if let Some(name) = &self.shadow_name {
            check_shadow_name(name)?;
        }
        let telemetry_topic = self
            .telemetry_topic
            .unwrap_or_else(|| topics::DEFAULT_TELEMETRY_TOPIC.to_string());
        let command_topic = self
            .command_topic
            .unwrap_or_else(|| topics::DEFAULT_COMMAND_TOPIC.to_string());
        check_telemetry_template(&telemetry_topic)?;
        check_command_template(&command_topic)?;
        check_no_overlap(&telemetry_topic, &command_topic)?;

        Ok(AwsIot {
            region,
            endpoint,
            port,
            transport: self.transport,
            server_name,
            roots,
            control_endpoint,
            access_key_id: self.access_key_id,
            secret_access_key: self.secret_access_key,
            session_token: self.session_token,
            telemetry_topic,
            command_topic,
            shadow_name: self.shadow_name,
            jobs: !self.jobs_off,
            https_port: self.https_port.unwrap_or(8443),
        })
    }
}

/// The DNS suffix of `region`'s partition.
fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// `us-east-1`, `us-gov-west-1`, `ap-southeast-2`: lower-case words joined by `-`, ending in
/// a number.
fn check_region(region: &str) -> Result<()> {
    let parts: Vec<&str> = region.split('-').collect();
    let (number, words) = parts.split_last().expect("split yields one part at least");
    let ok = region.len() <= 32
        && words.len() >= 2
        && words[0].len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=3).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "region",
            format!(
                "{region:?} is not an AWS region name (lower-case words and a number, like \
                 \"us-east-1\")"
            ),
        ))
    }
}

fn check_account_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 63 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::invalid(
            "endpoint",
            format!(
                "{prefix:?} is not an account endpoint prefix: give the letters and digits \
                 before \"-ats.\" in the host `aws iot describe-endpoint --endpoint-type \
                 iot:Data-ATS` prints, or pass the whole host to endpoint()"
            ),
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<()> {
    let fail = |reason: String| Err(Error::invalid("endpoint", reason));
    if host.is_empty() {
        return fail("is empty".into());
    }
    if host.contains("://") {
        return fail(format!(
            "{host:?} has a scheme: give the bare host, e.g. \
             \"<prefix>-ats.iot.<region>.amazonaws.com\""
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.contains(':') {
        return fail(format!(
            "{host:?} has a port: give the bare host and set the port with port()"
        ));
    }
    let dns_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !dns_chars || ServerName::try_from(host).is_err() {
        return fail(format!("{host:?} is neither a host name nor an IP address"));
    }
    Ok(())
}

fn read_ca_bundle(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(
                "ca_bundle",
                format!("{}: not a PEM certificate bundle: {e}", path.display()),
            )
        })?;
    if roots.is_empty() {
        return Err(Error::invalid(
            "ca_bundle",
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(roots)
}

fn check_roots(roots: &[CertificateDer<'static>]) -> Result<()> {
    if roots.is_empty() {
        return Err(Error::invalid(
            "roots",
            "no trust anchor for the AWS IoT endpoint: fleetkit bundles no Amazon root \
             certificate. Download AmazonRootCA1.pem \
             (https://www.amazontrust.com/repository/AmazonRootCA1.pem) and pass it with \
             root_ca()/roots(), or name it in AWS_CA_BUNDLE",
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
    Ok(())
}

fn check_control_endpoint(url: &str) -> Result<String> {
    let fail = |reason: &str| {
        Err(Error::invalid(
            "control_endpoint",
            format!("{url:?} {reason}"),
        ))
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return fail("is not a URL (expected e.g. \"https://iot.us-east-1.amazonaws.com\")");
    };
    if !matches!(parsed.scheme(), "https" | "http") {
        return fail("is not an http(s) URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return fail("has no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return fail("must not have a query or fragment");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return fail("must not carry user information");
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn check_credentials(access_key_id: Option<&str>, secret: bool, token: bool) -> Result<()> {
    let fail = |reason: &str| Err(Error::invalid("credentials", reason));
    match (access_key_id, secret) {
        (Some(""), _) => fail("the access key id is empty"),
        (Some(_), false) => fail("an access key id without a secret access key"),
        (None, true) => fail("a secret access key without an access key id"),
        (None, false) if token => fail("a session token without an access key id and secret"),
        _ => Ok(()),
    }
}

/// `[$a-zA-Z0-9:_-]{1,64}` (PROTOCOLS.md §1.5).
fn check_shadow_name(name: &str) -> Result<()> {
    let ok = (1..=topics::MAX_SHADOW_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b':' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "shadow_name",
            format!("{name:?} is not a shadow name (1-64 of a-z A-Z 0-9 $ : _ -)"),
        ))
    }
}

/// The longest thing name, substituted into templates to check their worst case.
fn longest_thing() -> String {
    "x".repeat(topics::MAX_THING_NAME_BYTES)
}

/// Checks what telemetry and command templates share: `{thing}` present, no other braces, no
/// wildcards or NUL, no empty level. `field` names the setting.
fn check_template_common(field: &str, template: &str) -> Result<()> {
    let fail = |reason: String| Err(Error::invalid(field, reason));
    if !template.contains(topics::THING) {
        return fail(format!(
            "{template:?} does not contain {{thing}} (each device needs its own topic)"
        ));
    }
    let rest = template.replace(topics::THING, "");
    if rest.contains(['{', '}']) {
        return fail(format!(
            "{template:?}: {{thing}} is the only placeholder there is"
        ));
    }
    if template.contains(['+', '#', '\0']) {
        return fail(format!(
            "{template:?}: a topic must not contain '+', '#' or NUL"
        ));
    }
    if template.split('/').any(str::is_empty) {
        return fail(format!(
            "{template:?} has an empty level (a leading, trailing or double '/')"
        ));
    }
    Ok(())
}

fn check_depth_and_length(
    field: &str,
    template: &str,
    extra_levels: usize,
    extra_bytes: usize,
) -> Result<()> {
    let topic = template.replace(topics::THING, &longest_thing());
    // AWS does not count a Basic Ingest prefix (`$aws/rules/<rule>/`) towards the depth.
    let counted = match topics::basic_ingest_rule(&topic) {
        Some(rule) => &topic[topics::BASIC_INGEST_PREFIX.len() + rule.len() + 1..],
        None => topic.as_str(),
    };
    let slashes = counted.matches('/').count() + extra_levels;
    if slashes > topics::MAX_TOPIC_SLASHES {
        return Err(Error::invalid(
            field,
            format!(
                "{template:?} has {slashes} '/' where AWS allows {} (8 levels)",
                topics::MAX_TOPIC_SLASHES
            ),
        ));
    }
    let len = topic.len() + extra_bytes;
    if len > topics::MAX_TOPIC_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "{template:?} is {len} bytes long for a 128-character thing name; AWS allows {}",
                topics::MAX_TOPIC_BYTES
            ),
        ));
    }
    Ok(())
}

fn check_telemetry_template(template: &str) -> Result<()> {
    const FIELD: &str = "telemetry_topic";
    check_template_common(FIELD, template)?;
    if template.starts_with('$') && topics::basic_ingest_rule(template).is_none() {
        return Err(Error::invalid(
            FIELD,
            format!(
                "{template:?}: topics starting with '$' are reserved; the only one for \
                 telemetry is Basic Ingest, \"$aws/rules/<rule>/…\""
            ),
        ));
    }
    check_depth_and_length(FIELD, template, 0, 0)
}

fn check_command_template(template: &str) -> Result<()> {
    const FIELD: &str = "command_topic";
    check_template_common(FIELD, template)?;
    if template.starts_with('$') {
        return Err(Error::invalid(
            FIELD,
            format!("{template:?}: topics starting with '$' are reserved"),
        ));
    }
    // Commands arrive one level below the prefix; the subscription is `<prefix>/#`.
    check_depth_and_length(FIELD, template, 1, 2)
}

/// A device must not receive its own telemetry as commands.
fn check_no_overlap(telemetry: &str, command: &str) -> Result<()> {
    let thing = "thing";
    let telemetry = telemetry.replace(topics::THING, thing);
    let command = format!("{}/", command.replace(topics::THING, thing));
    if telemetry.starts_with(&command) {
        return Err(Error::invalid(
            "telemetry_topic",
            format!(
                "{telemetry:?} is under the command prefix {command:?}: the device would \
                 receive its own telemetry as commands"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
