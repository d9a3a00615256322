//! Direct methods on their own: the device answers, an unknown method gets 404, a slow
//! handler 504, and an offline device is a typed error on the cloud side.
//!
//! `cargo run --example methods`

use std::time::Duration;

use fleetkit::device::{DeviceClient, MethodResponse, NativeDialect};
use fleetkit::identity::DeviceId;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::json;

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let hub = LocalHub::builder().start().await?;
    hub.put_policy("device", &builtin::native_device())?;
    hub.create_device(DeviceRecord::new("pump-7"))?;
    hub.attach_policy("device", AttachTarget::Device("pump-7".into()))?;
    let credential = hub.issue_device_credential("pump-7")?;
    let pump = DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        DeviceId::new("pump-7")?,
    )
    .credential(credential)
    .connect()
    .await?;
    pump.on_method("set-flow", |args| async move {
        match args["litres_per_min"].as_f64() {
            Some(f) if (0.0..=50.0).contains(&f) => MethodResponse::ok(json!({"flow": f})),
            _ => MethodResponse::new(400, json!({"error": "litres_per_min must be 0-50"})),
        }
    });
    pump.on_method_with_timeout("self-test", Duration::from_millis(200), |_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        MethodResponse::ok(json!("passed"))
    });
    let wait = Duration::from_secs(5);
    for (method, args) in [
        ("set-flow", json!({"litres_per_min": 12.5})),
        ("set-flow", json!({"litres_per_min": 99})),
        ("calibrate", json!({})),
        ("self-test", json!({})),
    ] {
        let r = hub
            .invoke_method("pump-7", method, args.clone(), wait)
            .await?;
        println!("{method}({args}) → {} {}", r.status, r.payload);
    }
    pump.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    match hub
        .invoke_method("pump-7", "set-flow", json!({}), wait)
        .await
    {
        Err(e) => println!("after the pump went away: {e}"),
        Ok(r) => println!("unexpected answer {r:?}"),
    }
    Ok(())
}
