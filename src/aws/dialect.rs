//! The AWS IoT Core device plane: [`AwsDialect`], MQTT 3.1.1 over X.509 mutual TLS, and the
//! [`topics`] it uses.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::AwsIot;
use crate::device::twin::{DesiredChange, TwinDocument, TwinLimits};
use crate::device::{
    Capabilities, Command, DeviceLimits, Dialect, Endpoint, Feature, Inbound, MethodRequest,
    MethodResponse, Outbound,
};
use crate::identity::{DeviceId, IdRule};
use crate::{Error, Result};

/// AWS IoT Core's topic names and limits (shared by the device dialect and the hub's AWS
/// services).
pub mod topics {
    /// The placeholder for the thing name in topic templates.
    pub const THING: &str = "{thing}";
    /// The default telemetry topic template.
    pub const DEFAULT_TELEMETRY_TOPIC: &str = "dt/{thing}/telemetry";
    /// The default command topic prefix template.
    pub const DEFAULT_COMMAND_TOPIC: &str = "cmd/{thing}";
    /// Prefix of every per-thing reserved topic.
    pub const THINGS_PREFIX: &str = "$aws/things/";
    /// Prefix of Basic Ingest topics (`$aws/rules/<rule>/…`).
    pub const BASIC_INGEST_PREFIX: &str = "$aws/rules/";
    /// The most `/` a topic may have (8 levels), not counting a Basic Ingest prefix
    /// (PROTOCOLS.md §1.4).
    pub const MAX_TOPIC_SLASHES: usize = 7;
    /// The longest topic, in bytes (PROTOCOLS.md §1.4).
    pub const MAX_TOPIC_BYTES: usize = 256;
    /// The longest thing name, in bytes (PROTOCOLS.md §1.5).
    pub const MAX_THING_NAME_BYTES: usize = 128;
    /// The longest shadow name, in bytes (PROTOCOLS.md §1.5).
    pub const MAX_SHADOW_NAME_BYTES: usize = 64;
    /// The longest `clientToken`, in bytes (PROTOCOLS.md §1.7).
    pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

    /// `template` with every `{thing}` replaced by `thing`.
    pub fn expand(template: &str, thing: &str) -> String {
        template.replace(THING, thing)
    }

    /// `$aws/things/<thing>/shadow` for the classic shadow,
    /// `$aws/things/<thing>/shadow/name/<name>` for a named one.
    pub fn shadow_prefix(thing: &str, name: Option<&str>) -> String {
        match name {
            None => format!("{THINGS_PREFIX}{thing}/shadow"),
            Some(name) => format!("{THINGS_PREFIX}{thing}/shadow/name/{name}"),
        }
    }

    /// `<shadow prefix>/<op>`, e.g. `$aws/things/t/shadow/update/delta`.
    pub fn shadow(thing: &str, name: Option<&str>, op: ShadowOp) -> String {
        format!("{}/{}", shadow_prefix(thing, name), op.suffix())
    }

    /// The rule name of a Basic Ingest topic with levels after the rule
    /// (`$aws/rules/<rule>/…`); `None` for anything else. Rule names are
    /// `[a-zA-Z0-9_]+`.
    pub fn basic_ingest_rule(topic: &str) -> Option<&str> {
        let (rule, _) = topic.strip_prefix(BASIC_INGEST_PREFIX)?.split_once('/')?;
        let valid =
            !rule.is_empty() && rule.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        valid.then_some(rule)
    }

    /// A Device Shadow operation: the topic suffix after the shadow prefix.
    #[non_exhaustive]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ShadowOp {
        /// `get`: a request for the shadow.
        Get,
        /// `get/accepted`: the shadow.
        GetAccepted,
        /// `get/rejected`: an error document.
        GetRejected,
        /// `update`: a request to change the shadow.
        Update,
        /// `update/accepted`: the accepted update.
        UpdateAccepted,
        /// `update/rejected`: an error document.
        UpdateRejected,
        /// `update/delta`: desired differs from reported.
        UpdateDelta,
        /// `update/documents`: the shadow before and after an update.
        UpdateDocuments,
        /// `delete`: a request to delete the shadow.
        Delete,
        /// `delete/accepted`: the shadow was deleted.
        DeleteAccepted,
        /// `delete/rejected`: an error document.
        DeleteRejected,
    }

    impl ShadowOp {
        /// Every operation.
        pub const ALL: &'static [ShadowOp] = &[
            ShadowOp::Get,
            ShadowOp::GetAccepted,
            ShadowOp::GetRejected,
            ShadowOp::Update,
            ShadowOp::UpdateAccepted,
            ShadowOp::UpdateRejected,
            ShadowOp::UpdateDelta,
            ShadowOp::UpdateDocuments,
            ShadowOp::Delete,
            ShadowOp::DeleteAccepted,
            ShadowOp::DeleteRejected,
        ];

        /// The topic suffix, e.g. `update/delta`.
        pub fn suffix(self) -> &'static str {
            match self {
                ShadowOp::Get => "get",
                ShadowOp::GetAccepted => "get/accepted",
                ShadowOp::GetRejected => "get/rejected",
                ShadowOp::Update => "update",
                ShadowOp::UpdateAccepted => "update/accepted",
                ShadowOp::UpdateRejected => "update/rejected",
                ShadowOp::UpdateDelta => "update/delta",
                ShadowOp::UpdateDocuments => "update/documents",
                ShadowOp::Delete => "delete",
                ShadowOp::DeleteAccepted => "delete/accepted",
                ShadowOp::DeleteRejected => "delete/rejected",
            }
        }

        /// The operation whose suffix is `suffix`.
        pub fn from_suffix(suffix: &str) -> Option<ShadowOp> {
            ShadowOp::ALL
                .iter()
                .copied()
                .find(|op| op.suffix() == suffix)
        }
    }

    /// A shadow topic, parsed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ShadowTopic<'a> {
        /// The thing.
        pub thing: &'a str,
        /// The shadow's name; `None` for the classic shadow.
        pub name: Option<&'a str>,
        /// The operation.
        pub op: ShadowOp,
    }

    /// Parses a shadow topic; `None` for anything else.
    pub fn parse_shadow(topic: &str) -> Option<ShadowTopic<'_>> {
        let (thing, rest) = topic.strip_prefix(THINGS_PREFIX)?.split_once('/')?;
        let rest = rest.strip_prefix("shadow/")?;
        let (name, suffix) = match rest.strip_prefix("name/") {
            Some(named) => {
                let (name, suffix) = named.split_once('/')?;
                (Some(name), suffix)
            }
            None => (None, rest),
        };
        if thing.is_empty() || name.is_some_and(str::is_empty) {
            return None;
        }
        Some(ShadowTopic {
            thing,
            name,
            op: ShadowOp::from_suffix(suffix)?,
        })
    }
}

/// The topic prefix of a thing's shadow: `$aws/things/<thing>/shadow` for the classic shadow
/// (`name` `None`), `$aws/things/<thing>/shadow/name/<name>` for a named one.
///
/// ```
/// use fleetkit::aws::shadow_topic_prefix;
/// assert_eq!(shadow_topic_prefix("pump-7", None), "$aws/things/pump-7/shadow");
/// assert_eq!(
///     shadow_topic_prefix("pump-7", Some("config")),
///     "$aws/things/pump-7/shadow/name/config"
/// );
/// ```
pub fn shadow_topic_prefix(thing: &str, name: Option<&str>) -> String {
    topics::shadow_prefix(thing, name)
}

/// AWS IoT Core's device plane for a [`DeviceClient`](crate::device::DeviceClient): MQTT
/// 3.1.1 over X.509 mutual TLS, the thing name as client id, telemetry and commands on the
/// configured topics, and a Device Shadow as the twin. Made by [`AwsIot::dialect`].
///
/// Topics (`{thing}` is the thing name, which is the device id; `<shadow>` is
/// [`shadow_topic_prefix`]: `$aws/things/{thing}/shadow`, or
/// `$aws/things/{thing}/shadow/name/<name>` for a named shadow):
///
/// | purpose | direction | topic | payload |
/// |---|---|---|---|
/// | telemetry | → AWS | the template, by default `dt/{thing}/telemetry` | anything |
/// | commands | ← AWS | `cmd/{thing}/<name>` (prefix configurable) | anything |
/// | twin get | → AWS | `<shadow>/get` | `{"clientToken": rid}` |
/// | twin report | → AWS | `<shadow>/update` | `{"state": {"reported": patch}, "clientToken": rid, "version": n?}` |
/// | answers | ← AWS | `<shadow>/{get,update}/{accepted,rejected}` | the shadow, the accepted update, or `{"code", "message", "clientToken"}` |
/// | desired changes | ← AWS | `<shadow>/update/delta` | `{"state": {…delta…}, "version": n, …}` |
///
/// All subscriptions and requests are QoS 1. The `clientToken` carries the client's request
/// id and comes back in the answer, which is how answers find their requests (AWS allows at
/// most 64 bytes). An answer without one — to an update another client made — is handed to
/// the application as [`Inbound::Other`]. A command's name is everything after the prefix,
/// so `cmd/{thing}/ota/start` is the command `ota/start`.
///
/// Reports are checked against AWS's shadow rules before they are sent (nesting depth 6, no
/// `null` in arrays: [`TwinLimits::aws`], without its 8 KB size, which the service judges for
/// the whole shadow) and against the 128 KiB message limit. A 409 answer becomes
/// [`Error::Conflict`] with both versions 0, since AWS's error document names neither.
///
/// The device id must be a valid thing name (`[a-zA-Z0-9:_-]`, 1–128; every
/// [portable](crate::identity::IdRule::Portable) id is one). For an id that is not, the
/// operations fail with [`Error::InvalidInput`] and [`subscriptions`](Dialect::subscriptions)
/// is empty rather than subscribing to a filter the id would turn into a wildcard.
#[derive(Clone, Debug)]
pub struct AwsDialect {
    endpoint: Endpoint,
    telemetry_topic: String,
    command_topic: String,
    shadow_name: Option<String>,
    jobs: bool,
    /// For the WebSocket transport: the credentials and region its URL is signed with.
    websocket: Option<(crate::auth::sigv4::AwsCredentials, String)>,
}

impl AwsDialect {
    pub(super) fn new(config: &AwsIot) -> Self {
        let mut endpoint = Endpoint::new(&config.endpoint, config.port, config.roots.clone());
        endpoint.server_name = config.server_name.clone();
        if let Some(alpn) = config.transport.alpn() {
            endpoint = endpoint.with_alpn(alpn);
        }
        AwsDialect {
            endpoint,
            telemetry_topic: config.telemetry_topic.clone(),
            command_topic: config.command_topic.clone(),
            shadow_name: config.shadow_name.clone(),
            jobs: config.jobs,
            websocket: (config.transport == super::AwsTransport::WebSocket)
                .then(|| config.credentials())
                .flatten()
                .map(|c| (c, config.region.clone())),
        }
    }

    /// The named shadow that is the twin; `None` for the classic shadow.
    pub fn shadow_name(&self) -> Option<&str> {
        self.shadow_name.as_deref()
    }

    /// The shadow topic prefix for `thing` (see [`shadow_topic_prefix`]).
    pub fn shadow_prefix(&self, thing: &str) -> String {
        topics::shadow_prefix(thing, self.shadow_name.as_deref())
    }

    /// The prefix `thing`'s commands arrive under (`cmd/<thing>` by default).
    pub fn command_prefix(&self, thing: &str) -> String {
        topics::expand(&self.command_topic, thing)
    }

    /// What a shadow is called in errors: `shadow of t`, `shadow "config" of t`.
    fn shadow_label(&self, thing: &str) -> String {
        match &self.shadow_name {
            None => format!("shadow of {thing}"),
            Some(name) => format!("shadow {name:?} of {thing}"),
        }
    }
}

/// `device` as a thing name, or why it cannot be one.
fn thing(device: &DeviceId) -> Result<&str> {
    DeviceId::with_rule(device.as_str(), IdRule::Aws)?;
    Ok(device.as_str())
}

/// Checks a request id for use as a `clientToken`.
fn client_token(request_id: &str) -> Result<&str> {
    if request_id.is_empty() || request_id.len() > topics::MAX_CLIENT_TOKEN_BYTES {
        return Err(Error::invalid(
            "request id",
            format!(
                "AWS shadow client tokens are 1-{} bytes; {:?} is {} bytes",
                topics::MAX_CLIENT_TOKEN_BYTES,
                request_id,
                request_id.len()
            ),
        ));
    }
    Ok(request_id)
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The JSON object in `payload`, if it is one.
fn json_object(payload: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

impl Dialect for AwsDialect {
    fn name(&self) -> &str {
        "aws"
    }

    fn capabilities(&self) -> Capabilities {
        let mut features = vec![
            Feature::Telemetry,
            Feature::AtLeastOnce,
            Feature::Commands,
            Feature::Twin,
            Feature::DesiredNotifications,
            Feature::TwinVersioning,
        ];
        if self.jobs {
            features.push(Feature::Jobs);
        }
        Capabilities::new(&features)
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// For [`AwsTransport::WebSocket`](super::AwsTransport::WebSocket): `wss://<host>/mqtt`
    /// pre-signed now (SigV4, service `iotdevicegateway`, no expiry, the session token
    /// appended after signing).
    fn websocket_url(&self, _device: &DeviceId) -> Result<Option<String>> {
        let Some((credentials, region)) = &self.websocket else {
            return Ok(None);
        };
        let host = if self.endpoint.port == 443 {
            self.endpoint.host.clone()
        } else {
            format!("{}:{}", self.endpoint.host, self.endpoint.port)
        };
        crate::auth::sigv4::presign_websocket_url(
            credentials,
            region,
            &host,
            std::time::SystemTime::now(),
            None,
        )
        .map(Some)
    }

    /// AWS's SDKs put metrics in the username (`?SDK=…&Version=…`); AWS ignores it for
    /// certificate authentication.
    fn username(&self, _device: &DeviceId) -> Option<String> {
        Some(concat!("?SDK=fleetkit&Version=", env!("CARGO_PKG_VERSION")).to_string())
    }

    fn limits(&self) -> DeviceLimits {
        // PROTOCOLS.md §1.4.
        DeviceLimits {
            max_payload: 128 * 1024,
            max_topic_len: topics::MAX_TOPIC_BYTES,
            max_properties: 0,
            max_filters_per_subscribe: 8,
        }
    }

    fn telemetry_topic(
        &self,
        device: &DeviceId,
        properties: &[(String, String)],
    ) -> Result<String> {
        if !properties.is_empty() {
            return Err(Error::NotSupported(
                "telemetry properties in the aws dialect (MQTT 3.1.1 has no user properties; \
                 put them in the payload or the topic template)"
                    .into(),
            ));
        }
        Ok(topics::expand(&self.telemetry_topic, thing(device)?))
    }

    fn subscriptions(&self, device: &DeviceId) -> Vec<(String, u8)> {
        let Ok(thing) = thing(device) else {
            return Vec::new();
        };
        let prefix = self.shadow_prefix(thing);
        let mut subs: Vec<(String, u8)> = [
            topics::ShadowOp::GetAccepted,
            topics::ShadowOp::GetRejected,
            topics::ShadowOp::UpdateAccepted,
            topics::ShadowOp::UpdateRejected,
            topics::ShadowOp::UpdateDelta,
        ]
        .iter()
        .map(|op| (format!("{prefix}/{}", op.suffix()), 1))
        .collect();
        subs.push((format!("{}/#", self.command_prefix(thing)), 1));
        if self.jobs {
            subs.extend(super::jobs::subscriptions(thing));
        }
        subs
    }

    fn classify(&self, device: &DeviceId, topic: &str, payload: &Bytes) -> Inbound {
        use topics::ShadowOp;
        let other = || Inbound::Other {
            topic: topic.to_string(),
            payload: payload.clone(),
        };
        let Ok(thing) = thing(device) else {
            return other();
        };
        if let Some(shadow) = topics::parse_shadow(topic) {
            if shadow.thing != thing || shadow.name != self.shadow_name.as_deref() {
                return other();
            }
            return match shadow.op {
                ShadowOp::GetAccepted
                | ShadowOp::UpdateAccepted
                | ShadowOp::GetRejected
                | ShadowOp::UpdateRejected => {
                    let Some(body) = json_object(payload) else {
                        return other();
                    };
                    let Some(token) = body.get("clientToken").and_then(Value::as_str) else {
                        return other();
                    };
                    let status = match shadow.op {
                        ShadowOp::GetAccepted | ShadowOp::UpdateAccepted => 200,
                        _ => body
                            .get("code")
                            .and_then(Value::as_u64)
                            .and_then(|c| u16::try_from(c).ok())
                            .filter(|c| (400..=599).contains(c))
                            .unwrap_or(500),
                    };
                    Inbound::TwinResponse {
                        request_id: token.to_string(),
                        status,
                        body: payload.clone(),
                    }
                }
                ShadowOp::UpdateDelta => match serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|doc| DesiredChange::from_aws_delta_document(&doc).ok())
                {
                    Some(change) => Inbound::DesiredChange(change),
                    None => other(),
                },
                _ => other(),
            };
        }
        if self.jobs
            && let Some(inbound) = super::jobs::classify(thing, topic, payload)
        {
            return inbound;
        }
        let prefix = self.command_prefix(thing);
        match topic
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        {
            Some(name) if !name.is_empty() => Inbound::Command(Command {
                name: name.to_string(),
                payload: payload.clone(),
                properties: Vec::new(),
            }),
            _ => other(),
        }
    }

    fn twin_get(&self, device: &DeviceId, request_id: &str) -> Result<Outbound> {
        let thing = thing(device)?;
        let token = client_token(request_id)?;
        Ok(Outbound::new(
            topics::shadow(thing, self.shadow_name.as_deref(), topics::ShadowOp::Get),
            format!(r#"{{"clientToken":{}}}"#, json_string(token)),
            1,
        ))
    }

    fn twin_report(
        &self,
        device: &DeviceId,
        request_id: &str,
        patch: &Map<String, Value>,
        expected_version: Option<u64>,
    ) -> Result<Outbound> {
        let thing = thing(device)?;
        let token = client_token(request_id)?;
        // AWS's nesting and array rules, checked here so a bad patch is a typed error before
        // it is sent. The 8 KB state size is the service's to judge: it applies to the whole
        // shadow, not to this patch.
        let patch_value = Value::Object(patch.clone());
        TwinDocument::new().apply_reported(
            &patch_value,
            None,
            &TwinLimits::aws().with_max_state_bytes(None),
            time::OffsetDateTime::UNIX_EPOCH,
        )?;
        let mut body = format!(
            r#"{{"state":{{"reported":{}}},"clientToken":{}"#,
            patch_value,
            json_string(token)
        );
        if let Some(version) = expected_version {
            body.push_str(&format!(r#","version":{version}"#));
        }
        body.push('}');
        let max = self.limits().max_payload;
        if body.len() > max {
            return Err(Error::invalid(
                "patch",
                format!(
                    "the shadow update is {} bytes; AWS IoT messages are at most {max}",
                    body.len()
                ),
            ));
        }
        Ok(Outbound::new(
            topics::shadow(thing, self.shadow_name.as_deref(), topics::ShadowOp::Update),
            body,
            1,
        ))
    }

    fn parse_twin_document(&self, body: &Bytes) -> Result<TwinDocument> {
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| Error::invalid("shadow", format!("not a JSON document: {e}")))?;
        TwinDocument::from_aws_shadow_document(&doc)
    }

    fn parse_twin_reported(&self, body: &Bytes) -> Result<u64> {
        json_object(body)
            .and_then(|doc| doc.get("version").and_then(Value::as_u64))
            .ok_or_else(|| Error::invalid("shadow", "no version in the accepted update"))
    }

    fn twin_error(&self, device: &DeviceId, status: u16, body: &Bytes) -> Error {
        let doc = json_object(body).unwrap_or_default();
        let message = doc
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        let thing = device.as_str();
        match status {
            // AWS's 409 document ("Version conflict") names neither version: both are 0
            // here. Get the shadow again to learn the current one.
            409 => Error::Conflict {
                what: format!(
                    "{} (AWS does not say which versions)",
                    self.shadow_label(thing)
                ),
                expected: 0,
                current: 0,
            },
            404 => Error::NotFound {
                what: "shadow",
                id: match &self.shadow_name {
                    None => thing.to_string(),
                    Some(name) => format!("{thing}/{name}"),
                },
            },
            400 | 413 | 415 => Error::invalid("shadow request", message),
            401 | 403 => Error::PermissionDenied(format!(
                "{}: {message} ({status})",
                self.shadow_label(thing)
            )),
            429 => Error::Unavailable(format!(
                "{}: too many requests in flight (429): {message}",
                self.shadow_label(thing)
            )),
            s => Error::Unavailable(format!("the shadow service answered {s}: {message}")),
        }
    }

    fn method_response(
        &self,
        _device: &DeviceId,
        _request: &MethodRequest,
        _response: &MethodResponse,
    ) -> Result<Outbound> {
        Err(Error::NotSupported(
            "direct methods in the aws dialect (AWS IoT Core has none; use commands)".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
