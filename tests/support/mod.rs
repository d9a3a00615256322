//! Set-up shared by the local hub's integration tests: one fleet policy, a hub with devices and
//! their credentials, and a rustls client configuration that authenticates as a device.
#![allow(dead_code)] // each test crate uses a different part

use std::sync::Arc;

use fleetkit::identity::{ClientIdentity, X509Credential};
use fleetkit::local::{DeviceRecord, LocalHub, LocalHubBuilder};
use fleetkit::policy::{AttachTarget, PolicyDocument};

/// Devices in group `fleet` connect as their own id (or a suffix of it), publish under
/// `fleet/<id>/`, and read everything under `fleet/` except `…/private`.
pub const FLEET_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${fleetkit:DeviceId}*"},
  {"Effect": "Allow", "Action": ["iot:Publish", "iot:RetainPublish"], "Resource": "arn:aws:iot:*:*:topic/fleet/${fleetkit:DeviceId}/*"},
  {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fleet/*"},
  {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/fleet/*"},
  {"Effect": "Deny", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/fleet/*/private"}
]}"#;

/// Starts `builder` with [`FLEET_POLICY`] on group `fleet` and `devices` in that group, each
/// with an issued credential (in the same order).
pub async fn start_fleet(
    builder: LocalHubBuilder,
    devices: &[&str],
) -> (LocalHub, Vec<X509Credential>) {
    let hub = builder.start().await.unwrap();
    hub.put_policy("fleet", &PolicyDocument::from_json(FLEET_POLICY).unwrap())
        .unwrap();
    hub.attach_policy("fleet", AttachTarget::Group("fleet".into()))
        .unwrap();
    let mut creds = Vec::new();
    for d in devices {
        hub.create_device(DeviceRecord::new(d).in_group("fleet"))
            .unwrap();
        creds.push(hub.issue_device_credential(d).unwrap());
    }
    (hub, creds)
}

/// A client configuration trusting only the hub's CA and presenting `cred`, offering `alpn`.
pub fn client_config(
    hub: &LocalHub,
    cred: &X509Credential,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(hub.ca_certificate().der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(ClientIdentity::new(cred).unwrap()));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Writes `hub`'s CA (`ca.pem`), `cred`'s chain (`cert.pem`) and its key (`key.pem`, PKCS#8)
/// into `dir`, for peers that read files (curl, the AWS SDKs, mosquitto clients).
pub fn write_tls_files(dir: &std::path::Path, hub: &LocalHub, cred: &X509Credential) {
    std::fs::write(dir.join("ca.pem"), hub.ca_certificate().to_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cred.chain_pem()).unwrap();
    let der = cred.signer().export_pkcs8_der().unwrap();
    fleetkit::identity::SoftwareKey::from_pkcs8_der(&der)
        .unwrap()
        .write_pkcs8_pem(dir.join("key.pem"))
        .unwrap();
}
