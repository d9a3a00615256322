//! Certificate rotation on a running device: new key, CSR, new certificate over the current
//! connection, staged, switched to, confirmed (the old certificate is retired), committed —
//! without dropping the device's queued telemetry.
//!
//! `cargo run --example rotate`

use std::time::Duration;

use fleetkit::device::{DeviceClient, NativeDialect, Telemetry};
use fleetkit::identity::{CredentialStore, Credentials, DeviceId};
use fleetkit::lifecycle::rotation::Rotator;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let hub = LocalHub::builder().start().await?;
    hub.put_policy("device", &builtin::native_device())?;
    hub.create_device(DeviceRecord::new("gateway-3"))?;
    hub.attach_policy("device", AttachTarget::Device("gateway-3".into()))?;
    let dir = tempfile::tempdir()?;
    let store = CredentialStore::open(dir.path())?;
    store.stage(&Credentials::X509(
        hub.issue_device_credential("gateway-3")?,
    ))?;
    store.commit()?;
    let Credentials::X509(credential) = store.load()? else {
        unreachable!()
    };
    let client = DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        DeviceId::new("gateway-3")?,
    )
    .credential(credential)
    .connect()
    .await?;
    let mut cloud = hub.subscribe("devices/+/telemetry")?;
    let receipts: Vec<_> = (0..5)
        .map(|i| client.queue_telemetry(Telemetry::new(format!("reading {i}"))))
        .collect::<fleetkit::Result<_>>()?;

    let report = Rotator::new(&client, &store)
        .on_step(|step| {
            println!("  {step:?}");
            Ok(())
        })
        .rotate()
        .await?;
    println!(
        "rotated {}… → {}… (old retired: {})",
        &report.old_certificate_id[..12],
        &report.new_certificate_id[..12],
        report.old_retired
    );
    for r in receipts {
        r.acknowledged().await?;
    }
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), cloud.recv()).await {
        seen += 1;
    }
    println!("queued telemetry delivered across the switch: {seen} messages");
    hub.with_registry(|r| {
        for c in r.certificates_of("gateway-3") {
            println!("  certificate {}… {:?}", &c.id[..12], c.state);
        }
    });
    client.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
