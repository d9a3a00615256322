//! AWS fleet provisioning by claim with `fleetkit::aws`: a device that left the factory with
//! only a shared claim certificate makes its own key, gets a certificate for its CSR
//! (CreateCertificateFromCsr), registers as a thing through a provisioning template
//! (RegisterThing), stores the identity atomically and reconnects as itself.
//!
//! Runs against the local hub speaking AWS's dialect (on AWS IoT Core the same device code
//! needs only the endpoint, the claim certificate and a template created in the account).
//!
//! `cargo run --example aws_fleet_provisioning --features aws`

use std::sync::Arc;
use std::time::Duration;

use fleetkit::aws::{AwsIot, AwsTransport};
use fleetkit::device::{DeviceClient, Telemetry};
use fleetkit::identity::{CredentialStore, Credentials, DeviceId, SoftwareKey};
use fleetkit::lifecycle::provision::{ProvisionRequest, Provisioner};
use fleetkit::local::dialect::ProvisioningTemplate;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    // The account side: a template that names the thing after the serial number, puts it in
    // a group and attaches the device policy — and refuses serials not made by us.
    let template = ProvisioningTemplate::new("sensors", "sensor-{SerialNumber}")?
        .with_policy("device")
        .in_group("sensors")
        .with_attribute_from("serial", "SerialNumber")
        .with_hook(|req| match req.parameters["SerialNumber"].as_str() {
            s if s.starts_with("SN") => Ok(()),
            s => Err(fleetkit::Error::PermissionDenied(format!(
                "unknown serial {s}"
            ))),
        });
    let hub = LocalHub::builder()
        .dialect(AwsHubDialect::new().with_provisioning_template(template))
        .start()
        .await?;
    hub.put_policy("device", &builtin::aws_device())?;
    hub.put_policy("claim", &builtin::provisioning_claim("sensors"))?;
    hub.create_device(DeviceRecord::new("factory-claim"))?;
    hub.attach_policy("claim", AttachTarget::Device("factory-claim".into()))?;
    let claim = hub.issue_device_credential("factory-claim")?;

    // The device's configuration: the same for every unit, by environment on AWS.
    let aws = AwsIot::builder()
        .region("us-east-1")
        .endpoint("localhost")
        .transport(AwsTransport::MqttAlpn443)
        .port(hub.mqtt_addr().port())
        .root_ca(hub.ca_certificate())
        .build()?;

    // First boot: a key made on the device, a CSR, RegisterThing.
    let provisioner = aws.claim_provisioner(claim.clone(), "sensors");
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let request = ProvisionRequest::with_device_key(DeviceId::new("sensor-SN0042")?, key)
        .parameter("SerialNumber", "SN0042");
    let identity = provisioner.provision(&request).await?;
    println!(
        "device: provisioned as {} (certificate {}…)",
        identity.device_id,
        &identity.certificate_id[..16]
    );
    let dir = tempfile::tempdir()?;
    let store = CredentialStore::open(dir.path())?;
    identity.store(&store)?;

    // A serial the template's hook does not accept: refused, typed.
    let forged = ProvisionRequest::with_device_key(
        DeviceId::new("sensor-XX0001")?,
        Arc::new(SoftwareKey::generate_p256()?),
    )
    .parameter("SerialNumber", "XX0001");
    match aws
        .claim_provisioner(claim, "sensors")
        .provision(&forged)
        .await
    {
        Err(e) => println!("device: a forged serial is refused: {e}"),
        Ok(_) => panic!("the hook should refuse XX0001"),
    }

    // Every later boot: the stored identity, as the thing itself.
    let Credentials::X509(credential) = store.load()? else {
        unreachable!("fleet provisioning stores an X.509 identity")
    };
    let client = DeviceClient::builder(aws.dialect(), identity.device_id.clone())
        .credential(credential)
        .connect()
        .await?;
    let mut cloud = hub.subscribe("dt/+/telemetry")?;
    client
        .send_telemetry(Telemetry::new(r#"{"temperature": 21.5}"#))
        .await?;
    let m = tokio::time::timeout(Duration::from_secs(10), cloud.recv())
        .await
        .map_err(|_| fleetkit::Error::Timeout("telemetry did not arrive".into()))?
        .expect("hub running");
    println!(
        "cloud: {} says {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );
    let thing = hub
        .with_registry(|r| r.device("sensor-SN0042").cloned())
        .expect("registered by RegisterThing");
    println!("cloud: thing {} in groups {:?}", thing.id, thing.groups);
    client.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
