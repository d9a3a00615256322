//! The native dialect, device side: how a device talks to the local hub's own services.
//!
//! Topics (`{id}` is the device id; every one is scoped to it, so the built-in
//! [`native_device`](crate::policy::builtin::native_device) policy can confine each device to
//! its own):
//!
//! | purpose | direction | topic | payload |
//! |---|---|---|---|
//! | telemetry | → hub | `devices/{id}/telemetry` or `devices/{id}/telemetry/{k=v&…}` | anything |
//! | commands | ← hub | `$fleetkit/devices/{id}/commands/{name}` | anything |
//! | twin get | → hub | `$fleetkit/devices/{id}/twin/get/{rid}` | empty |
//! | twin report | → hub | `$fleetkit/devices/{id}/twin/reported/{rid}` | `{"patch": {…}, "version": n?}` |
//! | twin answers | ← hub | `$fleetkit/devices/{id}/twin/res/{status}/{rid}` | the twin, `{"version": n}` or `{"error", "message", "current_version"?}` |
//! | desired changes | ← hub | `$fleetkit/devices/{id}/twin/desired` | `{"version": n, "patch": {…}}` |
//! | method call | ← hub | `$fleetkit/devices/{id}/methods/req/{name}/{rid}` | JSON |
//! | method answer | → hub | `$fleetkit/devices/{id}/methods/res/{status}/{rid}` | JSON |
//! | certificate for a CSR | → hub | `$fleetkit/devices/{id}/certificates/csr/{rid}` | `{"csr": "<PEM>"}` |
//! | confirm (over the new certificate) | → hub | `$fleetkit/devices/{id}/certificates/confirm/{rid}` | `{"certificateId", "retire"}` |
//! | certificate answers | ← hub | `$fleetkit/devices/{id}/certificates/res/{status}/{rid}` | `{"certificateId", "certificatePem"}` or an error |
//!
//! Property values in the telemetry topic are percent-encoded (RFC 3986 unreserved characters
//! stay as they are), as Azure IoT Hub does with its property bag.

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::dialect::{
    Capabilities, Command, Dialect, Endpoint, Feature, Inbound, IssuedCertificate, MethodRequest,
    MethodResponse, Outbound,
};
use super::twin::{DesiredChange, TwinDocument};
use crate::identity::DeviceId;
use crate::pki::Certificate;
use crate::{Error, Result};

/// Characters escaped in property values: everything but RFC 3986's unreserved set.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The native dialect's topic names (shared by the device client and the hub's services).
pub mod topics {
    /// Prefix of every reserved topic of the native dialect.
    pub const RESERVED_PREFIX: &str = "$fleetkit/devices/";

    /// `devices/{id}/telemetry`.
    pub fn telemetry(device: &str) -> String {
        format!("devices/{device}/telemetry")
    }

    /// `$fleetkit/devices/{id}`: the root of a device's reserved topics.
    pub fn device_root(device: &str) -> String {
        format!("{RESERVED_PREFIX}{device}")
    }

    /// `$fleetkit/devices/{id}/commands/{name}`.
    pub fn command(device: &str, name: &str) -> String {
        format!("{RESERVED_PREFIX}{device}/commands/{name}")
    }

    /// `$fleetkit/devices/{id}/twin/res/{status}/{rid}`.
    pub fn twin_response(device: &str, status: u16, request_id: &str) -> String {
        format!("{RESERVED_PREFIX}{device}/twin/res/{status}/{request_id}")
    }

    /// `$fleetkit/devices/{id}/twin/desired`.
    pub fn twin_desired(device: &str) -> String {
        format!("{RESERVED_PREFIX}{device}/twin/desired")
    }

    /// `$fleetkit/devices/{id}/methods/req/{name}/{rid}`.
    pub fn method_request(device: &str, name: &str, request_id: &str) -> String {
        format!("{RESERVED_PREFIX}{device}/methods/req/{name}/{request_id}")
    }

    /// `$fleetkit/devices/{id}/certificates/res/{status}/{rid}`.
    pub fn certificate_response(device: &str, status: u16, request_id: &str) -> String {
        format!("{RESERVED_PREFIX}{device}/certificates/res/{status}/{request_id}")
    }

    /// What a reserved topic of the native dialect addresses, parsed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Reserved<'a> {
        /// A command to the device.
        Command {
            /// Device.
            device: &'a str,
            /// Command name.
            name: &'a str,
        },
        /// The device asks for its twin.
        TwinGet {
            /// Device.
            device: &'a str,
            /// Request id.
            request_id: &'a str,
        },
        /// The device reports properties.
        TwinReported {
            /// Device.
            device: &'a str,
            /// Request id.
            request_id: &'a str,
        },
        /// The hub answers a twin request.
        TwinResponse {
            /// Device.
            device: &'a str,
            /// Status.
            status: u16,
            /// Request id.
            request_id: &'a str,
        },
        /// Desired properties changed.
        TwinDesired {
            /// Device.
            device: &'a str,
        },
        /// A method call to the device.
        MethodRequest {
            /// Device.
            device: &'a str,
            /// Method name.
            name: &'a str,
            /// Request id.
            request_id: &'a str,
        },
        /// The device asks for a certificate for a CSR.
        CertificateCsr {
            /// Device.
            device: &'a str,
            /// Request id.
            request_id: &'a str,
        },
        /// The device confirms its new certificate works.
        CertificateConfirm {
            /// Device.
            device: &'a str,
            /// Request id.
            request_id: &'a str,
        },
        /// The hub answers a certificate request.
        CertificateResponse {
            /// Device.
            device: &'a str,
            /// Status.
            status: u16,
            /// Request id.
            request_id: &'a str,
        },
        /// The device answers a method call.
        MethodResponse {
            /// Device.
            device: &'a str,
            /// Status.
            status: u16,
            /// Request id.
            request_id: &'a str,
        },
    }

    /// Parses a reserved topic; `None` for anything else.
    pub fn parse(topic: &str) -> Option<Reserved<'_>> {
        let rest = topic.strip_prefix(RESERVED_PREFIX)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(match parts.as_slice() {
            [device, "commands", name] => Reserved::Command { device, name },
            [device, "twin", "get", rid] => Reserved::TwinGet {
                device,
                request_id: rid,
            },
            [device, "twin", "reported", rid] => Reserved::TwinReported {
                device,
                request_id: rid,
            },
            [device, "twin", "res", status, rid] => Reserved::TwinResponse {
                device,
                status: status.parse().ok()?,
                request_id: rid,
            },
            [device, "twin", "desired"] => Reserved::TwinDesired { device },
            [device, "methods", "req", name, rid] => Reserved::MethodRequest {
                device,
                name,
                request_id: rid,
            },
            [device, "certificates", "csr", rid] => Reserved::CertificateCsr {
                device,
                request_id: rid,
            },
            [device, "certificates", "confirm", rid] => Reserved::CertificateConfirm {
                device,
                request_id: rid,
            },
            [device, "certificates", "res", status, rid] => Reserved::CertificateResponse {
                device,
                status: status.parse().ok()?,
                request_id: rid,
            },
            [device, "methods", "res", status, rid] => Reserved::MethodResponse {
                device,
                status: status.parse().ok()?,
                request_id: rid,
            },
            _ => return None,
        })
    }
}

/// The native dialect for a device: connects to a local hub over mutual TLS and uses the
/// hub's own telemetry, command, twin and method topics (see the [module docs](self)).
///
/// ```
/// # fn f(hub_ca: &fleetkit::pki::Certificate) {
/// use fleetkit::device::NativeDialect;
/// let dialect = NativeDialect::new("localhost", 8883, hub_ca);
/// # let _ = dialect; }
/// ```
#[derive(Clone, Debug)]
pub struct NativeDialect {
    endpoint: Endpoint,
}

impl NativeDialect {
    /// A hub at `host:port` whose server certificate chains to `ca`.
    pub fn new(host: &str, port: u16, ca: &Certificate) -> Self {
        NativeDialect {
            endpoint: Endpoint::new(host, port, vec![ca.der().clone()]),
        }
    }

    /// A hub at `endpoint`.
    pub fn with_endpoint(endpoint: Endpoint) -> Self {
        NativeDialect { endpoint }
    }
}

/// The JSON body of a payload, `null` when empty; an error when it is not JSON.
fn json_body(payload: &Bytes) -> std::result::Result<Value, serde_json::Error> {
    if payload.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(payload)
    }
}

impl Dialect for NativeDialect {
    fn name(&self) -> &str {
        "native"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(&[
            Feature::Telemetry,
            Feature::TelemetryProperties,
            Feature::AtLeastOnce,
            Feature::Commands,
            Feature::Twin,
            Feature::DesiredNotifications,
            Feature::TwinVersioning,
            Feature::Methods,
            Feature::CertificateRotation,
        ])
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn telemetry_topic(
        &self,
        device: &DeviceId,
        properties: &[(String, String)],
    ) -> Result<String> {
        let mut topic = topics::telemetry(device.as_str());
        if !properties.is_empty() {
            topic.push('/');
            for (i, (k, v)) in properties.iter().enumerate() {
                if i > 0 {
                    topic.push('&');
                }
                topic.push_str(k);
                topic.push('=');
                topic.extend(utf8_percent_encode(v, VALUE));
            }
        }
        Ok(topic)
    }

    fn subscriptions(&self, device: &DeviceId) -> Vec<(String, u8)> {
        let root = topics::device_root(device.as_str());
        vec![
            (format!("{root}/commands/#"), 1),
            (format!("{root}/twin/res/#"), 0),
            (format!("{root}/twin/desired"), 1),
            (format!("{root}/methods/req/#"), 0),
            (format!("{root}/certificates/res/#"), 0),
        ]
    }

    fn classify(&self, device: &DeviceId, topic: &str, payload: &Bytes) -> Inbound {
        let other = || Inbound::Other {
            topic: topic.to_string(),
            payload: payload.clone(),
        };
        let Some(parsed) = topics::parse(topic) else {
            return other();
        };
        match parsed {
            topics::Reserved::Command { device: d, name } if d == device.as_str() => {
                Inbound::Command(Command {
                    name: name.to_string(),
                    payload: payload.clone(),
                    properties: Vec::new(),
                })
            }
            topics::Reserved::TwinResponse {
                device: d,
                status,
                request_id,
            } if d == device.as_str() => Inbound::TwinResponse {
                request_id: request_id.to_string(),
                status,
                body: payload.clone(),
            },
            topics::Reserved::TwinDesired { device: d } if d == device.as_str() => {
                #[derive(serde::Deserialize)]
                struct Notification {
                    version: u64,
                    patch: Map<String, Value>,
                }
                match serde_json::from_slice::<Notification>(payload) {
                    Ok(n) => Inbound::DesiredChange(DesiredChange {
                        patch: n.patch,
                        version: n.version,
                    }),
                    Err(_) => other(),
                }
            }
            topics::Reserved::CertificateResponse {
                device: d,
                status,
                request_id,
            } if d == device.as_str() => Inbound::CertificateResponse {
                request_id: request_id.to_string(),
                status,
                body: payload.clone(),
            },
            topics::Reserved::MethodRequest {
                device: d,
                name,
                request_id,
            } if d == device.as_str() => Inbound::MethodRequest(MethodRequest {
                name: name.to_string(),
                request_id: request_id.to_string(),
                payload: json_body(payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(payload).into_owned())
                }),
            }),
            _ => other(),
        }
    }

    fn twin_get(&self, device: &DeviceId, request_id: &str) -> Result<Outbound> {
        Ok(Outbound::new(
            format!(
                "{}/twin/get/{request_id}",
                topics::device_root(device.as_str())
            ),
            Bytes::new(),
            0,
        ))
    }

    fn twin_report(
        &self,
        device: &DeviceId,
        request_id: &str,
        patch: &Map<String, Value>,
        expected_version: Option<u64>,
    ) -> Result<Outbound> {
        let mut body = json!({ "patch": patch });
        if let Some(v) = expected_version {
            body["version"] = json!(v);
        }
        Ok(Outbound::new(
            format!(
                "{}/twin/reported/{request_id}",
                topics::device_root(device.as_str())
            ),
            serde_json::to_vec(&body).expect("JSON"),
            0,
        ))
    }

    fn parse_twin_document(&self, body: &Bytes) -> Result<TwinDocument> {
        serde_json::from_slice(body)
            .map_err(|e| Error::invalid("twin response", format!("not a twin document: {e}")))
    }

    fn parse_twin_reported(&self, body: &Bytes) -> Result<u64> {
        json_body(body)
            .ok()
            .and_then(|v| v.get("version").and_then(Value::as_u64))
            .ok_or_else(|| Error::invalid("twin response", "no version in the answer"))
    }

    fn twin_error(&self, device: &DeviceId, status: u16, body: &Bytes) -> Error {
        let v = json_body(body).unwrap_or(Value::Null);
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        match status {
            409 => Error::Conflict {
                what: format!("twin of {device}"),
                expected: v
                    .get("expected_version")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                current: v
                    .get("current_version")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            },
            400 => Error::invalid(
                v.get("field")
                    .and_then(Value::as_str)
                    .unwrap_or("twin patch")
                    .to_string(),
                message,
            ),
            403 => Error::PermissionDenied(message),
            404 => Error::NotFound {
                what: "twin",
                id: device.to_string(),
            },
            s => Error::Unavailable(format!("twin service answered {s}: {message}")),
        }
    }

    fn method_response(
        &self,
        device: &DeviceId,
        request: &MethodRequest,
        response: &MethodResponse,
    ) -> Result<Outbound> {
        Ok(Outbound::new(
            format!(
                "{}/methods/res/{}/{}",
                topics::device_root(device.as_str()),
                response.status,
                request.request_id
            ),
            serde_json::to_vec(&response.payload).expect("JSON"),
            0,
        ))
    }

    fn certificate_request(
        &self,
        device: &DeviceId,
        request_id: &str,
        csr_pem: &str,
    ) -> Result<Outbound> {
        Ok(Outbound::new(
            format!(
                "{}/certificates/csr/{request_id}",
                topics::device_root(device.as_str())
            ),
            serde_json::to_vec(&json!({ "csr": csr_pem })).expect("JSON"),
            0,
        ))
    }

    fn certificate_confirm(
        &self,
        device: &DeviceId,
        request_id: &str,
        new_id: &str,
        retire_id: &str,
    ) -> Result<Outbound> {
        Ok(Outbound::new(
            format!(
                "{}/certificates/confirm/{request_id}",
                topics::device_root(device.as_str())
            ),
            serde_json::to_vec(&json!({ "certificateId": new_id, "retire": retire_id }))
                .expect("JSON"),
            0,
        ))
    }

    fn parse_certificate(&self, status: u16, body: &Bytes) -> Result<IssuedCertificate> {
        let v = json_body(body).unwrap_or(Value::Null);
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        match status {
            200 => Ok(IssuedCertificate {
                certificate_id: v
                    .get("certificateId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::invalid("certificate answer", "no certificateId"))?
                    .to_string(),
                chain_pem: v
                    .get("certificatePem")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
            400 => Err(Error::invalid("csr", message)),
            403 => Err(Error::PermissionDenied(message)),
            404 => Err(Error::NotFound {
                what: "certificate",
                id: message,
            }),
            409 => Err(Error::Precondition(message)),
            s => Err(Error::Unavailable(format!(
                "certificate service answered {s}: {message}"
            ))),
        }
    }
}

/// Decodes a native telemetry topic's property bag (`k=v&k2=v2`, values percent-encoded).
pub fn parse_properties(bag: &str) -> Result<Vec<(String, String)>> {
    if bag.is_empty() {
        return Ok(Vec::new());
    }
    bag.split('&')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::invalid("properties", format!("{pair:?} has no '='")))?;
            let v = percent_decode_str(v)
                .decode_utf8()
                .map_err(|e| Error::invalid("properties", format!("{k}: {e}")))?;
            Ok((k.to_string(), v.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect() -> NativeDialect {
        NativeDialect::with_endpoint(Endpoint::new("localhost", 1, Vec::new()))
    }

    #[test]
    fn telemetry_properties_round_trip_through_the_topic() {
        let d = dialect();
        let id = DeviceId::new("sensor-1").unwrap();
        let props = vec![
            ("unit".to_string(), "°C / 10".to_string()),
            ("seq".to_string(), "7".to_string()),
        ];
        let topic = d.telemetry_topic(&id, &props).unwrap();
        assert_eq!(
            topic,
            "devices/sensor-1/telemetry/unit=%C2%B0C%20%2F%2010&seq=7"
        );
        let bag = topic.rsplit_once('/').unwrap().1;
        assert_eq!(parse_properties(bag).unwrap(), props);
        assert_eq!(
            d.telemetry_topic(&id, &[]).unwrap(),
            "devices/sensor-1/telemetry"
        );
    }

    #[test]
    fn reserved_topics_parse_and_foreign_ones_do_not() {
        use topics::Reserved;
        assert_eq!(
            topics::parse("$fleetkit/devices/d1/twin/res/409/r7"),
            Some(Reserved::TwinResponse {
                device: "d1",
                status: 409,
                request_id: "r7"
            })
        );
        assert_eq!(
            topics::parse("$fleetkit/devices/d1/methods/req/reboot/9"),
            Some(Reserved::MethodRequest {
                device: "d1",
                name: "reboot",
                request_id: "9"
            })
        );
        for t in [
            "$fleetkit/devices/d1/twin/res/abc/r7",
            "$fleetkit/devices//twin/get/1",
            "$fleetkit/devices/d1/twin/get",
            "$fleetkit/events/connected",
            "devices/d1/telemetry",
        ] {
            assert_eq!(topics::parse(t), None, "{t}");
        }
    }

    #[test]
    fn messages_for_another_device_are_not_taken_for_ours() {
        let d = dialect();
        let id = DeviceId::new("dev-1").unwrap();
        let p = Bytes::from_static(b"{}");
        assert!(matches!(
            d.classify(&id, "$fleetkit/devices/dev-2/commands/x", &p),
            Inbound::Other { .. }
        ));
        assert!(matches!(
            d.classify(&id, "$fleetkit/devices/dev-1/commands/x", &p),
            Inbound::Command(_)
        ));
    }

    #[test]
    fn twin_errors_are_typed() {
        let d = dialect();
        let id = DeviceId::new("dev-1").unwrap();
        let body = Bytes::from(
            serde_json::to_vec(
                &json!({"error": "conflict", "message": "stale", "expected_version": 3, "current_version": 5}),
            )
            .unwrap(),
        );
        match d.twin_error(&id, 409, &body) {
            Error::Conflict {
                expected, current, ..
            } => assert_eq!((expected, current), (3, 5)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.twin_error(&id, 400, &Bytes::new()),
            Error::InvalidInput { .. }
        ));
    }
}
