//! HTTPS publish: one message per request, for devices that do not keep an MQTT connection
//! (AWS IoT Core's `POST https://<endpoint>:8443/topics/<topic>?qos=1`, or port 443 with ALPN
//! `x-amzn-http-ca`), authenticated by the device certificate.

use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::AwsIot;
use crate::device::{Dialect as _, Endpoint, tls_config};
use crate::identity::X509Credential;
use crate::{Error, Result};

/// What stays unescaped in a topic in the URL path: RFC 3986 unreserved characters.
const TOPIC: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The ALPN protocol that selects HTTPS on port 443.
const ALPN_HTTP: &[u8] = b"x-amzn-http-ca";

/// Publishes over HTTPS with a device certificate. Build it with
/// [`AwsIot::https_publisher`].
///
/// ```no_run
/// # async fn f(aws: fleetkit::aws::AwsIot, credential: fleetkit::identity::X509Credential)
/// # -> fleetkit::Result<()> {
/// let publisher = aws.https_publisher(&credential)?;
/// publisher.publish("dt/meter-7/telemetry", br#"{"kwh": 12.5}"#.to_vec(), 1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpsPublisher {
    http: reqwest::Client,
    base: String,
}

impl std::fmt::Debug for HttpsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsPublisher")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AwsIot {
    /// An HTTPS publisher presenting `credential`: on the MQTT port with ALPN
    /// `x-amzn-http-ca` when the transport is [`MqttAlpn443`](super::AwsTransport::MqttAlpn443),
    /// else on the [HTTPS port](super::AwsIotBuilder::https_port) (8443).
    pub fn https_publisher(&self, credential: &X509Credential) -> Result<HttpsPublisher> {
        let mqtt = self.dialect().endpoint().clone();
        let alpn = !mqtt.alpn.is_empty();
        let port = if alpn { mqtt.port } else { self.https_port };
        let mut endpoint = Endpoint::new(&mqtt.host, port, mqtt.roots.clone());
        endpoint.server_name = mqtt.server_name.clone();
        if alpn {
            endpoint = endpoint.with_alpn(ALPN_HTTP);
        }
        let tls = tls_config(&endpoint, Some(credential))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(Arc::unwrap_or_clone(tls))
            .http1_only()
            .build()
            .map_err(|e| Error::invalid("https client", e.to_string()))?;
        Ok(HttpsPublisher {
            http,
            base: format!("https://{}:{port}", mqtt.host),
        })
    }
}

impl HttpsPublisher {
    /// Publishes `payload` on `topic` with QoS 0 or 1. `Ok` once the service accepted it.
    ///
    /// Errors: [`Error::InvalidInput`] for a bad topic or QoS (and the service's 400/413),
    /// [`Error::Unauthenticated`] (401: certificate not registered or not active),
    /// [`Error::PermissionDenied`] (403: the policy denies), [`Error::Unavailable`] for the
    /// network and 5xx.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, qos: u8) -> Result<()> {
        if qos > 1 {
            return Err(Error::invalid("qos", "HTTPS publish takes QoS 0 or 1"));
        }
        if topic.is_empty() || topic.starts_with('$') || topic.contains(['+', '#']) {
            return Err(Error::invalid(
                "topic",
                format!("{topic:?}: a non-empty topic name, not reserved, without wildcards"),
            ));
        }
        let url = format!(
            "{}/topics/{}?qos={qos}",
            self.base,
            utf8_percent_encode(topic, TOPIC)
        );
        let response = self
            .http
            .post(&url)
            .body(payload)
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("HTTPS publish to {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or(body);
        match status {
            200..=299 => Ok(()),
            400 | 413 => Err(Error::invalid("publish", format!("{status}: {message}"))),
            401 => Err(Error::Unauthenticated(format!("HTTPS publish: {message}"))),
            403 => Err(Error::PermissionDenied(format!("HTTPS publish: {message}"))),
            _ => Err(Error::Unavailable(format!(
                "HTTPS publish answered {status}: {message}"
            ))),
        }
    }
}
