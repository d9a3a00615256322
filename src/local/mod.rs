//! The local hub: an in-process IoT hub for tests and local development.
//!
//! A real MQTT 3.1.1 server over mutual TLS (rustls), with a device registry, device-certificate
//! and CA status, CRLs, and the [policy engine](crate::policy) deciding every CONNECT, PUBLISH,
//! SUBSCRIBE and delivery. Standard MQTT clients (mosquitto, rumqttc, the cloud SDKs) connect to
//! it as they would to a cloud endpoint: its server certificate covers `localhost`, `127.0.0.1`
//! and any configured host name, signed by the hub's CA.
//!
//! What the native dialect does today:
//!
//! - QoS 0 and 1 (QoS 2 publishes close the connection, QoS 2 subscriptions are granted 1),
//!   retained messages, clean and persistent (in-memory) sessions with queued QoS 1 messages,
//!   last will, keep-alive (closed after 1.5×), client-id takeover, maximum packet size,
//!   a bounded in-flight window and bounded queues.
//! - Authentication by a client certificate that chains to an ACTIVE registered CA, is not on a
//!   CRL, and is registered ACTIVE for an enabled device — checked in the TLS handshake and again
//!   at CONNECT. Changing any of these closes the affected live connections at once.
//! - Authorization: CONNECT (and the will topic), PUBLISH (and RETAIN), SUBSCRIBE (each filter)
//!   and every delivery (`iot:Receive`). A denied CONNECT gets CONNACK 5, a denied filter SUBACK
//!   0x80, a denied publish closes the connection; each denial is an event with its explanation.
//! - Dialects ([`dialect`]): the native one answers twin and method requests on
//!   `$fleetkit/devices/{id}/…` and accepts a username/password hook besides certificates;
//!   the hub's handle is the cloud side (send a command, change desired properties, invoke a
//!   method, [`subscribe`](LocalHub::subscribe) to what devices send).

pub mod admin;
pub(crate) mod broker;
pub mod dialect;
mod https;
mod hub;
mod persist;
mod registry;
pub(crate) mod tls;
mod ws;

pub use broker::Limits;
pub use hub::{HubEvent, HubMessage, HubSubscription, LocalHub, LocalHubBuilder};
pub use registry::{CertificateRecord, CertificateState, DeviceRecord, Registry};
pub use tls::{CaStatus, CertificateStatus, TrustStore};
