//! Fleet provisioning by claim: a device leaves the factory with only a shared claim
//! certificate; on first boot it makes its own key, asks the hub for an identity with a CSR,
//! stores the result atomically and reconnects as itself. A claim for a serial number the
//! pre-provisioning hook does not allow is refused.
//!
//! `cargo run --example provision_by_claim`

use std::sync::Arc;

use fleetkit::device::{DeviceClient, Endpoint, NativeDialect, Telemetry};
use fleetkit::identity::{CredentialStore, Credentials, DeviceId, SoftwareKey};
use fleetkit::lifecycle::provision::{ClaimProvisioner, ProvisionRequest, Provisioner};
use fleetkit::local::dialect::{NativeHubDialect, ProvisioningTemplate};
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    // The fleet side: a template turning a serial number into a device, with an allow-list.
    let template = ProvisioningTemplate::new("meters", "meter-{SerialNumber}")?
        .with_policy("meter")
        .in_group("meters")
        .with_attribute_from("serial", "SerialNumber")
        .with_hook(|req| match req.parameters["SerialNumber"].as_str() {
            s if s.starts_with("SN") => Ok(()),
            s => Err(fleetkit::Error::PermissionDenied(format!(
                "serial {s} was not made by us"
            ))),
        });
    let hub = LocalHub::builder()
        .dialect(NativeHubDialect::new().with_provisioning_template(template))
        .start()
        .await?;
    hub.put_policy("meter", &builtin::native_device())?;
    hub.put_policy("claim", &builtin::provisioning_claim("meters"))?;
    hub.create_device(DeviceRecord::new("factory-claim"))?;
    hub.attach_policy("claim", AttachTarget::Device("factory-claim".into()))?;
    let claim = hub.issue_device_credential("factory-claim")?;
    println!("factory: every meter ships with the same claim certificate; it can only provision");

    // The device, on first boot.
    let endpoint = Endpoint::new(
        "localhost",
        hub.mqtt_addr().port(),
        vec![hub.ca_certificate().der().clone()],
    );
    let provisioner = ClaimProvisioner::new(endpoint, claim, "meters");
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let request = ProvisionRequest::with_device_key(DeviceId::new("meter-SN0042")?, key)
        .parameter("SerialNumber", "SN0042");
    let identity = provisioner.provision(&request).await?;
    println!(
        "device: provisioned as {} (certificate {}…); the key never left it",
        identity.device_id,
        &identity.certificate_id[..16]
    );
    let dir = tempfile::tempdir()?;
    let store = CredentialStore::open(dir.path())?;
    identity.store(&store)?;
    let Credentials::X509(credential) = store.load()? else {
        unreachable!("stored an X.509 credential")
    };
    let meter = DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        identity.device_id.clone(),
    )
    .credential(credential)
    .connect()
    .await?;
    meter
        .send_telemetry(Telemetry::new(r#"{"kwh": 1.5}"#))
        .await?;
    println!("device: reconnected as itself from its credential store and sent a reading");

    // A counterfeit: its serial is not ours.
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let fake = ProvisionRequest::with_device_key(DeviceId::new("meter-XX0001")?, key)
        .parameter("SerialNumber", "XX0001");
    match provisioner.provision(&fake).await {
        Err(e) => println!("counterfeit refused: {e}"),
        Ok(p) => println!("unexpected: {} provisioned", p.device_id),
    }
    Ok(())
}
