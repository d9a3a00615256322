//! A compromised intermediate CA: revoking it drops exactly the devices under it at once,
//! the audit lists them, and they come back under a fresh intermediate.
//!
//! `cargo run --example revoke_intermediate`

use std::sync::Arc;
use std::time::Duration;

use fleetkit::device::{ConnectionState, DeviceClient, NativeDialect};
use fleetkit::identity::{DeviceId, Signer, SoftwareKey, X509Credential};
use fleetkit::lifecycle::audit::{AuditConfig, CertificateCheck};
use fleetkit::local::{CaStatus, CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
use fleetkit::policy::{AttachTarget, builtin};

fn credential(ca: &CertificateAuthority, device: &str) -> fleetkit::Result<X509Credential> {
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let cert = ca.issue(
        &DeviceId::new(device)?,
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
    X509Credential::new(chain, key)
}

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
    let plant_a = root.new_intermediate(&CaOptions::new("Plant A"))?;
    let plant_b = root.new_intermediate(&CaOptions::new("Plant B"))?;
    let hub = LocalHub::builder().start().await?;
    for ca in [&root, &plant_a, &plant_b] {
        hub.register_ca(ca.certificate())?;
    }
    hub.put_policy("device", &builtin::native_device())?;
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))?;
    let mut clients = Vec::new();
    for (device, ca) in [
        ("pump-a1", &plant_a),
        ("pump-a2", &plant_a),
        ("pump-b1", &plant_b),
    ] {
        hub.create_device(DeviceRecord::new(device).in_group("fleet"))?;
        let cred = credential(ca, device)?;
        hub.register_certificate(cred.leaf().clone(), device)?;
        let client = DeviceClient::builder(
            NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
            DeviceId::new(device)?,
        )
        .credential(cred.clone())
        .connect()
        .await?;
        clients.push((device, client, cred));
    }
    println!("connected: {:?}", hub.connected_clients());

    println!("\nPlant A's CA key leaked: revoke the intermediate");
    let closed = hub.set_ca_status(plant_a.certificate(), CaStatus::Revoked)?;
    println!("  live connections closed at once: {closed}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("  still connected: {:?}", hub.connected_clients());
    for f in hub.audit(&AuditConfig::default()) {
        if f.check == CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates {
            println!("  audit: {f}");
        }
    }

    println!("\nRe-provision the affected devices under Plant B");
    for (device, client, old) in clients.iter().take(2) {
        let new = credential(&plant_b, device)?;
        hub.register_certificate(new.leaf().clone(), device)?;
        hub.set_certificate_state(&old.leaf().fingerprint_sha256(), CertificateState::Revoked)?;
        client.switch_credential(&new).await?;
        println!("  {device}: {:?}", client.state());
    }
    let open = hub
        .audit(&AuditConfig::default())
        .into_iter()
        .filter(|f| f.check == CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates)
        .count();
    println!("  revoked-intermediate findings left: {open}");
    println!("connected: {:?}", hub.connected_clients());
    for (_, client, _) in &clients {
        assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    }
    Ok(())
}
