//! Portable authorization: AWS IoT policy compatible, compiled, explained.
//!
//! - [`PolicyDocument`]: AWS IoT policy JSON (`Version`, `Statement[]` of `Effect`, `Action`,
//!   `Resource`, `Condition`), parsed with errors that name the statement and field, and written
//!   back so it round-trips.
//! - [`PolicyEngine`]: named, versioned policies compiled once into matchers; attachments to
//!   certificates, devices, thing groups (inherited by descendants) and token scopes.
//! - [`Principal`]: a principal with its effective policies resolved. [`Principal::authorize`]
//!   decides a [`Request`] with AWS semantics — default deny, explicit deny wins — and returns
//!   a [`Decision`] naming the deciding statement, whose `Display` explains it.
//! - [`audit`]: AWS IoT Device Defender's policy checks, offline: [`audit::audit`] reports
//!   overly permissive and misconfigured statements with severity, reason and fix.
//! - [`builtin`]: ready-made policies — Azure IoT Hub and GCP device rules, AWS's thing-scoped
//!   least privilege, and a claim certificate's provisioning-only policy.
//!
//! Wildcards follow AWS IoT: `*` and `?` as in IAM (`*` crosses `/`); MQTT's `+` and `#` are
//! literal characters inside policies. Policy variables (`${iot:ClientId}`,
//! `${iot:Connection.Thing.ThingName}`, `${iot:Connection.Thing.Attributes[name]}`,
//! `${iot:Certificate.Subject.CommonName}`, …, and the portable `${fleetkit:DeviceId}`) are
//! substituted *literally*: a device id containing `*` or `#` never widens a pattern. A variable
//! without a value makes its resource entry match nothing, as AWS documents ("this variable won't
//! be resolved and will result in an access denied error").
//!
//! A decision consults only the policies attached to the principal and allocates nothing, so its
//! cost does not grow with the fleet.

pub mod audit;
pub mod builtin;
mod context;
mod engine;
mod model;
mod pattern;
mod vars;

pub use context::{
    CertificateContext, ConnectAttributes, PrincipalContext, Request, ResourceKind, ThingContext,
};
pub use engine::{
    AttachTarget, Decision, EngineSnapshot, MAX_POLICY_VERSIONS, Outcome, Partition, PolicyEngine,
    PolicyInfo, PolicySnapshot, Principal,
};
pub use model::{
    Action, Condition, ConditionOperator, Effect, MAX_POLICY_CHARS, PolicyDocument, SetQualifier,
    Statement,
};
