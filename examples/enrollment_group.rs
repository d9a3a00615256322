//! Enrollment groups: devices of a symmetric-key group prove membership with a key derived
//! from the group key (never the group key itself), and the allocation rule tells each one
//! which hub and device id to use. A token signed with the group key is refused.
//!
//! `cargo run --example enrollment_group`

use std::time::{Duration, SystemTime};

use fleetkit::identity::SymmetricKey;
use fleetkit::lifecycle::enrollment::{
    Allocation, EnrollmentGroup, EnrollmentGroups, Evidence, InitialDeviceSettings,
    derive_device_key, registration_sas,
};
use fleetkit::local::{DeviceRecord, LocalHub};

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    let hubs = [
        LocalHub::builder().start().await?,
        LocalHub::builder().start().await?,
    ];
    let endpoints: Vec<String> = hubs
        .iter()
        .map(|h| format!("localhost:{}", h.mqtt_addr().port()))
        .collect();

    // The service side: one group, keys derived per device, devices spread over two hubs.
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| fleetkit::Error::Crypto("no randomness".into()))?;
    let group_key = SymmetricKey::new(raw.to_vec())?;
    let mut groups = EnrollmentGroups::new();
    groups.add(
        EnrollmentGroup::symmetric_key(
            "sensors",
            "0ne00000001",
            group_key.clone(),
            Allocation::hashed(endpoints.clone())?,
        )?
        .with_initial(InitialDeviceSettings::new().with_group("sensors")),
    )?;

    // The factory derives each device's key; only that key goes on the device.
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    for id in ["sensor-0001", "sensor-0002", "sensor-0003", "sensor-0004"] {
        let device_key = derive_device_key(&group_key, id)?;
        let token = registration_sas("0ne00000001", id, &device_key, expiry)?;
        let registration = groups.attest(
            &Evidence::SymmetricKey {
                group: None,
                registration_id: id,
                sas_token: token.expose_secret(),
            },
            &serde_json::Value::Null,
            SystemTime::now(),
        )?;
        let hub = &hubs[endpoints
            .iter()
            .position(|e| *e == registration.assignment.endpoint)
            .expect("one of ours")];
        let mut record = DeviceRecord::new(&registration.assignment.device_id);
        for g in &registration.initial.groups {
            record = record.in_group(g);
        }
        hub.create_device(record)?;
        println!(
            "{id}: attested by group {}, assigned to {} as {}",
            registration.group, registration.assignment.endpoint, registration.assignment.device_id
        );
    }

    // Someone who extracted the group key from a device? Devices never hold it; and a token
    // signed with it is refused anyway.
    let forged = registration_sas("0ne00000001", "sensor-9999", &group_key, expiry)?;
    let refused = groups.attest(
        &Evidence::SymmetricKey {
            group: Some("sensors"),
            registration_id: "sensor-9999",
            sas_token: forged.expose_secret(),
        },
        &serde_json::Value::Null,
        SystemTime::now(),
    );
    match refused {
        Err(e) => println!("token signed with the group key: refused ({e})"),
        Ok(_) => println!("unexpected: accepted"),
    }
    Ok(())
}
