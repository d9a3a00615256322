//! [`Allocation`]: which hub an attested device is sent to, and under which device id.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::{Error, Result};

/// Where a newly registered device should connect, and the device id it has there.
///
/// ```
/// use fleetkit::lifecycle::enrollment::Assignment;
/// let a = Assignment::new("hub-eu.example:8883", "sensor-1")?;
/// assert_eq!(a.endpoint, "hub-eu.example:8883");
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The hub the device should use: `host:port` or a URL (DPS's `assignedHub`).
    pub endpoint: String,
    /// The device's id on that hub (DPS's `deviceId`).
    pub device_id: String,
}

impl Assignment {
    /// An assignment to `endpoint` as `device_id`.
    ///
    /// Fails with [`Error::InvalidInput`] if either is empty or holds whitespace or control
    /// characters.
    pub fn new(endpoint: impl Into<String>, device_id: impl Into<String>) -> Result<Self> {
        let assignment = Assignment {
            endpoint: endpoint.into(),
            device_id: device_id.into(),
        };
        assignment.validate()?;
        Ok(assignment)
    }

    /// Checks an assignment: [`Allocation::allocate`] re-checks every one it returns, whichever
    /// variant made it (a `Static` endpoint can be empty).
    fn validate(&self) -> Result<()> {
        check_token("endpoint", &self.endpoint)?;
        check_token("device id", &self.device_id)
    }
}

fn check_token(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            format!("{value:?} contains whitespace or control characters"),
        ));
    }
    Ok(())
}

/// The signature of a [`Allocation::Custom`] function: registration id and the device's
/// registration payload (`Value::Null` when it sent none) in, assignment out.
pub type CustomAllocator = Arc<dyn Fn(&str, &Value) -> Result<Assignment> + Send + Sync>;

/// How an enrollment group decides a device's [`Assignment`] (DPS's allocation policies).
///
/// ```
/// use fleetkit::lifecycle::enrollment::{Allocation, Assignment};
/// use serde_json::Value;
///
/// let fixed = Allocation::static_endpoint("hub.example:8883");
/// assert_eq!(fixed.allocate("dev-1", &Value::Null)?.endpoint, "hub.example:8883");
///
/// // Evenly over several hubs, by a hash of the registration id that never changes.
/// let spread = Allocation::hashed(["hub-a:8883", "hub-b:8883"])?;
/// let first = spread.allocate("dev-1", &Value::Null)?;
/// assert_eq!(spread.allocate("dev-1", &Value::Null)?, first);
///
/// // Anything else: a function of the registration id and the device's payload.
/// let by_region = Allocation::custom(|id, payload| {
///     let region = payload["region"].as_str().unwrap_or("eu");
///     Assignment::new(format!("hub-{region}:8883"), format!("{region}-{id}"))
/// });
/// let us = by_region.allocate("dev-1", &serde_json::json!({"region": "us"}))?;
/// assert_eq!((us.endpoint.as_str(), us.device_id.as_str()), ("hub-us:8883", "us-dev-1"));
/// assert_eq!(format!("{by_region:?}"), "Custom(<custom>)");
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone)]
pub enum Allocation {
    /// Every device goes to `endpoint`; its device id is its registration id.
    Static {
        /// `host:port` or URL of the hub.
        endpoint: String,
    },
    /// Devices are spread evenly over `endpoints` by the SHA-256 of the registration id, so a
    /// device lands on the same hub in every process and after every restart. The device id is
    /// the registration id.
    Hashed {
        /// The hubs, in a fixed order: reordering them moves devices.
        endpoints: Vec<String>,
    },
    /// A function decides (DPS's custom allocation webhook, in process).
    Custom(CustomAllocator),
}

impl Allocation {
    /// [`Allocation::Static`] to `endpoint`.
    pub fn static_endpoint(endpoint: impl Into<String>) -> Self {
        Allocation::Static {
            endpoint: endpoint.into(),
        }
    }

    /// [`Allocation::Hashed`] over `endpoints`. Fails with [`Error::InvalidInput`] if there are
    /// none, one is empty, or one is listed twice.
    pub fn hashed(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        check_endpoints(&endpoints)?;
        Ok(Allocation::Hashed { endpoints })
    }

    /// [`Allocation::Custom`] with `allocate`.
    pub fn custom(
        allocate: impl Fn(&str, &Value) -> Result<Assignment> + Send + Sync + 'static,
    ) -> Self {
        Allocation::Custom(Arc::new(allocate))
    }

    /// Decides where the device registering as `registration_id`, with `payload`, goes.
    ///
    /// Errors from a custom function are returned as they are; an assignment it returns with an
    /// empty endpoint or device id is refused with [`Error::InvalidInput`].
    pub fn allocate(&self, registration_id: &str, payload: &Value) -> Result<Assignment> {
        let assignment = match self {
            Allocation::Static { endpoint } => Assignment {
                endpoint: endpoint.clone(),
                device_id: registration_id.to_owned(),
            },
            Allocation::Hashed { endpoints } => {
                check_endpoints(endpoints)?;
                Assignment {
                    endpoint: endpoints[hash_index(registration_id, endpoints.len())].clone(),
                    device_id: registration_id.to_owned(),
                }
            }
            Allocation::Custom(allocate) => allocate(registration_id, payload)?,
        };
        assignment.validate()?;
        Ok(assignment)
    }
}

fn check_endpoints(endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        return Err(Error::invalid(
            "endpoints",
            "a hashed allocation needs at least one",
        ));
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        check_token("endpoint", endpoint)?;
        if endpoints[..i].contains(endpoint) {
            return Err(Error::invalid(
                "endpoints",
                format!("{endpoint:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The first 8 bytes of SHA-256(registration id), big-endian, modulo `n`. The bias of a 64-bit
/// value modulo a small `n` is below 2^-50: even for any practical number of hubs.
pub(super) fn hash_index(registration_id: &str, n: usize) -> usize {
    let digest = ring::digest::digest(&ring::digest::SHA256, registration_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % n as u64) as usize
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Static { endpoint } => f
                .debug_struct("Static")
                .field("endpoint", endpoint)
                .finish(),
            Allocation::Hashed { endpoints } => f
                .debug_struct("Hashed")
                .field("endpoints", endpoints)
                .finish(),
            Allocation::Custom(_) => f.write_str("Custom(<custom>)"),
        }
    }
}
