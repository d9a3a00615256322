//! What a backend under test provides to the conformance scenarios.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetkit::device::{DeviceClient, DeviceClientBuilder, Dialect};
use fleetkit::identity::{DeviceId, X509Credential};
use fleetkit::local::{DeviceRecord, LocalHub, LocalHubBuilder};
use fleetkit::policy::{AttachTarget, PolicyDocument};
use fleetkit::protocol::BackoffConfig;

/// A backend the scenarios run against: the hub speaking the backend's dialect, the
/// device-side dialect that talks to it, and the backend's least-privilege device policy.
pub trait Backend: Send + Sync {
    /// Name for messages.
    fn name(&self) -> &str;

    /// A hub builder speaking this backend's dialect.
    fn hub(&self) -> LocalHubBuilder;

    /// The policy every device of the fleet gets.
    fn device_policy(&self) -> PolicyDocument;

    /// The device-side dialect for a device of `hub`.
    fn dialect(&self, hub: &LocalHub) -> Arc<dyn Dialect>;

    /// A topic filter that catches every device's telemetry, for the cloud side.
    fn telemetry_filter(&self) -> &str;
}

/// A running hub and its devices' credentials, in the order asked for.
pub struct Fleet {
    pub hub: LocalHub,
    pub credentials: Vec<X509Credential>,
    pub devices: Vec<String>,
}

/// Starts the backend's hub (optionally at `bind` with `data`), registers `devices` under its
/// device policy and issues their credentials.
pub async fn start(backend: &dyn Backend, devices: &[&str]) -> Fleet {
    start_with(backend, devices, None, None).await
}

/// [`start`] with a fixed address and a data directory (for restarts).
pub async fn start_with(
    backend: &dyn Backend,
    devices: &[&str],
    bind: Option<SocketAddr>,
    data: Option<&Path>,
) -> Fleet {
    let mut builder = backend.hub();
    if let Some(bind) = bind {
        builder = builder.bind(bind);
    }
    if let Some(data) = data {
        builder = builder.data_dir(data);
    }
    let hub = builder
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} hub: {e}", backend.name()));
    let mut credentials = Vec::new();
    if hub.with_registry(|r| r.policies().policy("device").is_err()) {
        hub.put_policy("device", &backend.device_policy()).unwrap();
        hub.attach_policy("device", AttachTarget::Group("fleet".into()))
            .unwrap();
    }
    for d in devices {
        if hub.with_registry(|r| r.device(d).is_none()) {
            hub.create_device(DeviceRecord::new(d).in_group("fleet"))
                .unwrap();
            credentials.push(hub.issue_device_credential(d).unwrap());
        }
    }
    Fleet {
        hub,
        credentials,
        devices: devices.iter().map(|d| d.to_string()).collect(),
    }
}

impl Fleet {
    /// A client builder for device `index` with fast test timings.
    pub fn client(&self, backend: &dyn Backend, index: usize) -> DeviceClientBuilder {
        client_for(
            backend,
            &self.hub,
            &self.devices[index],
            self.credentials[index].clone(),
        )
    }
}

/// A client builder for `device` of `hub` with `credential` and fast test timings.
pub fn client_for(
    backend: &dyn Backend,
    hub: &LocalHub,
    device: &str,
    credential: X509Credential,
) -> DeviceClientBuilder {
    DeviceClient::builder_shared(backend.dialect(hub), DeviceId::new(device).unwrap())
        .credential(credential)
        .backoff(
            BackoffConfig::default()
                .with_base(Duration::from_millis(40))
                .with_cap(Duration::from_millis(320)),
        )
        .request_timeout(Duration::from_secs(5))
}
