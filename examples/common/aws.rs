//! Where the AWS examples run: against the local hub speaking AWS's dialect (the default), or
//! against AWS IoT Core when the environment names an endpoint and a device identity:
//!
//! | variable | meaning |
//! |---|---|
//! | `AWS_IOT_ENDPOINT` | the data endpoint, `<prefix>-ats.iot.<region>.amazonaws.com` |
//! | `AWS_REGION` | its region |
//! | `AWS_CA_BUNDLE` | Amazon's root (AmazonRootCA1.pem) |
//! | `FLEETKIT_THING` | the thing name (the client id) |
//! | `FLEETKIT_DEVICE_CERT`, `FLEETKIT_DEVICE_KEY` | the thing's certificate and key (PEM) |
//!
//! The device code after this point is the same in both cases.

use std::sync::Arc;

use fleetkit::aws::{AwsIot, AwsTransport};
use fleetkit::identity::{SoftwareKey, X509Credential};
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};

/// The local side, when the example runs offline.
pub struct LocalSide {
    pub hub: LocalHub,
    pub aws: Arc<AwsHubDialect>,
}

/// Where the device connects, as whom.
pub struct Target {
    pub config: AwsIot,
    pub thing: String,
    pub credential: X509Credential,
    pub local: Option<LocalSide>,
}

/// The target for `thing`: AWS IoT Core if `AWS_IOT_ENDPOINT` is set, else a local hub
/// speaking AWS's dialect, with `thing` registered under fleetkit's AWS device policy.
pub async fn target(thing: &str, hub_dialect: AwsHubDialect) -> fleetkit::Result<Target> {
    if std::env::var_os("AWS_IOT_ENDPOINT").is_some() {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| fleetkit::Error::invalid(name, "must be set"))
        };
        let key = SoftwareKey::from_pem(&std::fs::read_to_string(var("FLEETKIT_DEVICE_KEY")?)?)?;
        let chain = std::fs::read_to_string(var("FLEETKIT_DEVICE_CERT")?)?;
        let credential = X509Credential::from_pem(&chain, Arc::new(key))?;
        let config = fleetkit::aws::AwsIotBuilder::from_env().build()?;
        println!("target: AWS IoT Core at {}", config.endpoint());
        return Ok(Target {
            config,
            thing: var("FLEETKIT_THING")?,
            credential,
            local: None,
        });
    }
    let aws = Arc::new(hub_dialect);
    let hub = LocalHub::builder()
        .dialect_shared(aws.clone())
        .start()
        .await?;
    hub.put_policy("device", &builtin::aws_device())?;
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))?;
    hub.create_device(DeviceRecord::new(thing).in_group("fleet"))?;
    let credential = hub.issue_device_credential(thing)?;
    // As on AWS's port 443: ALPN x-amzn-mqtt-ca.
    let config = AwsIot::builder()
        .region("us-east-1")
        .endpoint("localhost")
        .transport(AwsTransport::MqttAlpn443)
        .port(hub.mqtt_addr().port())
        .root_ca(hub.ca_certificate())
        .build()?;
    println!(
        "target: local hub (AWS dialect) at {} — set AWS_IOT_ENDPOINT to use AWS IoT Core",
        hub.mqtt_addr()
    );
    Ok(Target {
        config,
        thing: thing.to_string(),
        credential,
        local: Some(LocalSide { hub, aws }),
    })
}
