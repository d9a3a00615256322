//! A device program written with `fleetkit::aws`: it reports its state to its Device Shadow,
//! follows desired-state changes (deltas) and reports again until the shadow is in sync.
//! Against the local hub by default; against AWS IoT Core by configuration only (see
//! `examples/common/aws.rs`).
//!
//! `cargo run --example aws_shadow --features aws`

#[path = "common/aws.rs"]
mod common;

use std::time::Duration;

use fleetkit::device::DeviceClient;
use fleetkit::identity::DeviceId;
use fleetkit::local::dialect::aws::AwsHubDialect;
use serde_json::json;

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let target = common::target("thermostat-1", AwsHubDialect::new()).await?;

    // ---- the device program (the same against AWS IoT Core) ----
    let client = DeviceClient::builder(target.config.dialect(), DeviceId::new(&target.thing)?)
        .credential(target.credential.clone())
        .connect()
        .await?;
    let twin = client.twin();
    let mut deltas = twin.desired_changes()?;
    let version = twin
        .report(json!({"mode": "heat", "setpoint": 19.5, "firmware": "1.4.2"}))
        .await?;
    println!("device: reported its state (shadow version {version})");

    // ---- the cloud side changes the desired state (here: the hub; on AWS: the console,
    // UpdateThingShadow, or another app) ----
    if let Some(local) = &target.local {
        local.aws.update_shadow(
            &target.thing,
            None,
            &json!({"state": {"desired": {"mode": "heat", "setpoint": 21.0}}}),
        )?;
        println!("cloud: desired setpoint 21.0");
    }

    // ---- the device follows the delta and reports what it applied ----
    let change = tokio::time::timeout(Duration::from_secs(30), deltas.recv())
        .await
        .map_err(|_| fleetkit::Error::Timeout("no desired change within 30 s".into()))?
        .ok_or_else(|| fleetkit::Error::Unavailable("the client stopped".into()))?;
    println!(
        "device: delta at version {}: {}",
        change.version,
        serde_json::Value::Object(change.patch.clone())
    );
    twin.report(serde_json::Value::Object(change.patch.clone()))
        .await?;
    let doc = twin.get().await?;
    assert!(doc.delta().is_none(), "in sync after reporting the delta");
    println!(
        "device: in sync at version {}: reported {}",
        doc.version(),
        serde_json::Value::Object(doc.reported().clone())
    );
    // A stale conditional report is refused, typed, with both versions.
    match twin.report_if_version(json!({"setpoint": 5}), 1).await {
        Err(fleetkit::Error::Conflict {
            expected, current, ..
        }) => {
            println!("device: stale report refused (expected {expected}, shadow at {current})")
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    if let Some(local) = &target.local {
        println!(
            "cloud: connected things {:?}",
            local.hub.connected_clients()
        );
    }
    client.shutdown(Duration::from_secs(5)).await;

    if let Some(local) = &target.local {
        let shadow = local.aws.shadow_document(&target.thing, None)?;
        println!("cloud: GetThingShadow → {shadow}");
    }
    Ok(())
}
