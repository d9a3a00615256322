//! The twin on its own: a device reports state, the cloud side changes desired properties,
//! the device follows them, and a stale conditional update is refused.
//!
//! `cargo run --example twin`

use std::time::Duration;

use fleetkit::Error;
use fleetkit::device::{DeviceClient, NativeDialect};
use fleetkit::identity::DeviceId;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let hub = LocalHub::builder().start().await?;
    hub.put_policy("device", &builtin::native_device())?;
    hub.create_device(DeviceRecord::new("lamp-1"))?;
    hub.attach_policy("device", AttachTarget::Device("lamp-1".into()))?;
    let credential = hub.issue_device_credential("lamp-1")?;
    let lamp = DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        DeviceId::new("lamp-1")?,
    )
    .credential(credential)
    .connect()
    .await?;
    let twin = lamp.twin();
    let mut desired = twin.desired_changes()?;

    let v = twin.report(json!({"on": false, "brightness": 40})).await?;
    println!("lamp reported {{on: false, brightness: 40}} → version {v}");

    // The cloud side wants it on.
    hub.update_desired("lamp-1", json!({"on": true, "brightness": 80}), None)
        .await?;
    let change = tokio::time::timeout(Duration::from_secs(5), desired.recv())
        .await
        .map_err(|_| Error::Timeout("no desired change".into()))?
        .expect("client running");
    println!(
        "lamp sees desired {} (version {})",
        Value::Object(change.patch.clone()),
        change.version
    );
    let v = twin.report(Value::Object(change.patch)).await?;
    println!("lamp follows it → version {v}");
    let doc = twin.get().await?;
    println!(
        "delta now: {}",
        doc.delta()
            .map(|d| Value::Object(d).to_string())
            .unwrap_or_else(|| "none (in sync)".into())
    );

    // Optimistic concurrency: an update based on an old version is refused, nothing changes.
    match twin.report_if_version(json!({"on": false}), v - 1).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => println!("stale update refused: expected version {expected}, twin is at {current}"),
        other => println!("unexpected: {other:?}"),
    }
    lamp.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
