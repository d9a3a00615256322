//! Offline policy audit: AWS IoT Device Defender's policy checks, run on a document — no cloud
//! account, no registry, no connection data.
//!
//! [`audit`] reads one [`PolicyDocument`] and returns [`Finding`]s, most severe first;
//! [`audit_engine`] does the same for every policy in a [`PolicyEngine`]. A finding names its
//! [`Check`] (with the AWS check and reason code it corresponds to), a [`Severity`], the
//! statement (numbered from 1, as in decision explanations), the resource or action concerned,
//! what is wrong and how to fix it.
//!
//! # Findings
//!
//! | [`Check`] | severity | AWS check (reason code) | when |
//! |---|---|---|---|
//! | [`BroadDataPlaneAccess`](Check::BroadDataPlaneAccess) | Critical | `IOT_POLICY_OVERLY_PERMISSIVE_CHECK` (`ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS`) | an Allow of data-plane actions on `*`, on a resource type that is a wildcard, on a name that starts with a wildcard (`topic/*`, `thing/*`, `topicfilter/#`) and has no policy variable, or `iot:*` on any resource [`CrossDeviceAccess`](Check::CrossDeviceAccess) would flag |
//! | [`CrossDeviceAccess`](Check::CrossDeviceAccess) | High | same | an Allow of Publish/Subscribe/retained/shadow/jobs actions on a topic, topic filter or thing whose name has a wildcard (in a topic filter, `+` and `#` count: a device may subscribe to that filter) and no policy variable, under a prefix that is not device-specific |
//! | [`BroadReceive`](Check::BroadReceive) | Low | same (AWS rates it compliant) | as the two above, but the only broad action is `iot:Receive` |
//! | [`ClientIdTakeover`](Check::ClientIdTakeover) | High | same (the cause of `CONFLICTING_CLIENT_IDS_CHECK` findings) | `iot:Connect` allowed on `*`, on `client/*`, on any client pattern with a wildcard and no identity variable, on `client/${iot:ClientId}`, or on a value many devices share (`${iot:Connection.Thing.ThingTypeName}`), without the `iot:Connection.Thing.IsAttached` condition |
//! | [`SharedClaimClientIds`](Check::SharedClaimClientIds) | Low | same | `iot:Connect` on the claim namespace `client/claim-*` ([`CLAIM_CLIENT_ID_PREFIX`]) |
//! | [`ConnectWithoutIsAttached`](Check::ConnectWithoutIsAttached) | Low | same | `iot:Connect` scoped by a thing variable without `Bool iot:Connection.Thing.IsAttached = true` (AWS's compliant example has it) |
//! | [`UnanchoredVariable`](Check::UnanchoredVariable) | Medium | same (fleetkit) | a policy variable shares a level with a wildcard (`sensors/${…ThingName}*`, `client/${fleetkit:DeviceId}-*`): device `a` also reaches device `ab`'s resources |
//! | [`ClientIdWidensTopicFilter`](Check::ClientIdWidensTopicFilter) | Medium (Low if the policy grants no Connect) | `IOT_POLICY_POTENTIAL_MISCONFIGURATION_CHECK` (fleetkit) | `${iot:ClientId}` in an allowed topic filter while `iot:Connect` is not restricted (to an identity variable, by the `IsAttached` condition, or to literal ids without `+`/`#`): a client id containing `+`/`#` widens the filter (PROTOCOLS.md §1.5) |
//! | [`MqttWildcardsInDeny`](Check::MqttWildcardsInDeny) | Medium | `IOT_POLICY_POTENTIAL_MISCONFIGURATION_CHECK` (`POLICY_CONTAINS_MQTT_WILDCARDS_IN_DENY_STATEMENT`) | `+` or `#` in a Deny resource: they are literal, so the Deny covers far less than intended |
//! | [`DenyBypassedByWildcardFilter`](Check::DenyBypassedByWildcardFilter) | Medium | same (`TOPIC_FILTERS_INTENDED_TO_DENY_ALLOWED_USING_WILDCARDS`) | a Deny of `iot:Subscribe` on some filters while an Allow lets the device subscribe to a wider filter (`building/#`) that receives the same topics, and no Deny of `iot:Receive` stops them |
//! | [`VariableInDeny`](Check::VariableInDeny) | Low | same (fleetkit) | a Deny resource with a policy variable: when the variable has no value for a principal the Deny matches nothing (fail-open) |
//! | [`ResourceTypeMismatch`](Check::ResourceTypeMismatch) | Low (Allow), Medium (Deny) | same (fleetkit) | a resource type none of the statement's actions uses (`iot:Publish` on `topicfilter/…`): the entry grants or denies nothing |
//!
//! # Heuristics
//!
//! The audit looks at resource *shapes*, not at a fleet, so it has to guess what is
//! device-specific. The rules, kept simple on purpose:
//!
//! - A resource name is **scoped** when it holds a policy variable in a level of its own (no
//!   `*`/`?` between the variable and the neighbouring `/`): `$aws/things/${…ThingName}/*`,
//!   `projects/*/…/devices/${fleetkit:DeviceId}`. Any variable counts for topics, filters and
//!   things (`${iot:ClientId}` included: its own risk is [`ClientIdWidensTopicFilter`]); for
//!   `iot:Connect`, `${iot:ClientId}` and values many devices share (thing type, `IsAttached`,
//!   issuer, subject organisation/unit/country/state/locality) do not.
//! - Otherwise the name **opens** at its first `*` or `?` (or `+`/`#` in a topic filter); the
//!   literal text before it is the *prefix*. An empty prefix is Critical.
//! - A prefix is **device-specific** when, after a known per-device namespace (`$aws/things/`,
//!   Azure's `devices/`, GCP's `/devices/`; for things, the thing name itself), it holds a whole
//!   literal level: `$aws/things/MyThing/shadow/*` is fine, `$aws/things/*` and
//!   `$aws/things/My*` are not. Any other prefix (`sensors/*`, even `sensors/dev-1/*`) is
//!   reported: the audit cannot tell a device name from a topic category.
//! - Topics under **per-connection** namespaces are not reported: Azure's `$iothub/` (twin and
//!   method topics, kept per connection by IoT Hub and by the hub's Azure dialect) and AWS fleet
//!   provisioning's `$aws/certificates/` and `$aws/provisioning-templates/` (request/response
//!   topics whose answers go to the requesting connection only).
//! - `iot:Receive` alone on broad topics is only Low: AWS rates it compliant because a device
//!   receives only what it may subscribe to; it still matters when Subscribe is narrowed later
//!   and persistent sessions keep their old subscriptions.
//! - Conditions are not credited, except `Bool iot:Connection.Thing.IsAttached = true` on
//!   `iot:Connect` (it ties the client id to the certificate's thing, as AWS documents).
//! - `iot:ListRetainedMessages` is never reported: `*` is its only resource.
//! - The document is assumed valid ([`PolicyDocument::validate`]); actions and resources that
//!   do not parse are skipped.
//!
//! # Out of scope
//!
//! The other checks of SECURITY.md §6 need data a policy document does not hold:
//!
//! | AWS check | needs | where |
//! |---|---|---|
//! | `CONFLICTING_CLIENT_IDS_CHECK`, `DEVICE_CERTIFICATE_SHARED_CHECK` | live connections | the hub's connection log ([`ClientIdTakeover`] reports the policy that permits the first) |
//! | `DEVICE_CERTIFICATE_EXPIRING_CHECK`, `DEVICE_CERTIFICATE_AGE_CHECK`, `CA_CERTIFICATE_EXPIRING_CHECK`, `DEVICE_CERTIFICATE_KEY_QUALITY_CHECK`, `CA_CERTIFICATE_KEY_QUALITY_CHECK`, `REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK`, `REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK`, `INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK` | certificates, CRLs and their registry status | the credential-lifecycle work |
//! | `UNAUTHENTICATED_COGNITO_ROLE_OVERLY_PERMISSIVE_CHECK`, `AUTHENTICATED_COGNITO_ROLE_OVERLY_PERMISSIVE_CHECK`, `IOT_ROLE_ALIAS_OVERLY_PERMISSIVE_CHECK`, `IOT_ROLE_ALIAS_ALLOWS_ACCESS_TO_UNUSED_SERVICES_CHECK` | IAM role policies and service usage | not modelled (fleetkit has no IAM) |
//! | `LOGGING_DISABLED_CHECK` | account / hub configuration | the hub |
//!
//! ```
//! use fleetkit::policy::PolicyDocument;
//! use fleetkit::policy::audit::{Check, Severity, audit};
//!
//! let doc = PolicyDocument::from_json(
//!     r#"{"Version": "2012-10-17",
//!         "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#,
//! )?;
//! let findings = audit("wide-open", &doc);
//! assert_eq!(findings[0].severity, Severity::Critical);
//! assert_eq!(findings[0].check, Check::BroadDataPlaneAccess);
//! assert_eq!(findings[0].check.aws_name(), "IOT_POLICY_OVERLY_PERMISSIVE_CHECK");
//! assert_eq!(findings[0].statement, 1);
//! # Ok::<(), fleetkit::Error>(())
//! ```
//!
//! [`PolicyEngine`]: super::PolicyEngine
//! [`CLAIM_CLIENT_ID_PREFIX`]: super::builtin::CLAIM_CLIENT_ID_PREFIX
//! [`ClientIdWidensTopicFilter`]: Check::ClientIdWidensTopicFilter
//! [`ClientIdTakeover`]: Check::ClientIdTakeover

use std::fmt;

use super::builtin::CLAIM_CLIENT_ID_PREFIX;
use super::context::Scope;
use super::engine::PolicyEngine;
use super::model::{Action, ConditionOperator, Effect, PolicyDocument, Statement, action_mask};
use super::pattern::{Haystack, Match, Pattern, Token};
use super::vars::{DnAttr, Names, Var, VarDisplay, parse_pattern_with};

/// How urgent a finding is, on Device Defender's scale (ordered: `Low < … < Critical`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; fix as part of routine maintenance.
    Low,
    /// Needs attention; may cause unintended access or ineffective rules.
    Medium,
    /// Gives access to or control of other devices, with some effort.
    High,
    /// Gives any holder of the policy broad access to the fleet's data plane.
    Critical,
}

impl Severity {
    /// The severity's name as Device Defender writes it (`CRITICAL`, …).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a finding is about. See the [module docs](self) for when each is reported.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    /// Data-plane actions allowed on every resource, or on every resource of a type.
    BroadDataPlaneAccess,
    /// Topics, filters or things of every device under a prefix allowed without a variable.
    CrossDeviceAccess,
    /// `iot:Receive` alone allowed on broad topics.
    BroadReceive,
    /// `iot:Connect` allowed for client ids other devices use: client-id takeover.
    ClientIdTakeover,
    /// `iot:Connect` on the claim namespace: claim sessions share client ids.
    SharedClaimClientIds,
    /// `iot:Connect` scoped by a thing variable without the `IsAttached` condition.
    ConnectWithoutIsAttached,
    /// A policy variable sharing a level with a wildcard.
    UnanchoredVariable,
    /// `${iot:ClientId}` in an allowed topic filter while client ids are unrestricted.
    ClientIdWidensTopicFilter,
    /// MQTT wildcards (`+`, `#`) in a Deny resource, where they are literal.
    MqttWildcardsInDeny,
    /// A Deny of some topic filters that a wider allowed filter gets around.
    DenyBypassedByWildcardFilter,
    /// A Deny resource with a policy variable (fails open when it has no value).
    VariableInDeny,
    /// A resource type none of the statement's actions uses.
    ResourceTypeMismatch,
}

impl Check {
    /// Every check, in the order of the module docs.
    pub const ALL: [Check; 12] = [
        Check::BroadDataPlaneAccess,
        Check::CrossDeviceAccess,
        Check::BroadReceive,
        Check::ClientIdTakeover,
        Check::SharedClaimClientIds,
        Check::ConnectWithoutIsAttached,
        Check::UnanchoredVariable,
        Check::ClientIdWidensTopicFilter,
        Check::MqttWildcardsInDeny,
        Check::DenyBypassedByWildcardFilter,
        Check::VariableInDeny,
        Check::ResourceTypeMismatch,
    ];

    /// fleetkit's name for the check, e.g. `broad-data-plane-access`.
    pub fn name(self) -> &'static str {
        match self {
            Check::BroadDataPlaneAccess => "broad-data-plane-access",
            Check::CrossDeviceAccess => "cross-device-access",
            Check::BroadReceive => "broad-receive",
            Check::ClientIdTakeover => "client-id-takeover",
            Check::SharedClaimClientIds => "shared-claim-client-ids",
            Check::ConnectWithoutIsAttached => "connect-without-is-attached",
            Check::UnanchoredVariable => "unanchored-variable",
            Check::ClientIdWidensTopicFilter => "client-id-widens-topic-filter",
            Check::MqttWildcardsInDeny => "mqtt-wildcards-in-deny",
            Check::DenyBypassedByWildcardFilter => "deny-bypassed-by-wildcard-filter",
            Check::VariableInDeny => "variable-in-deny",
            Check::ResourceTypeMismatch => "resource-type-mismatch",
        }
    }

    /// The AWS IoT Device Defender audit check this finding belongs to (for fleetkit-only
    /// findings, the closest one; see [`reported_by_aws`](Self::reported_by_aws)).
    pub fn aws_name(self) -> &'static str {
        match self {
            Check::BroadDataPlaneAccess
            | Check::CrossDeviceAccess
            | Check::BroadReceive
            | Check::ClientIdTakeover
            | Check::SharedClaimClientIds
            | Check::ConnectWithoutIsAttached
            | Check::UnanchoredVariable => "IOT_POLICY_OVERLY_PERMISSIVE_CHECK",
            Check::ClientIdWidensTopicFilter
            | Check::MqttWildcardsInDeny
            | Check::DenyBypassedByWildcardFilter
            | Check::VariableInDeny
            | Check::ResourceTypeMismatch => "IOT_POLICY_POTENTIAL_MISCONFIGURATION_CHECK",
        }
    }

    /// The AWS reason code, for findings AWS reports with one.
    pub fn reason_code(self) -> Option<&'static str> {
        match self {
            Check::BroadDataPlaneAccess | Check::CrossDeviceAccess | Check::ClientIdTakeover => {
                Some("ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS")
            }
            Check::MqttWildcardsInDeny => Some("POLICY_CONTAINS_MQTT_WILDCARDS_IN_DENY_STATEMENT"),
            Check::DenyBypassedByWildcardFilter => {
                Some("TOPIC_FILTERS_INTENDED_TO_DENY_ALLOWED_USING_WILDCARDS")
            }
            _ => None,
        }
    }

    /// Whether Device Defender itself reports this (the others are fleetkit's additions).
    pub fn reported_by_aws(self) -> bool {
        self.reason_code().is_some()
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem found in a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem.
    pub check: Check,
    /// How urgent.
    pub severity: Severity,
    /// The statement, numbered from 1.
    pub statement: usize,
    /// The resource entry (or, for action problems, the action) concerned, as written.
    pub resource_or_action: String,
    /// What is wrong, in a sentence or two.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): statement {} `{}`: {} Fix: {}",
            self.severity,
            self.check.aws_name(),
            self.check,
            self.statement,
            self.resource_or_action,
            self.message,
            self.fix
        )
    }
}

/// Audits one policy document; findings come most severe first, then in statement order.
///
/// `name` is the policy's name, used in the suggested fixes.
///
/// ```
/// use fleetkit::policy::{PolicyDocument, Statement};
/// use fleetkit::policy::audit::{audit, Check, Severity};
/// use fleetkit::policy::builtin;
///
/// let doc = PolicyDocument::new(vec![
///     Statement::allow(&["iot:Connect"], &["arn:aws:iot:*:*:client/*"]),
///     Statement::allow(&["iot:Publish"], &["arn:aws:iot:*:*:topic/sensors/*"]),
/// ]);
/// let findings = audit("sensors", &doc);
/// assert_eq!(findings.len(), 2);
/// assert!(findings.iter().all(|f| f.severity == Severity::High));
/// assert_eq!(findings[0].check, Check::ClientIdTakeover);
/// assert!(findings[0].fix.contains("${iot:Connection.Thing.ThingName}"));
/// assert_eq!(findings[1].check, Check::CrossDeviceAccess);
///
/// // The least-privilege version is clean.
/// assert!(audit("thing", &builtin::aws_thing_scoped()).is_empty());
/// ```
pub fn audit(name: &str, doc: &PolicyDocument) -> Vec<Finding> {
    let statements: Vec<Parsed<'_>> = doc.statements.iter().map(Parsed::new).collect();
    let mut out = Vec::new();
    for (i, p) in statements.iter().enumerate() {
        let n = i + 1;
        type_mismatch(n, p, &mut out);
        match p.st.effect {
            Effect::Allow => allow_checks(name, n, p, &mut out),
            Effect::Deny => deny_checks(n, p, &statements, &mut out),
        }
    }
    client_id_in_filters(&statements, &mut out);
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.statement.cmp(&b.statement))
    });
    out
}

/// Audits every policy (its default version) in `engine`: `(policy name, finding)` pairs,
/// most severe first, then by policy name and statement.
///
/// ```
/// use fleetkit::policy::{Partition, PolicyEngine, builtin};
/// use fleetkit::policy::audit::audit_engine;
///
/// let mut engine = PolicyEngine::new(Partition::local());
/// engine.put_policy("azure-device", &builtin::azure_device())?;
/// engine.put_policy("gcp-device", &builtin::gcp_device())?;
/// assert!(audit_engine(&engine).is_empty());
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub fn audit_engine(engine: &PolicyEngine) -> Vec<(String, Finding)> {
    let mut out: Vec<(String, Finding)> = Vec::new();
    for name in engine.policy_names() {
        let Ok(info) = engine.policy(&name) else {
            continue;
        };
        out.extend(
            audit(&name, &info.document)
                .into_iter()
                .map(|f| (name.clone(), f)),
        );
    }
    // Stable: ties keep policy-name order (names come sorted) and statement order.
    out.sort_by_key(|(_, f)| std::cmp::Reverse(f.severity));
    out
}

// ---------------------------------------------------------------------------------------------
// Resources

/// The resource types, as far as the audit distinguishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Client,
    Topic,
    TopicFilter,
    Thing,
    ProvisioningTemplate,
    /// `thinggroup`, `rolealias`, `cert`: no fleetkit action uses them.
    Other,
}

impl Kind {
    fn from_type(t: &str) -> Kind {
        match t {
            "client" => Kind::Client,
            "topic" => Kind::Topic,
            "topicfilter" => Kind::TopicFilter,
            "thing" => Kind::Thing,
            "provisioningtemplate" => Kind::ProvisioningTemplate,
            _ => Kind::Other,
        }
    }

    /// The actions whose requests name a resource of this kind, as a bit mask.
    fn actions(self) -> u32 {
        Action::ALL
            .into_iter()
            .filter(|a| kind_of(*a) == Some(self))
            .fold(0, |m, a| m | a.bit())
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Client => "client id",
            Kind::Topic => "topic",
            Kind::TopicFilter => "topic filter",
            Kind::Thing => "thing",
            Kind::ProvisioningTemplate => "provisioning template",
            Kind::Other => "resource",
        }
    }
}

/// The kind of resource `action` is authorized on (`None`: only `*`). Exhaustive on purpose,
/// so a new action must be placed here.
fn kind_of(action: Action) -> Option<Kind> {
    match action {
        Action::Connect => Some(Kind::Client),
        Action::Publish | Action::Receive | Action::RetainPublish | Action::GetRetainedMessage => {
            Some(Kind::Topic)
        }
        Action::Subscribe => Some(Kind::TopicFilter),
        Action::ListRetainedMessages => None,
        Action::GetThingShadow
        | Action::UpdateThingShadow
        | Action::DeleteThingShadow
        | Action::ListNamedShadowsForThing
        | Action::DescribeJobExecution
        | Action::GetPendingJobExecutions
        | Action::UpdateJobExecution
        | Action::StartNextPendingJobExecution
        | Action::InvokeMethod
        | Action::SendCommand
        | Action::UpdateDesired => Some(Kind::Thing),
        Action::Provision => Some(Kind::ProvisioningTemplate),
    }
}

/// Data-plane actions whose breadth matters (not Connect, which has its own check; not
/// Receive, gated by Subscribe; not ListRetainedMessages, whose only resource is `*`).
fn broad_mask() -> u32 {
    Action::ALL
        .into_iter()
        .filter(|a| {
            a.is_data_plane()
                && !matches!(
                    a,
                    Action::Connect | Action::Receive | Action::ListRetainedMessages
                )
        })
        .fold(0, |m, a| m | a.bit())
}

/// One resource entry, split.
enum Target {
    /// `*`, or an ARN whose resource type is a wildcard: everything.
    Everything,
    /// `<head><name>` where `head` is `arn:…:<type>/`.
    Typed {
        kind: Kind,
        head_len: usize,
        name: Pattern,
        names: Names,
    },
}

impl Target {
    fn parse(raw: &str) -> Option<Target> {
        if raw == "*" {
            return Some(Target::Everything);
        }
        let rest = raw.splitn(6, ':').nth(5)?;
        let start = raw.len() - rest.len();
        let (ty, name, head_len) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..], start + slash + 1),
            None => (rest, "", raw.len()),
        };
        if ty.contains(['*', '?']) {
            return Some(Target::Everything);
        }
        let mut names = Names::default();
        let name = parse_pattern_with(name, &mut names).ok()?;
        Some(Target::Typed {
            kind: Kind::from_type(ty),
            head_len,
            name,
            names,
        })
    }
}

/// A statement with its actions and resources parsed.
struct Parsed<'a> {
    st: &'a Statement,
    mask: u32,
    targets: Vec<(&'a str, Target)>,
    /// Has `Bool iot:Connection.Thing.IsAttached = true`.
    is_attached: bool,
    /// Names `*` or `iot:*` as an action.
    all_actions: bool,
}

impl<'a> Parsed<'a> {
    fn new(st: &'a Statement) -> Self {
        Parsed {
            st,
            mask: st
                .actions
                .iter()
                .filter_map(|a| action_mask(a).ok())
                .fold(0, |m, b| m | b),
            targets: st
                .resources
                .iter()
                .filter_map(|r| Some((r.as_str(), Target::parse(r)?)))
                .collect(),
            is_attached: st.conditions.iter().any(|c| {
                c.qualifier.is_none()
                    && c.operator == ConditionOperator::Bool
                    && c.key == "iot:Connection.Thing.IsAttached"
                    && !c.values.is_empty()
                    && c.values.iter().all(|v| v == "true")
            }),
            all_actions: st.actions.iter().any(|a| a == "*" || a == "iot:*"),
        }
    }

    fn has(&self, action: Action) -> bool {
        self.mask & action.bit() != 0
    }

    /// The actions among `mask` this statement names, for messages.
    fn actions_text(&self, mask: u32) -> String {
        let names: Vec<&str> = Action::ALL
            .into_iter()
            .filter(|a| mask & a.bit() != 0)
            .map(Action::name)
            .collect();
        if names.len() > 4 {
            format!("{} ({} actions)", self.st.actions.join(", "), names.len())
        } else {
            names.join(", ")
        }
    }
}

/// Whether `var` has one value for many devices (so it cannot make a client id unique).
fn is_shared(var: Var) -> bool {
    match var {
        Var::ThingTypeName | Var::IsAttached | Var::Issuer(_) => true,
        Var::Subject(attr) => matches!(
            attr,
            DnAttr::Organization
                | DnAttr::OrganizationalUnit
                | DnAttr::Country
                | DnAttr::State
                | DnAttr::Locality
        ),
        _ => false,
    }
}

fn is_thing_var(var: Var) -> bool {
    matches!(
        var,
        Var::ThingName | Var::ThingTypeName | Var::ThingAttribute(_)
    )
}

/// What a resource name looks like to the audit.
struct Shape {
    /// Literal text before the first point where the name opens up (`*`, `?`, a loose
    /// variable, or `+`/`#` in a topic filter); `None` when it never does.
    open_prefix: Option<String>,
    /// Variables that tie the resource to one principal, each with whether it has its level
    /// to itself.
    binding: Vec<(Var, bool)>,
    /// Variables that do not (for Connect: `iot:ClientId` and shared values).
    loose: Vec<Var>,
}

impl Shape {
    fn of(kind: Kind, name: &Pattern) -> Shape {
        let loose = |v: Var| kind == Kind::Client && (v == Var::ClientId || is_shared(v));
        let tokens = name.tokens();
        if name.is_match_all() {
            return Shape {
                open_prefix: Some(String::new()),
                binding: Vec::new(),
                loose: Vec::new(),
            };
        }
        let mut prefix: Vec<u8> = Vec::new();
        let mut open = false;
        for t in tokens {
            match t {
                Token::Literal(lit) => {
                    let mqtt = if kind == Kind::TopicFilter {
                        lit.iter().position(|b| matches!(b, b'+' | b'#'))
                    } else {
                        None
                    };
                    if let Some(at) = mqtt {
                        prefix.extend_from_slice(&lit[..at]);
                        open = true;
                        break;
                    }
                    prefix.extend_from_slice(lit);
                }
                Token::Var(v) if !loose(*v) => break,
                Token::Var(_) | Token::Star | Token::AnyChar => {
                    open = true;
                    break;
                }
            }
        }
        let is_wild = |t: &Token| match t {
            Token::Star | Token::AnyChar => true,
            Token::Var(v) => loose(*v),
            Token::Literal(_) => false,
        };
        let mut binding = Vec::new();
        let mut loose_vars = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if let Token::Var(v) = t {
                if loose(*v) {
                    loose_vars.push(*v);
                } else {
                    binding.push((*v, anchored(tokens, i, &is_wild)));
                }
            }
        }
        Shape {
            open_prefix: open.then(|| String::from_utf8_lossy(&prefix).into_owned()),
            binding,
            loose: loose_vars,
        }
    }

    fn anchored_var(&self) -> Option<Var> {
        self.binding.iter().find(|(_, a)| *a).map(|(v, _)| *v)
    }
}

/// Whether token `i` (a variable) has its level to itself: between it and the nearest `/` on
/// each side there is no wildcard.
fn anchored(tokens: &[Token], i: usize, is_wild: &dyn Fn(&Token) -> bool) -> bool {
    fn side<'t>(
        mut iter: impl Iterator<Item = &'t Token>,
        is_wild: &dyn Fn(&Token) -> bool,
    ) -> bool {
        iter.find_map(|t| match t {
            Token::Literal(l) if l.contains(&b'/') => Some(true),
            t if is_wild(t) => Some(false),
            _ => None,
        })
        .unwrap_or(true)
    }
    side(tokens[..i].iter().rev(), is_wild) && side(tokens[i + 1..].iter(), is_wild)
}

/// Namespaces whose next level is a device (thing) name.
const DEVICE_NAMESPACES: [&str; 3] = ["$aws/things/", "devices/", "/devices/"];

/// Namespaces whose topics are answered per connection (see the module docs).
const PER_CONNECTION: [&str; 3] = [
    "$iothub/",
    "$aws/certificates/",
    "$aws/provisioning-templates/",
];

fn device_specific(kind: Kind, prefix: &str) -> bool {
    let rest = match kind {
        Kind::Thing => Some(prefix),
        Kind::Topic | Kind::TopicFilter => DEVICE_NAMESPACES
            .iter()
            .find_map(|ns| prefix.strip_prefix(ns)),
        _ => None,
    };
    rest.is_some_and(|r| r.find('/').is_some_and(|i| i > 0))
}

fn per_connection(kind: Kind, prefix: &str) -> bool {
    matches!(kind, Kind::Topic | Kind::TopicFilter)
        && PER_CONNECTION.iter().any(|ns| prefix.starts_with(ns))
}

fn var_text(var: Var, names: &Names) -> String {
    format!("${{{}}}", VarDisplay(var, &names.attributes))
}

/// Writes a name pattern back as policy text; `mqtt_to_star` turns literal `+`/`#` into `*`.
fn render(tokens: &[Token], names: &Names, mqtt_to_star: bool) -> String {
    let mut out = String::new();
    for t in tokens {
        match t {
            Token::Literal(lit) => {
                let text = String::from_utf8_lossy(lit);
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    match c {
                        '*' => out.push_str("${*}"),
                        '?' => out.push_str("${?}"),
                        '$' if chars.peek() == Some(&'{') => out.push_str("${$}"),
                        '+' | '#' if mqtt_to_star => out.push('*'),
                        c => out.push(c),
                    }
                }
            }
            Token::Star => out.push('*'),
            Token::AnyChar => out.push('?'),
            Token::Var(v) => out.push_str(&var_text(*v, names)),
        }
    }
    out
}

/// An example value of a name, with `iot:ClientId` set to `client_id`.
fn example(tokens: &[Token], names: &Names, client_id: &str) -> String {
    let mut out = String::new();
    for t in tokens {
        match t {
            Token::Literal(lit) => out.push_str(&String::from_utf8_lossy(lit)),
            Token::Star => out.push('*'),
            Token::AnyChar => out.push('?'),
            Token::Var(Var::ClientId) => out.push_str(client_id),
            Token::Var(v) => out.push_str(&var_text(*v, names)),
        }
    }
    out
}

fn name_matches(name: &Pattern, s: &str) -> bool {
    name.matches(Haystack::single(s.as_bytes()), &Scope::empty()) == Match::Yes
}

/// The suggested rollout of a fixed policy, after AWS's remediation pattern.
fn rollout(policy: &str) -> String {
    format!(
        " Put the fixed document as a new version of `{policy}` (`PolicyEngine::put_policy`), check \
         its devices still connect, and roll back with `set_default_version` if not."
    )
}

const THING_VAR: &str = "${iot:Connection.Thing.ThingName}";

// ---------------------------------------------------------------------------------------------
// Checks

fn type_mismatch(n: usize, p: &Parsed<'_>, out: &mut Vec<Finding>) {
    if p.mask == 0 {
        return;
    }
    for (raw, target) in &p.targets {
        let Target::Typed { kind, .. } = target else {
            continue;
        };
        if p.mask & kind.actions() != 0 {
            continue;
        }
        let (severity, verb) = match p.st.effect {
            Effect::Allow => (Severity::Low, "grants"),
            Effect::Deny => (Severity::Medium, "denies"),
        };
        let users = match kind.actions() {
            0 => "no fleetkit action".to_string(),
            mask => p.actions_text(mask),
        };
        out.push(Finding {
            check: Check::ResourceTypeMismatch,
            severity,
            statement: n,
            resource_or_action: raw.to_string(),
            message: format!(
                "{} resources are used only by {users}; this statement's actions ({}) never name \
                 one, so the entry {verb} nothing.",
                kind.noun(),
                p.actions_text(p.mask)
            ),
            fix: "Match resource types to actions: `client/` for iot:Connect, `topic/` for \
                  iot:Publish, iot:Receive and the retained-message actions, `topicfilter/` for \
                  iot:Subscribe, `thing/` for shadow, jobs, methods and commands."
                .into(),
        });
    }
}

fn allow_checks(policy: &str, n: usize, p: &Parsed<'_>, out: &mut Vec<Finding>) {
    for (raw, target) in &p.targets {
        match target {
            Target::Everything => {
                if p.has(Action::Connect) && !p.is_attached {
                    out.push(client_takeover(
                        policy,
                        n,
                        raw,
                        "arn:aws:iot:<region>:<account>:client/",
                        "any device can connect as any client id and kick the owner off \
                         (CONFLICTING_CLIENT_IDS)",
                    ));
                }
                let example =
                    format!("arn:aws:iot:<region>:<account>:topic/$aws/things/{THING_VAR}/*");
                breadth(
                    policy,
                    n,
                    p,
                    raw,
                    p.mask,
                    "every resource",
                    &example,
                    None,
                    out,
                );
            }
            Target::Typed {
                kind,
                head_len,
                name,
                names,
            } => {
                let applicable = p.mask & kind.actions();
                if applicable == 0 {
                    continue; // reported as a type mismatch
                }
                let head = &raw[..*head_len];
                let shape = Shape::of(*kind, name);
                if shape.anchored_var().is_none()
                    && let Some((var, _)) = shape.binding.first()
                {
                    out.push(unanchored(n, raw, *kind, *var, names));
                }
                match kind {
                    Kind::Client => {
                        connect_checks(policy, n, p, raw, head, name, &shape, names, out);
                    }
                    Kind::Topic | Kind::TopicFilter | Kind::Thing if shape.binding.is_empty() => {
                        let Some(prefix) = &shape.open_prefix else {
                            continue;
                        };
                        if per_connection(*kind, prefix) || device_specific(*kind, prefix) {
                            continue;
                        }
                        let suggestion = suggest(*kind, head, prefix);
                        let what = if prefix.is_empty() {
                            format!("every {}", kind.noun())
                        } else {
                            format!("every {} under `{prefix}`", kind.noun())
                        };
                        breadth(
                            policy,
                            n,
                            p,
                            raw,
                            applicable,
                            &what,
                            &suggestion,
                            Some(prefix),
                            out,
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A scoped replacement for a broad resource.
fn suggest(kind: Kind, head: &str, prefix: &str) -> String {
    match kind {
        Kind::Thing => format!("{head}{THING_VAR}"),
        _ => {
            let ns = DEVICE_NAMESPACES
                .iter()
                .find(|ns| prefix.starts_with(*ns))
                .copied()
                .unwrap_or(if prefix.is_empty() {
                    "$aws/things/"
                } else {
                    prefix
                });
            format!("{head}{ns}{THING_VAR}/*")
        }
    }
}

/// Reports broad access: Critical for an empty prefix, `*`, or `iot:*`; High otherwise; Low
/// when only Receive is broad.
#[allow(clippy::too_many_arguments)]
fn breadth(
    policy: &str,
    n: usize,
    p: &Parsed<'_>,
    raw: &str,
    applicable: u32,
    what: &str,
    suggestion: &str,
    prefix: Option<&str>,
    out: &mut Vec<Finding>,
) {
    let broad = applicable & broad_mask();
    let shown = applicable & !Action::Connect.bit();
    if broad == 0 {
        if applicable & Action::Receive.bit() != 0 {
            out.push(Finding {
                check: Check::BroadReceive,
                severity: Severity::Low,
                statement: n,
                resource_or_action: raw.to_string(),
                message: format!(
                    "iot:Receive on {what} without a policy variable: harmless only while \
                     iot:Subscribe stays scoped (AWS rates this compliant), but subscriptions kept \
                     by persistent sessions from a broader policy keep receiving."
                ),
                fix: format!("Scope iot:Receive like iot:Subscribe, e.g. `{suggestion}`."),
            });
        }
        return;
    }
    let critical = prefix.is_none_or(str::is_empty) || p.all_actions;
    let (check, severity, consequence) = if critical {
        (
            Check::BroadDataPlaneAccess,
            Severity::Critical,
            "any device holding this policy can read and write the whole fleet's messages, \
             shadows and jobs",
        )
    } else {
        (
            Check::CrossDeviceAccess,
            Severity::High,
            "any device holding this policy reaches every other device's resources there",
        )
    };
    out.push(Finding {
        check,
        severity,
        statement: n,
        resource_or_action: raw.to_string(),
        message: format!(
            "allows {} on {what} with no policy variable: {consequence}.",
            p.actions_text(shown)
        ),
        fix: format!(
            "Name only the device's own resources with a policy variable, e.g. `{suggestion}`, and \
             list the actions it needs instead of wildcards.{}",
            rollout(policy)
        ),
    });
}

fn client_takeover(policy: &str, n: usize, raw: &str, head: &str, what: &str) -> Finding {
    Finding {
        check: Check::ClientIdTakeover,
        severity: Severity::High,
        statement: n,
        resource_or_action: raw.to_string(),
        message: format!("client-id takeover: {what}."),
        fix: format!(
            "Allow iot:Connect only on `{head}{THING_VAR}` with the condition \
             `\"Bool\": {{\"iot:Connection.Thing.IsAttached\": \"true\"}}` (AWS), or on \
             `{head}${{fleetkit:DeviceId}}` (local hub).{}",
            rollout(policy)
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn connect_checks(
    policy: &str,
    n: usize,
    p: &Parsed<'_>,
    raw: &str,
    head: &str,
    name: &Pattern,
    shape: &Shape,
    names: &Names,
    out: &mut Vec<Finding>,
) {
    if p.is_attached {
        // The client id must then be the name of the certificate's own thing.
        return;
    }
    if let Some(var) = shape.anchored_var() {
        if is_thing_var(var) {
            out.push(Finding {
                check: Check::ConnectWithoutIsAttached,
                severity: Severity::Low,
                statement: n,
                resource_or_action: raw.to_string(),
                message: format!(
                    "iot:Connect is scoped by `{}` but the statement does not require the \
                     certificate to be attached to that thing.",
                    var_text(var, names)
                ),
                fix: "Add the condition `\"Bool\": {\"iot:Connection.Thing.IsAttached\": \
                      \"true\"}`, as in AWS's compliant example."
                    .into(),
            });
        }
        return;
    }
    if !shape.binding.is_empty() {
        return; // unanchored: reported already
    }
    let loose_note = if shape.loose.contains(&Var::ClientId) {
        " (`${iot:ClientId}` is whatever client id the device sends, so it restricts nothing)"
    } else {
        ""
    };
    if let Some(var) = shape.loose.first()
        && !shape.loose.contains(&Var::ClientId)
        && !name.has_wildcard()
    {
        out.push(client_takeover(
            policy,
            n,
            raw,
            head,
            &format!(
                "every device with the same `{}` connects with the same client id, so they kick \
                 each other off (CONFLICTING_CLIENT_IDS)",
                var_text(*var, names)
            ),
        ));
        return;
    }
    match &shape.open_prefix {
        None => {}
        Some(prefix) if prefix.starts_with(CLAIM_CLIENT_ID_PREFIX) => out.push(Finding {
            check: Check::SharedClaimClientIds,
            severity: Severity::Low,
            statement: n,
            resource_or_action: raw.to_string(),
            message: format!(
                "claim sessions share the `{CLAIM_CLIENT_ID_PREFIX}` client-id namespace: one claim \
                 holder can connect with another's client id and kick it off (inherent to a \
                 shared claim certificate; operational devices are out of reach)."
            ),
            fix: format!(
                "Have claim clients connect as `{CLAIM_CLIENT_ID_PREFIX}<random UUID>` and keep the \
                 claim policy to provisioning topics only."
            ),
        }),
        Some(prefix) => {
            let what = if prefix.is_empty() {
                format!(
                    "any device can connect as any client id and kick the owner off \
                     (CONFLICTING_CLIENT_IDS){loose_note}"
                )
            } else {
                format!(
                    "any device can connect as any client id starting with `{prefix}` and kick \
                     its owner off (CONFLICTING_CLIENT_IDS){loose_note}"
                )
            };
            out.push(client_takeover(policy, n, raw, head, &what));
        }
    }
}

fn unanchored(n: usize, raw: &str, kind: Kind, var: Var, names: &Names) -> Finding {
    let v = var_text(var, names);
    Finding {
        check: Check::UnanchoredVariable,
        severity: Severity::Medium,
        statement: n,
        resource_or_action: raw.to_string(),
        message: format!(
            "`{v}` shares a level with a wildcard: the device whose value is `a` also matches the \
             {}s of a device whose value is `ab` (or `ba`).",
            kind.noun()
        ),
        fix: format!("Give the variable a level of its own, e.g. `…/{v}/*`, or drop the wildcard."),
    }
}

/// Whether every `iot:Connect` this policy allows is tied to an identity. `None`: the policy
/// allows no Connect.
fn connect_restricted(statements: &[Parsed<'_>]) -> Option<bool> {
    let mut seen = false;
    for p in statements
        .iter()
        .filter(|p| p.st.effect == Effect::Allow && p.has(Action::Connect))
    {
        for (_, target) in &p.targets {
            let restricted = match target {
                Target::Everything => p.is_attached,
                Target::Typed {
                    kind: Kind::Client,
                    name,
                    ..
                } => {
                    let shape = Shape::of(Kind::Client, name);
                    p.is_attached
                        || (shape.anchored_var().is_some() && shape.loose.is_empty())
                        || (!name.has_var()
                            && !name.has_wildcard()
                            && !name.tokens().iter().any(|t| {
                                matches!(t, Token::Literal(l) if l.iter().any(|b| matches!(b, b'+' | b'#')))
                            }))
                }
                Target::Typed { .. } => continue,
            };
            seen = true;
            if !restricted {
                return Some(false);
            }
        }
    }
    seen.then_some(true)
}

fn client_id_in_filters(statements: &[Parsed<'_>], out: &mut Vec<Finding>) {
    let restricted = connect_restricted(statements);
    if restricted == Some(true) {
        return;
    }
    for (i, p) in statements.iter().enumerate() {
        if p.st.effect != Effect::Allow || !p.has(Action::Subscribe) {
            continue;
        }
        for (raw, target) in &p.targets {
            let Target::Typed {
                kind: Kind::TopicFilter,
                name,
                names,
                ..
            } = target
            else {
                continue;
            };
            if !name
                .tokens()
                .iter()
                .any(|t| matches!(t, Token::Var(Var::ClientId)))
            {
                continue;
            }
            let (severity, why) = match restricted {
                Some(_) => (
                    Severity::Medium,
                    "and this policy lets a device connect with such a client id",
                ),
                None => (
                    Severity::Low,
                    "and this policy grants no iot:Connect, so whether such client ids are \
                     refused depends on another policy",
                ),
            };
            out.push(Finding {
                check: Check::ClientIdWidensTopicFilter,
                severity,
                statement: i + 1,
                resource_or_action: raw.to_string(),
                message: format!(
                    "a client id containing `+` or `#` can widen topic-filter permissions: client \
                     id `#` may subscribe to `{}`, which the broker reads as a wildcard over other \
                     devices' topics (PROTOCOLS.md §1.5), {why}.",
                    example(name.tokens(), names, "#")
                ),
                fix: format!(
                    "Restrict iot:Connect to `client/{THING_VAR}` with the IsAttached condition \
                     (or `client/${{fleetkit:DeviceId}}`), or use `{THING_VAR}` in the filter \
                     instead of `${{iot:ClientId}}`."
                ),
            });
        }
    }
}

fn deny_checks(n: usize, p: &Parsed<'_>, statements: &[Parsed<'_>], out: &mut Vec<Finding>) {
    for (raw, target) in &p.targets {
        let Target::Typed {
            kind,
            head_len,
            name,
            names,
        } = target
        else {
            continue;
        };
        let head = &raw[..*head_len];
        let mqtt = name
            .tokens()
            .iter()
            .any(|t| matches!(t, Token::Literal(l) if l.iter().any(|b| matches!(b, b'+' | b'#'))));
        if mqtt {
            let receive = if *kind == Kind::TopicFilter {
                " Deny iot:Receive on the matching `topic/` resources too: an allowed wider filter \
                 still subscribes around a Deny of filters."
            } else {
                ""
            };
            out.push(Finding {
                check: Check::MqttWildcardsInDeny,
                severity: Severity::Medium,
                statement: n,
                resource_or_action: raw.to_string(),
                message: format!(
                    "`+` and `#` are literal characters in policies, so this Deny covers only {}s \
                     spelled with them, not the ones they stand for in MQTT.",
                    kind.noun()
                ),
                fix: format!(
                    "Use `*`, MQTT wildcards are literal in policies: `{head}{}`.{receive}",
                    render(name.tokens(), names, true)
                ),
            });
        }
        if name.has_var() {
            let var = name
                .tokens()
                .iter()
                .find_map(|t| match t {
                    Token::Var(v) => Some(*v),
                    _ => None,
                })
                .map(|v| var_text(v, names))
                .unwrap_or_default();
            out.push(Finding {
                check: Check::VariableInDeny,
                severity: Severity::Low,
                statement: n,
                resource_or_action: raw.to_string(),
                message: format!(
                    "when `{var}` has no value for a principal (e.g. thing variables when the \
                     client id is not the thing name, `iot:ClientId` over HTTPS), this Deny \
                     matches nothing and whatever the Allows grant stays granted."
                ),
                fix: "Deny with a wildcard pattern that needs no variable, or make sure the \
                      Allows use the same variable (so they fail closed together)."
                    .into(),
            });
        }
        if *kind == Kind::TopicFilter && p.has(Action::Subscribe) && !name.has_var() {
            deny_bypass(n, raw, name, statements, out);
        }
    }
}

/// TOPIC_FILTERS_INTENDED_TO_DENY_ALLOWED_USING_WILDCARDS: the Deny of some filters is
/// bypassed by subscribing to an allowed ancestor filter (`building/#`) and receiving the
/// denied topics, unless a Deny of Receive covers them.
fn deny_bypass(
    n: usize,
    raw: &str,
    denied: &Pattern,
    statements: &[Parsed<'_>],
    out: &mut Vec<Finding>,
) {
    // The literal text before the first wildcard (policy or MQTT).
    let shape = Shape::of(Kind::TopicFilter, denied);
    let (prefix, exact) = match &shape.open_prefix {
        Some(p) => (p.clone(), false),
        None => (example(denied.tokens(), &Names::default(), ""), true),
    };
    let levels: Vec<&str> = prefix.split('/').collect();
    let complete = &levels[..levels.len() - 1];
    let sample = if exact {
        prefix.clone()
    } else {
        format!("{prefix}x")
    };
    let allows = |action: Action, kind: Kind, s: &str| {
        statements.iter().any(|p| {
            p.st.effect == Effect::Allow
                && p.has(action)
                && p.targets.iter().any(|(_, t)| match t {
                    Target::Everything => true,
                    Target::Typed { kind: k, name, .. } => *k == kind && name_matches(name, s),
                })
        })
    };
    let receive_denied = statements.iter().any(|p| {
        p.st.effect == Effect::Deny
            && p.has(Action::Receive)
            && p.targets.iter().any(|(_, t)| match t {
                Target::Everything => true,
                Target::Typed {
                    kind: Kind::Topic,
                    name,
                    ..
                } => name_matches(name, &sample),
                Target::Typed { .. } => false,
            })
    });
    if receive_denied || !allows(Action::Receive, Kind::Topic, &sample) {
        return;
    }
    for k in (0..=complete.len()).rev() {
        let candidate = if k == 0 {
            "#".to_string()
        } else {
            format!("{}/#", complete[..k].join("/"))
        };
        if name_matches(denied, &candidate)
            || !allows(Action::Subscribe, Kind::TopicFilter, &candidate)
        {
            continue;
        }
        out.push(Finding {
            check: Check::DenyBypassedByWildcardFilter,
            severity: Severity::Medium,
            statement: n,
            resource_or_action: raw.to_string(),
            message: format!(
                "topic filters are matched as strings: a device may still subscribe to \
                 `{candidate}` and receive `{sample}`, which this Deny means to keep out."
            ),
            fix: format!(
                "Also Deny iot:Receive on the topics (e.g. `topic/{}`), so no subscription \
                 delivers them.",
                if exact {
                    prefix.clone()
                } else {
                    format!("{prefix}*")
                }
            ),
        });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::builtin;
    use crate::policy::{AttachTarget, Partition};

    const ARN: &str = "arn:aws:iot:us-east-1:123456789012:";

    fn r(s: &str) -> String {
        format!("{ARN}{s}")
    }

    fn doc(statements: Vec<Statement>) -> PolicyDocument {
        let d = PolicyDocument::new(statements);
        d.validate().expect("test policies are valid");
        d
    }

    fn allow(actions: &[&str], resources: &[&str]) -> Statement {
        let resources: Vec<String> = resources.iter().map(|s| r(s)).collect();
        let refs: Vec<&str> = resources.iter().map(String::as_str).collect();
        Statement::allow(actions, &refs)
    }

    fn deny(actions: &[&str], resources: &[&str]) -> Statement {
        let resources: Vec<String> = resources.iter().map(|s| r(s)).collect();
        let refs: Vec<&str> = resources.iter().map(String::as_str).collect();
        Statement::deny(actions, &refs)
    }

    fn checks(d: &PolicyDocument) -> Vec<(Check, Severity)> {
        audit("p", d)
            .iter()
            .map(|f| (f.check, f.severity))
            .collect()
    }

    fn has(d: &PolicyDocument, check: Check) -> bool {
        audit("p", d).iter().any(|f| f.check == check)
    }

    fn only(d: &PolicyDocument) -> Finding {
        let mut f = audit("p", d);
        assert_eq!(f.len(), 1, "{f:#?}");
        f.pop().unwrap()
    }

    #[test]
    fn aws_doc_example_allow_everything_is_critical() {
        let d = PolicyDocument::from_json(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
        )
        .unwrap();
        let f = audit("open", &d);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].check, Check::BroadDataPlaneAccess);
        assert_eq!(f[0].statement, 1);
        assert_eq!(f[0].resource_or_action, "*");
        assert_eq!(
            f[0].check.reason_code(),
            Some("ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS")
        );
        assert!(f[0].fix.contains("`open`"), "{}", f[0].fix);
        // Connect on `*` is reported as well, as a takeover.
        assert!(f.iter().any(|f| f.check == Check::ClientIdTakeover));
    }

    #[test]
    fn star_resource_type_wildcard_and_leading_wildcards_are_critical() {
        for (actions, resource) in [
            (&["iot:Publish"][..], "*"),
            (&["iot:Publish"][..], "arn:aws:iot:*:*:*"),
            (&["iot:GetThingShadow"][..], "arn:aws:iot:*:*:thing*"),
            (&["iot:Publish"][..], &r("topic/*")),
            (&["iot:Subscribe"][..], &r("topicfilter/#")),
            (&["iot:Subscribe"][..], &r("topicfilter/+/shadow/update")),
            (&["iot:UpdateThingShadow"][..], &r("thing/*")),
            (&["iot:GetRetainedMessage"][..], &r("topic/?*")),
        ] {
            let d = doc(vec![Statement::allow(actions, &[resource])]);
            let f = only(&d);
            assert_eq!(
                (f.check, f.severity),
                (Check::BroadDataPlaneAccess, Severity::Critical),
                "{resource}"
            );
        }
    }

    #[test]
    fn iot_star_on_a_broad_prefix_is_critical() {
        let d = doc(vec![allow(&["iot:*"], &["topic/sensors/*"])]);
        assert_eq!(
            checks(&d),
            [(Check::BroadDataPlaneAccess, Severity::Critical)]
        );
    }

    #[test]
    fn wildcard_without_variable_is_high_cross_device_access() {
        for (action, resource) in [
            ("iot:Publish", "topic/sensors/*"),
            ("iot:Publish", "topic/sensors/dev-1/*"),
            ("iot:Publish", "topic/$aws/things/*/shadow/update"),
            ("iot:Publish", "topic/$aws/things/*"),
            ("iot:Publish", "topic/$aws/things/My*/shadow/update"),
            ("iot:Subscribe", "topicfilter/$aws/things/+/shadow/update"),
            (
                "iot:Subscribe",
                "topicfilter/devices/+/messages/devicebound/#",
            ),
            ("iot:Subscribe", "topicfilter/building/#"),
            (
                "iot:Subscribe",
                "topicfilter/$aws/events/presence/connected/*",
            ),
            ("iot:Publish", "topic//devices/*/events"),
            ("iot:UpdateThingShadow", "thing/sensor-*"),
            ("iot:RetainPublish", "topic/dt/app/?"),
        ] {
            let d = doc(vec![allow(&[action], &[resource])]);
            let f = only(&d);
            assert_eq!(
                (f.check, f.severity),
                (Check::CrossDeviceAccess, Severity::High),
                "{resource}"
            );
            assert!(f.fix.contains(THING_VAR), "{}", f.fix);
        }
    }

    #[test]
    fn device_specific_per_connection_and_scoped_resources_are_not_flagged() {
        for (action, resource) in [
            // Hard-coded single device under a known namespace.
            ("iot:Publish", "topic/$aws/things/MyThing/shadow/*"),
            ("iot:Publish", "topic/devices/dev-1/messages/events/*"),
            ("iot:Subscribe", "topicfilter//devices/dev-1/commands/#"),
            ("iot:UpdateThingShadow", "thing/MyThing/*"),
            ("iot:UpdateThingShadow", "thing/MyThing"),
            // Per-connection namespaces.
            ("iot:Subscribe", "topicfilter/$iothub/twin/res/#"),
            ("iot:Publish", "topic/$aws/certificates/create/*"),
            (
                "iot:Publish",
                "topic/$aws/provisioning-templates/t/provision/*",
            ),
            // The fix: a variable in a level of its own.
            (
                "iot:Publish",
                "topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*",
            ),
            ("iot:Publish", "topic/sensors/${iot:ClientId}/*"),
            (
                "iot:GetThingShadow",
                "thing/${iot:Connection.Thing.ThingName}",
            ),
            ("iot:Publish", "topic/*/${fleetkit:DeviceId}/telemetry"),
            // Exact topics.
            ("iot:Publish", "topic/broadcast/announcements"),
            ("iot:Subscribe", "topicfilter/broadcast/announcements"),
        ] {
            let d = doc(vec![allow(&[action], &[resource])]);
            assert!(
                audit("p", &d).is_empty(),
                "{resource}: {:#?}",
                audit("p", &d)
            );
        }
        // Control-plane actions on every thing are an operator's normal policy.
        let d = doc(vec![allow(
            &["fleetkit:InvokeMethod", "fleetkit:SendCommand"],
            &["thing/*"],
        )]);
        assert!(audit("p", &d).is_empty());
        let d = doc(vec![Statement::allow(
            &["iot:ListRetainedMessages"],
            &["*"],
        )]);
        assert!(audit("p", &d).is_empty());
    }

    #[test]
    fn receive_alone_on_broad_topics_is_low() {
        // AWS's own example of a compliant Receive.
        let d = doc(vec![allow(&["iot:Receive"], &["topic/$aws/things/*"])]);
        assert_eq!(checks(&d), [(Check::BroadReceive, Severity::Low)]);
        let d = doc(vec![Statement::allow(&["iot:Receive"], &["*"])]);
        assert_eq!(checks(&d), [(Check::BroadReceive, Severity::Low)]);
        let d = doc(vec![allow(
            &["iot:Receive"],
            &["topic/$aws/things/${iot:Connection.Thing.ThingName}/*"],
        )]);
        assert!(audit("p", &d).is_empty());
    }

    #[test]
    fn connect_on_any_client_id_is_high_takeover() {
        for resource in [
            "*".to_string(),
            r("client/*"),
            r("client/sensor-*"),
            r("client/${iot:ClientId}"),
            r("client/dev-?"),
            "arn:aws:iot:*:*:*".to_string(),
        ] {
            let d = doc(vec![Statement::allow(&["iot:Connect"], &[&resource])]);
            let f = only(&d);
            assert_eq!(
                (f.check, f.severity),
                (Check::ClientIdTakeover, Severity::High),
                "{resource}"
            );
            assert!(
                f.message
                    .starts_with("client-id takeover: any device can connect as any client id")
            );
            assert!(f.message.contains("CONFLICTING_CLIENT_IDS"));
            assert!(
                f.fix.contains("client/${iot:Connection.Thing.ThingName}"),
                "{}",
                f.fix
            );
        }
        // A value many devices share is a shared client id.
        let d = doc(vec![allow(
            &["iot:Connect"],
            &["client/${iot:Connection.Thing.ThingTypeName}"],
        )]);
        let f = only(&d);
        assert_eq!(f.check, Check::ClientIdTakeover);
        assert!(f.message.contains("kick each other off"), "{}", f.message);
    }

    #[test]
    fn connect_scoped_to_an_identity_is_not_a_takeover() {
        let is_attached = |st: Statement| {
            st.with_condition(
                ConditionOperator::Bool,
                "iot:Connection.Thing.IsAttached",
                &["true"],
            )
        };
        for d in [
            doc(vec![is_attached(allow(
                &["iot:Connect"],
                &["client/${iot:Connection.Thing.ThingName}"],
            ))]),
            // AWS: `${iot:ClientId}` is fine with the IsAttached condition.
            doc(vec![is_attached(allow(
                &["iot:Connect"],
                &["client/${iot:ClientId}"],
            ))]),
            doc(vec![allow(
                &["iot:Connect"],
                &["client/${fleetkit:DeviceId}"],
            )]),
            doc(vec![allow(
                &["iot:Connect"],
                &["client/${iot:Certificate.Subject.CommonName}"],
            )]),
            doc(vec![allow(
                &["iot:Connect"],
                &["client/client1", "client/client2"],
            )]),
            doc(vec![allow(
                &["iot:Connect"],
                &["client/projects/*/locations/*/registries/*/devices/${fleetkit:DeviceId}"],
            )]),
        ] {
            assert!(audit("p", &d).is_empty(), "{:#?}", audit("p", &d));
        }
    }

    #[test]
    fn connect_by_thing_name_without_is_attached_is_low() {
        let d = doc(vec![allow(
            &["iot:Connect"],
            &["client/${iot:Connection.Thing.ThingName}"],
        )]);
        assert_eq!(
            checks(&d),
            [(Check::ConnectWithoutIsAttached, Severity::Low)]
        );
    }

    #[test]
    fn claim_namespace_connect_is_low() {
        let d = doc(vec![allow(&["iot:Connect"], &["client/claim-*"])]);
        assert_eq!(checks(&d), [(Check::SharedClaimClientIds, Severity::Low)]);
    }

    #[test]
    fn unanchored_variable_is_medium() {
        for resource in [
            "topic/sensors/${iot:Connection.Thing.ThingName}*",
            "topic/*${iot:ClientId}",
            "client/${fleetkit:DeviceId}-*",
            "thing/${iot:Connection.Thing.ThingName}?",
        ] {
            let action = match resource.split('/').next() {
                Some("client") => "iot:Connect",
                Some("thing") => "iot:GetThingShadow",
                _ => "iot:Publish",
            };
            let d = doc(vec![allow(&[action], &[resource])]);
            let f = only(&d);
            assert_eq!(
                (f.check, f.severity),
                (Check::UnanchoredVariable, Severity::Medium),
                "{resource}"
            );
            assert!(f.fix.contains("/*"), "{}", f.fix);
        }
    }

    #[test]
    fn client_id_in_topic_filter_needs_restricted_connect() {
        let subscribe = allow(
            &["iot:Subscribe"],
            &["topicfilter/sensors/${iot:ClientId}/#"],
        );
        // Connect unrestricted: Medium (plus the takeover itself).
        let d = doc(vec![
            allow(&["iot:Connect"], &["client/*"]),
            subscribe.clone(),
        ]);
        let f: Vec<_> = audit("p", &d)
            .into_iter()
            .filter(|f| f.check == Check::ClientIdWidensTopicFilter)
            .collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Medium);
        assert_eq!(f[0].statement, 2);
        assert!(f[0].message.contains("`sensors/#/#`"), "{}", f[0].message);
        assert!(f[0].message.contains("§1.5"));
        // No Connect in this policy: cannot tell, Low.
        let d = doc(vec![subscribe.clone()]);
        assert_eq!(
            checks(&d),
            [(Check::ClientIdWidensTopicFilter, Severity::Low)]
        );
        // Connect restricted to an identity: nothing.
        for connect in [
            allow(&["iot:Connect"], &["client/${fleetkit:DeviceId}"]),
            allow(&["iot:Connect"], &["client/${iot:ClientId}"]).with_condition(
                ConditionOperator::Bool,
                "iot:Connection.Thing.IsAttached",
                &["true"],
            ),
            allow(&["iot:Connect"], &["client/client1"]),
        ] {
            let d = doc(vec![connect, subscribe.clone()]);
            assert!(audit("p", &d).is_empty(), "{:#?}", audit("p", &d));
        }
        // A literal MQTT wildcard client id does not count as restricted.
        let d = doc(vec![allow(&["iot:Connect"], &["client/#"]), subscribe]);
        assert!(has(&d, Check::ClientIdWidensTopicFilter));
    }

    /// AWS's first misconfiguration example (POLICY_CONTAINS_MQTT_WILDCARDS_IN_DENY_STATEMENT).
    #[test]
    fn mqtt_wildcards_in_deny_are_medium() {
        let d = doc(vec![
            allow(&["iot:Subscribe"], &["topicfilter/building/*"]),
            deny(&["iot:Subscribe"], &["topicfilter/building/control_room/#"]),
            allow(&["iot:Receive"], &["topic/building/*"]),
        ]);
        let f: Vec<_> = audit("p", &d)
            .into_iter()
            .filter(|f| f.check == Check::MqttWildcardsInDeny)
            .collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Medium);
        assert_eq!(f[0].statement, 2);
        assert_eq!(
            f[0].check.reason_code(),
            Some("POLICY_CONTAINS_MQTT_WILDCARDS_IN_DENY_STATEMENT")
        );
        assert!(
            f[0].fix
                .starts_with("Use `*`, MQTT wildcards are literal in policies")
        );
        assert!(
            f[0].fix.contains(&r("topicfilter/building/control_room/*")),
            "{}",
            f[0].fix
        );
        let d = doc(vec![deny(&["iot:Publish"], &["topic/sensors/+/admin"])]);
        let f = only(&d);
        assert_eq!(f.check, Check::MqttWildcardsInDeny);
        assert!(f.fix.contains(&r("topic/sensors/*/admin")), "{}", f.fix);
        // The fix (`*`) is not flagged.
        let d = doc(vec![deny(&["iot:Publish"], &["topic/sensors/*/admin"])]);
        assert!(audit("p", &d).is_empty());
    }

    /// AWS's second example (TOPIC_FILTERS_INTENDED_TO_DENY_ALLOWED_USING_WILDCARDS) and its
    /// correct version.
    #[test]
    fn deny_bypassed_by_a_wider_allowed_filter_is_medium() {
        let d = doc(vec![
            allow(&["iot:Subscribe"], &["topicfilter/building/*"]),
            deny(&["iot:Subscribe"], &["topicfilter/building/control_room/*"]),
            allow(&["iot:Receive"], &["topic/building/*"]),
        ]);
        let f = audit("p", &d);
        let f: Vec<_> = f
            .iter()
            .filter(|f| f.check != Check::CrossDeviceAccess && f.check != Check::BroadReceive)
            .collect();
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].check, Check::DenyBypassedByWildcardFilter);
        assert_eq!(f[0].severity, Severity::Medium);
        assert_eq!(f[0].statement, 2);
        assert!(f[0].message.contains("`building/#`"), "{}", f[0].message);
        assert!(
            f[0].fix.contains("topic/building/control_room/*"),
            "{}",
            f[0].fix
        );
        assert_eq!(
            f[0].check.reason_code(),
            Some("TOPIC_FILTERS_INTENDED_TO_DENY_ALLOWED_USING_WILDCARDS")
        );

        // Correct: Receive of the denied topics is denied too.
        let d = doc(vec![
            allow(&["iot:Subscribe"], &["topicfilter/building/*"]),
            deny(&["iot:Subscribe"], &["topicfilter/building/control_room/*"]),
            allow(&["iot:Receive"], &["topic/building/*"]),
            deny(&["iot:Receive"], &["topic/building/control_room/*"]),
        ]);
        assert!(!has(&d, Check::DenyBypassedByWildcardFilter));
        // No wider filter allowed: nothing to bypass with.
        let d = doc(vec![
            allow(&["iot:Subscribe"], &["topicfilter/building/lobby/*"]),
            deny(&["iot:Subscribe"], &["topicfilter/building/control_room/*"]),
            allow(&["iot:Receive"], &["topic/building/*"]),
        ]);
        assert!(!has(&d, Check::DenyBypassedByWildcardFilter));
        // A wider filter one level up is found too.
        let d = doc(vec![
            allow(&["iot:Subscribe"], &["topicfilter/building/control_room/*"]),
            deny(
                &["iot:Subscribe"],
                &["topicfilter/building/control_room/secret/*"],
            ),
            allow(&["iot:Receive"], &["topic/building/control_room/*"]),
        ]);
        let f: Vec<_> = audit("p", &d)
            .into_iter()
            .filter(|f| f.check == Check::DenyBypassedByWildcardFilter)
            .collect();
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("`building/control_room/#`"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn variable_in_deny_is_low() {
        let d = doc(vec![deny(
            &["iot:Publish"],
            &["topic/sensors/${iot:Connection.Thing.ThingName}/admin"],
        )]);
        let f = only(&d);
        assert_eq!(
            (f.check, f.severity),
            (Check::VariableInDeny, Severity::Low)
        );
        assert!(f.message.contains("${iot:Connection.Thing.ThingName}"));
        let d = doc(vec![deny(&["iot:Publish"], &["topic/sensors/*/admin"])]);
        assert!(audit("p", &d).is_empty());
    }

    #[test]
    fn resource_type_mismatch_is_low_for_allow_and_medium_for_deny() {
        // The classic: publishing "on a topic filter".
        let d = doc(vec![allow(
            &["iot:Publish"],
            &["topicfilter/sensors/dev-1"],
        )]);
        let f = only(&d);
        assert_eq!(
            (f.check, f.severity),
            (Check::ResourceTypeMismatch, Severity::Low)
        );
        assert!(f.message.contains("iot:Subscribe"), "{}", f.message);
        let d = doc(vec![deny(&["iot:Subscribe"], &["topic/secret/*"])]);
        let f = only(&d);
        assert_eq!(
            (f.check, f.severity),
            (Check::ResourceTypeMismatch, Severity::Medium)
        );
        let d = doc(vec![allow(&["iot:Publish"], &["thinggroup/g1"])]);
        assert!(only(&d).message.contains("no fleetkit action"));
        // The fix.
        let d = doc(vec![
            allow(&["iot:Publish"], &["topic/sensors/dev-1"]),
            allow(&["iot:Subscribe"], &["topicfilter/sensors/dev-1"]),
        ]);
        assert!(audit("p", &d).is_empty());
    }

    #[test]
    fn builtins_have_no_findings_of_medium_or_more() {
        assert!(audit("aws", &builtin::aws_thing_scoped()).is_empty());
        for d in [
            builtin::aws_thing_scoped(),
            builtin::azure_device(),
            builtin::gcp_device(),
            builtin::provisioning_claim("factory"),
        ] {
            assert!(
                audit("b", &d).iter().all(|f| f.severity < Severity::Medium),
                "{:#?}",
                audit("b", &d)
            );
        }
    }

    #[test]
    fn findings_are_sorted_most_severe_first_with_one_based_statements() {
        let d = doc(vec![
            allow(&["iot:Connect"], &["client/claim-*"]),
            allow(&["iot:Connect"], &["client/*"]),
            Statement::allow(&["iot:Publish"], &["*"]),
        ]);
        let f = checks(&d);
        assert_eq!(
            f,
            [
                (Check::BroadDataPlaneAccess, Severity::Critical),
                (Check::ClientIdTakeover, Severity::High),
                (Check::SharedClaimClientIds, Severity::Low),
            ]
        );
        let statements: Vec<usize> = audit("p", &d).iter().map(|f| f.statement).collect();
        assert_eq!(statements, [3, 2, 1]);
    }

    #[test]
    fn audit_engine_reports_each_policy_by_name() {
        let mut engine = PolicyEngine::new(Partition::local());
        engine
            .put_policy("good", &builtin::aws_thing_scoped())
            .unwrap();
        engine
            .put_policy("open", &doc(vec![Statement::allow(&["iot:*"], &["*"])]))
            .unwrap();
        engine
            .put_policy("claim", &builtin::provisioning_claim("t"))
            .unwrap();
        engine
            .attach_policy("open", AttachTarget::Group("g".into()))
            .unwrap();
        let findings = audit_engine(&engine);
        let summary: Vec<(&str, Check, Severity)> = findings
            .iter()
            .map(|(p, f)| (p.as_str(), f.check, f.severity))
            .collect();
        assert_eq!(
            summary,
            [
                ("open", Check::BroadDataPlaneAccess, Severity::Critical),
                ("open", Check::ClientIdTakeover, Severity::High),
                ("claim", Check::SharedClaimClientIds, Severity::Low),
            ]
        );
        // Only the default version is audited.
        engine
            .put_policy("open", &builtin::aws_thing_scoped())
            .unwrap();
        assert_eq!(audit_engine(&engine).len(), 1);
    }

    #[test]
    fn check_metadata() {
        for c in Check::ALL {
            assert!(c.aws_name().starts_with("IOT_POLICY_"));
            assert!(!c.name().is_empty());
            assert_eq!(c.reported_by_aws(), c.reason_code().is_some());
        }
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::High > Severity::Medium);
        assert!(Severity::Medium > Severity::Low);
        let f = only(&doc(vec![allow(&["iot:Connect"], &["client/claim-*"])]));
        let text = f.to_string();
        assert!(
            text.starts_with(
                "LOW IOT_POLICY_OVERLY_PERMISSIVE_CHECK (shared-claim-client-ids): statement 1 `"
            ),
            "{text}"
        );
    }
}
