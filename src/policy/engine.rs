//! The engine: named, versioned policies compiled once; attachments; principals; decisions.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::context::{PrincipalContext, Request, ResourceKind, Scope};
use super::model::{Action, ConditionOperator, Effect, PolicyDocument, SetQualifier, action_mask};
use super::pattern::{Haystack, Match, Pattern};
use super::vars::{Names, Var, VarDisplay, parse_value, parse_var};
use crate::{Error, Result};

/// Versions kept per policy (AWS IoT keeps five).
pub const MAX_POLICY_VERSIONS: usize = 5;

/// Where ARNs point: the partition, region and account the engine evaluates for.
///
/// Requests are matched as `arn:<partition>:iot:<region>:<account>:<type>/<name>`, so policies
/// written for AWS IoT Core (with concrete or `*` region and account) evaluate unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
    /// The region, e.g. `us-east-1`; the local hub uses `local`.
    pub region: String,
    /// The 12-digit account id; the local hub uses `000000000000`.
    pub account: String,
}

impl Partition {
    /// The local hub's partition: `arn:aws:iot:local:000000000000:`.
    pub fn local() -> Self {
        Self::aws("local", "000000000000")
    }

    /// An AWS region and account in the `aws` partition.
    pub fn aws(region: &str, account: &str) -> Self {
        Partition {
            partition: "aws".into(),
            region: region.into(),
            account: account.into(),
        }
    }

    fn arn_prefix(&self) -> String {
        format!(
            "arn:{}:iot:{}:{}:",
            self.partition, self.region, self.account
        )
    }
}

/// What a policy can be attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttachTarget {
    /// A certificate, by id (SHA-256 fingerprint, lowercase hex).
    Certificate(String),
    /// A device (thing), by device id.
    Device(String),
    /// A thing group; devices in it and in its descendants inherit the policy.
    Group(String),
    /// A token scope; users and apps whose token carries it get the policy.
    Scope(String),
}

impl fmt::Display for AttachTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachTarget::Certificate(id) => write!(f, "certificate {id}"),
            AttachTarget::Device(id) => write!(f, "device {id}"),
            AttachTarget::Group(g) => write!(f, "group {g}"),
            AttachTarget::Scope(s) => write!(f, "scope {s}"),
        }
    }
}

struct CompiledCondition {
    qualifier: Option<SetQualifier>,
    operator: ConditionOperator,
    key: Var,
    values: Box<[Pattern]>,
}

/// A resource pattern with the ARN's partition, service, region and account already decided
/// against the engine's [`Partition`] at compile time.
///
/// Those four fields are matched field by field: a `*` in the region never reaches into the
/// resource name. (IAM matches the whole ARN as one string, so there `arn:aws:iot:*:*:client/a`
/// also matches a client id `x:client/a`; fleetkit is stricter on purpose.)
enum CompiledResource {
    /// `*`: everything.
    Any,
    /// The prefix fields do not match this engine's partition: never matches.
    Never,
    /// `<type>/<name pattern>` with a literal type: the common case.
    Typed(&'static str, Pattern),
    /// The type part itself has wildcards: matched against `<type>/<name>`.
    Glob(Pattern),
}

impl CompiledResource {
    fn compile(
        resource: &str,
        partition: &Partition,
        names: &mut Names,
    ) -> std::result::Result<Self, String> {
        if resource == "*" {
            return Ok(CompiledResource::Any);
        }
        let fields: Vec<&str> = resource.splitn(6, ':').collect();
        let [_, part, service, region, account, rest] = fields[..] else {
            return Err(format!("`{resource}` is not an ARN"));
        };
        let scope = Scope::empty();
        for (field, value) in [
            (part, partition.partition.as_str()),
            (service, "iot"),
            (region, partition.region.as_str()),
            (account, partition.account.as_str()),
        ] {
            if field.contains("${") {
                return Err(format!(
                    "policy variables are not supported in the partition, service, region or account of `{resource}`"
                ));
            }
            let pattern = parse_value(field, names, true, false)?;
            if pattern.matches(Haystack::single(value.as_bytes()), &scope) != Match::Yes {
                return Ok(CompiledResource::Never);
            }
        }
        if let Some((kind, name)) = rest.split_once('/')
            && !kind.contains(['*', '?', '$'])
        {
            return Ok(
                match super::model::RESOURCE_TYPES.iter().find(|t| **t == kind) {
                    Some(t) => CompiledResource::Typed(t, parse_value(name, names, true, false)?),
                    None => CompiledResource::Never,
                },
            );
        }
        Ok(CompiledResource::Glob(parse_value(
            rest, names, true, false,
        )?))
    }

    fn matches(&self, kind: ResourceKind, name: &str, scope: &Scope<'_>) -> Match {
        match (self, kind) {
            (CompiledResource::Any, _) => Match::Yes,
            (_, ResourceKind::All) | (CompiledResource::Never, _) => Match::No,
            (CompiledResource::Typed(t, pattern), kind) => {
                if *t == kind.type_name() {
                    pattern.matches(Haystack::single(name.as_bytes()), scope)
                } else {
                    Match::No
                }
            }
            (CompiledResource::Glob(pattern), kind) => pattern.matches(
                Haystack::new([kind.type_name().as_bytes(), b"/", name.as_bytes(), &[]]),
                scope,
            ),
        }
    }
}

struct CompiledStatement {
    effect: Effect,
    resources: Box<[CompiledResource]>,
    conditions: Box<[CompiledCondition]>,
}

/// A policy version compiled into matchers.
pub(crate) struct CompiledPolicy {
    name: Arc<str>,
    version: u32,
    document: PolicyDocument,
    names: Names,
    statements: Box<[CompiledStatement]>,
    /// For each action (by `Action as usize`), the statements that name it.
    by_action: Box<[Box<[u16]>]>,
}

impl CompiledPolicy {
    fn compile(
        name: &str,
        version: u32,
        document: PolicyDocument,
        partition: &Partition,
    ) -> Result<Self> {
        document.validate()?;
        let mut names = Names::default();
        let mut by_action = vec![Vec::new(); Action::ALL.len()];
        let mut statements = Vec::with_capacity(document.statements.len());
        if document.statements.len() > usize::from(u16::MAX) {
            return Err(Error::invalid("policy Statement", "too many statements"));
        }
        for (i, st) in document.statements.iter().enumerate() {
            let err = |field: String, e: String| {
                Error::invalid(format!("policy Statement[{i}].{field}"), e)
            };
            let mut mask = 0u32;
            for (j, a) in st.actions.iter().enumerate() {
                mask |= action_mask(a).map_err(|e| err(format!("Action[{j}]"), e))?;
            }
            for action in Action::ALL {
                if mask & action.bit() != 0 {
                    by_action[action as usize].push(i as u16);
                }
            }
            let resources = st
                .resources
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    CompiledResource::compile(r, partition, &mut names)
                        .map_err(|e| err(format!("Resource[{j}]"), e))
                })
                .collect::<Result<Vec<_>>>()?;
            let conditions = st
                .conditions
                .iter()
                .map(|c| {
                    let field = format!("Condition.{}.{}", c.operator.name(), c.key);
                    let key = parse_var(&c.key, &mut names).map_err(|e| err(field.clone(), e))?;
                    let (wildcards, fold_case) = match c.operator {
                        ConditionOperator::StringLike | ConditionOperator::StringNotLike => {
                            (true, false)
                        }
                        ConditionOperator::StringEqualsIgnoreCase
                        | ConditionOperator::StringNotEqualsIgnoreCase => (false, true),
                        _ => (false, false),
                    };
                    let values = c
                        .values
                        .iter()
                        .map(|v| {
                            parse_value(v, &mut names, wildcards, fold_case)
                                .map_err(|e| err(field.clone(), e))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(CompiledCondition {
                        qualifier: c.qualifier,
                        operator: c.operator,
                        key,
                        values: values.into_boxed_slice(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            statements.push(CompiledStatement {
                effect: st.effect,
                resources: resources.into_boxed_slice(),
                conditions: conditions.into_boxed_slice(),
            });
        }
        Ok(CompiledPolicy {
            name: name.into(),
            version,
            document,
            names,
            statements: statements.into_boxed_slice(),
            by_action: by_action.into_iter().map(Vec::into_boxed_slice).collect(),
        })
    }
}

struct StoredPolicy {
    /// Oldest first.
    versions: Vec<Arc<CompiledPolicy>>,
    default: u32,
    next_version: u32,
}

impl StoredPolicy {
    fn default_version(&self) -> &Arc<CompiledPolicy> {
        self.versions
            .iter()
            .find(|v| v.version == self.default)
            .expect("the default version is always kept")
    }
}

/// A policy's metadata, as listed by [`PolicyEngine::policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Name.
    pub name: String,
    /// The version that is in force.
    pub default_version: u32,
    /// All kept versions, oldest first.
    pub versions: Vec<u32>,
    /// The document of the default version.
    pub document: PolicyDocument,
}

/// Holds named, versioned policies compiled once, their attachments, and the thing-group tree;
/// resolves a [`PrincipalContext`] into a [`Principal`] that decides requests.
///
/// ```
/// use fleetkit::policy::{AttachTarget, Partition, PolicyDocument, PolicyEngine, PrincipalContext, Request};
///
/// let mut engine = PolicyEngine::new(Partition::local());
/// engine.put_policy("sensor", &PolicyDocument::from_json(r#"{"Version": "2012-10-17", "Statement": [
///   {"Effect": "Allow", "Action": "iot:Connect",
///    "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
///   {"Effect": "Allow", "Action": "iot:Publish",
///    "Resource": "arn:aws:iot:*:*:topic/sensors/${iot:Connection.Thing.ThingName}/*"},
///   {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/sensors/*/admin"}
/// ]}"#)?)?;
/// engine.attach_policy("sensor", AttachTarget::Group("sensors".into()))?;
///
/// let principal = engine.principal(
///     PrincipalContext::device("dev-1", "dev-1", None).with_groups(["sensors"]),
/// );
/// assert!(principal.authorize(&Request::connect("dev-1")).is_allowed());
/// assert!(principal.authorize(&Request::publish("sensors/dev-1/temp")).is_allowed());
/// assert!(!principal.authorize(&Request::publish("sensors/dev-2/temp")).is_allowed());
/// let denied = principal.authorize(&Request::publish("sensors/dev-1/admin"));
/// assert_eq!(
///     denied.to_string(),
///     "denied: statement 3 of policy `sensor` (v1) denies iot:Publish on \
///      `arn:aws:iot:local:000000000000:topic/sensors/dev-1/admin` (matched `arn:aws:iot:*:*:topic/sensors/*/admin`)"
/// );
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct PolicyEngine {
    partition: Partition,
    arn_prefix: Arc<str>,
    policies: HashMap<String, StoredPolicy>,
    attachments: HashMap<AttachTarget, Vec<String>>,
    /// The reverse index: policy name → what it is attached to (keeps delete O(targets)).
    targets: HashMap<String, HashSet<AttachTarget>>,
    group_parents: HashMap<String, String>,
    generation: u64,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("partition", &self.partition)
            .field("policies", &self.policies.len())
            .field("attachments", &self.attachments.len())
            .field("generation", &self.generation)
            .finish()
    }
}

fn policy_not_found(name: &str) -> Error {
    Error::NotFound {
        what: "policy",
        id: name.to_string(),
    }
}

impl PolicyEngine {
    /// An empty engine evaluating ARNs in `partition`.
    pub fn new(partition: Partition) -> Self {
        PolicyEngine {
            arn_prefix: partition.arn_prefix().into(),
            partition,
            policies: HashMap::new(),
            attachments: HashMap::new(),
            targets: HashMap::new(),
            group_parents: HashMap::new(),
            generation: 0,
        }
    }

    /// The partition ARNs are evaluated in.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Increases on every change; a [`Principal`] made at an older generation should be
    /// re-resolved with [`principal`](Self::principal).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks that something principals are built from changed outside the engine (a
    /// device's thing groups), so holders of a [`Principal`] rebuild it.
    pub(crate) fn touch(&mut self) {
        self.generation += 1;
    }

    /// Creates policy `name` (version 1), or adds a new version and makes it the default.
    /// Keeps the last [`MAX_POLICY_VERSIONS`] versions. Returns the new version number.
    ///
    /// The document is validated and compiled first: on error nothing changes.
    pub fn put_policy(&mut self, name: &str, document: &PolicyDocument) -> Result<u32> {
        if name.is_empty()
            || name.len() > 128
            || !name.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '=' | ',' | '.' | '@')
            })
        {
            return Err(Error::invalid(
                "policy name",
                format!("{name:?}: 1 to 128 characters of letters, digits and _-+=,.@"),
            ));
        }
        let version = self.policies.get(name).map_or(1, |p| p.next_version);
        let compiled = Arc::new(CompiledPolicy::compile(
            name,
            version,
            document.clone(),
            &self.partition,
        )?);
        let stored = self
            .policies
            .entry(name.to_string())
            .or_insert(StoredPolicy {
                versions: Vec::new(),
                default: version,
                next_version: 1,
            });
        stored.versions.push(compiled);
        stored.default = version;
        stored.next_version = version + 1;
        if stored.versions.len() > MAX_POLICY_VERSIONS {
            stored.versions.remove(0);
        }
        self.generation += 1;
        Ok(version)
    }

    /// Makes an earlier kept version the default again (a policy rollback).
    pub fn set_default_version(&mut self, name: &str, version: u32) -> Result<()> {
        let stored = self
            .policies
            .get_mut(name)
            .ok_or_else(|| policy_not_found(name))?;
        if !stored.versions.iter().any(|v| v.version == version) {
            return Err(Error::NotFound {
                what: "policy version",
                id: format!("{name} v{version}"),
            });
        }
        stored.default = version;
        self.generation += 1;
        Ok(())
    }

    /// The policy's versions and its default document.
    pub fn policy(&self, name: &str) -> Result<PolicyInfo> {
        let stored = self
            .policies
            .get(name)
            .ok_or_else(|| policy_not_found(name))?;
        Ok(PolicyInfo {
            name: name.to_string(),
            default_version: stored.default,
            versions: stored.versions.iter().map(|v| v.version).collect(),
            document: stored.default_version().document.clone(),
        })
    }

    /// Names of all policies, sorted.
    pub fn policy_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.policies.keys().cloned().collect();
        names.sort();
        names
    }

    /// Deletes a policy. Refused with [`Error::Precondition`] while it is attached anywhere
    /// (as AWS does), so no principal silently loses a permission.
    pub fn delete_policy(&mut self, name: &str) -> Result<()> {
        if !self.policies.contains_key(name) {
            return Err(policy_not_found(name));
        }
        let targets = self.targets_of(name);
        if !targets.is_empty() {
            return Err(Error::Precondition(format!(
                "policy `{name}` is still attached to {} target(s), e.g. {}",
                targets.len(),
                targets[0]
            )));
        }
        self.policies.remove(name);
        self.generation += 1;
        Ok(())
    }

    /// Attaches policy `name` to `target` (idempotent).
    pub fn attach_policy(&mut self, name: &str, target: AttachTarget) -> Result<()> {
        if !self.policies.contains_key(name) {
            return Err(policy_not_found(name));
        }
        let list = self.attachments.entry(target.clone()).or_default();
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
            self.targets
                .entry(name.to_string())
                .or_default()
                .insert(target);
            self.generation += 1;
        }
        Ok(())
    }

    /// Detaches policy `name` from `target`.
    pub fn detach_policy(&mut self, name: &str, target: &AttachTarget) -> Result<()> {
        let list = self
            .attachments
            .get_mut(target)
            .ok_or_else(|| Error::NotFound {
                what: "policy attachment",
                id: format!("{name} on {target}"),
            })?;
        let before = list.len();
        list.retain(|n| n != name);
        if list.len() == before {
            return Err(Error::NotFound {
                what: "policy attachment",
                id: format!("{name} on {target}"),
            });
        }
        if list.is_empty() {
            self.attachments.remove(target);
        }
        if let Some(set) = self.targets.get_mut(name) {
            set.remove(target);
            if set.is_empty() {
                self.targets.remove(name);
            }
        }
        self.generation += 1;
        Ok(())
    }

    /// Everything `name` is attached to.
    pub fn targets_of(&self, name: &str) -> Vec<AttachTarget> {
        let mut targets: Vec<AttachTarget> = self
            .targets
            .get(name)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        targets.sort_by_key(|t| t.to_string());
        targets
    }

    /// Makes `parent` the parent group of `group` (policies on a group apply to its
    /// descendants). Refuses a change that would make a cycle.
    pub fn set_group_parent(&mut self, group: &str, parent: &str) -> Result<()> {
        let mut cursor = Some(parent);
        while let Some(g) = cursor {
            if g == group {
                return Err(Error::invalid(
                    "group parent",
                    format!("making {parent} the parent of {group} would create a cycle"),
                ));
            }
            cursor = self.group_parents.get(g).map(String::as_str);
        }
        self.group_parents
            .insert(group.to_string(), parent.to_string());
        self.generation += 1;
        Ok(())
    }

    /// `groups` and all their ancestors, without duplicates, nearest first.
    pub fn expand_groups(&self, groups: &[String]) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for g in groups {
            let mut cursor = Some(g.as_str());
            while let Some(name) = cursor {
                if !seen.insert(name.to_string()) {
                    break;
                }
                out.push(name.to_string());
                cursor = self.group_parents.get(name).map(String::as_str);
            }
        }
        out
    }

    /// Resolves the policies that apply to `ctx`: those attached to its certificate, its device,
    /// its groups and their ancestors, and its token scopes. The cost depends on what is
    /// attached to this principal, not on the size of the fleet.
    pub fn principal(&self, ctx: PrincipalContext) -> Principal {
        let groups = self.expand_groups(&ctx.groups);
        let mut targets: Vec<AttachTarget> = Vec::new();
        if let Some(cert) = &ctx.certificate {
            targets.push(AttachTarget::Certificate(cert.id.clone()));
        }
        if let Some(device) = &ctx.device_id {
            targets.push(AttachTarget::Device(device.clone()));
        }
        targets.extend(groups.iter().cloned().map(AttachTarget::Group));
        targets.extend(ctx.scopes.iter().cloned().map(AttachTarget::Scope));
        let mut seen = HashSet::new();
        let mut policies = Vec::new();
        for target in &targets {
            for name in self.attachments.get(target).into_iter().flatten() {
                if seen.insert(name.as_str())
                    && let Some(stored) = self.policies.get(name)
                {
                    policies.push(stored.default_version().clone());
                }
            }
        }
        Principal {
            ctx,
            groups,
            policies: policies.into(),
            arn_prefix: self.arn_prefix.clone(),
            generation: self.generation,
        }
    }

    /// Compiles `document` as if it were attached alone and decides `request` for `ctx`:
    /// for checking a policy before deploying it.
    pub fn test_policy(
        &self,
        document: &PolicyDocument,
        ctx: PrincipalContext,
        request: &Request<'_>,
    ) -> Result<Outcome> {
        let compiled = Arc::new(CompiledPolicy::compile(
            "candidate",
            0,
            document.clone(),
            &self.partition,
        )?);
        let principal = Principal {
            groups: self.expand_groups(&ctx.groups),
            ctx,
            policies: Arc::from(vec![compiled]),
            arn_prefix: self.arn_prefix.clone(),
            generation: self.generation,
        };
        Ok(principal.authorize(request).outcome())
    }
}

/// A principal with its effective policies resolved: decides requests without consulting the
/// engine, without locking and without allocating.
#[derive(Clone)]
pub struct Principal {
    ctx: PrincipalContext,
    groups: Vec<String>,
    policies: Arc<[Arc<CompiledPolicy>]>,
    arn_prefix: Arc<str>,
    generation: u64,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("device_id", &self.ctx.device_id)
            .field("client_id", &self.ctx.client_id)
            .field("user", &self.ctx.user)
            .field("groups", &self.groups)
            .field(
                "policies",
                &self.policies.iter().map(|p| &*p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The three outcomes AWS IoT reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Some statement allows and none denies.
    Allow,
    /// A statement denies (whatever else allows).
    ExplicitDeny,
    /// Nothing allows (the default).
    ImplicitDeny,
}

/// The statement that decided.
#[derive(Clone, Copy)]
struct Decider<'p> {
    policy: &'p CompiledPolicy,
    statement: u16,
    resource: u16,
}

/// A decision and what made it. `Display` is the explanation a person reads.
#[derive(Clone, Copy)]
pub struct Decision<'a> {
    outcome: Outcome,
    decider: Option<Decider<'a>>,
    /// For an implicit deny: a statement that would have applied but for a variable without a
    /// value (the most common reason a correct-looking policy denies).
    unresolved: Option<(Decider<'a>, Var)>,
    request: Request<'a>,
    arn_prefix: &'a str,
    policy_count: usize,
}

impl<'a> Decision<'a> {
    /// Allow, explicit deny or implicit deny.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The deciding statement: policy name, version and statement number (from 1).
    pub fn statement(&self) -> Option<(&'a str, u32, usize)> {
        self.decider.map(|d| {
            (
                &*d.policy.name,
                d.policy.version,
                usize::from(d.statement) + 1,
            )
        })
    }

    /// The explanation, as a `String` (same as `to_string()`).
    pub fn explain(&self) -> String {
        self.to_string()
    }

    fn write_resource(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.request.kind() {
            ResourceKind::All => f.write_str("`*`"),
            kind => write!(
                f,
                "`{}{}/{}`",
                self.arn_prefix,
                kind.type_name(),
                self.request.name()
            ),
        }
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = self.request.action();
        match (self.outcome, self.decider) {
            (Outcome::ImplicitDeny, _) | (_, None) => {
                write!(
                    f,
                    "denied: no statement in the {} attached polic{} allows {action} on ",
                    self.policy_count,
                    if self.policy_count == 1 { "y" } else { "ies" }
                )?;
                self.write_resource(f)?;
                if let Some((d, var)) = self.unresolved {
                    write!(
                        f,
                        " (statement {} of policy `{}` would, but ${{{}}} has no value for this principal)",
                        d.statement + 1,
                        d.policy.name,
                        VarDisplay(var, &d.policy.names.attributes)
                    )?;
                }
                Ok(())
            }
            (outcome, Some(d)) => {
                let (verb, lead) = match outcome {
                    Outcome::Allow => ("allows", "allowed"),
                    _ => ("denies", "denied"),
                };
                let st = &d.policy.document.statements[usize::from(d.statement)];
                write!(f, "{lead}: statement {}", d.statement + 1)?;
                if let Some(sid) = &st.sid {
                    write!(f, " ({sid})")?;
                }
                write!(
                    f,
                    " of policy `{}` (v{}) {verb} {action} on ",
                    d.policy.name, d.policy.version
                )?;
                self.write_resource(f)?;
                write!(f, " (matched `{}`)", st.resources[usize::from(d.resource)])
            }
        }
    }
}

impl fmt::Debug for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("outcome", &self.outcome)
            .field("statement", &self.statement())
            .field("explanation", &self.to_string())
            .finish()
    }
}

impl Principal {
    /// The context this principal was made from.
    pub fn context(&self) -> &PrincipalContext {
        &self.ctx
    }

    /// The engine generation this principal was resolved at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The names of the policies in force for this principal.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| &*p.name).collect()
    }

    /// Its groups, parents included.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// Decides `request`: default deny, and an explicit deny beats any allow.
    pub fn authorize<'a>(&'a self, request: &Request<'a>) -> Decision<'a> {
        let action = request.action();
        let (kind, name) = (request.kind(), request.name());
        let mut allow: Option<Decider<'a>> = None;
        let mut unresolved: Option<(Decider<'a>, Var)> = None;
        for policy in self.policies.iter() {
            let scope = Scope {
                ctx: Some(&self.ctx),
                groups: &self.groups,
                target_groups: request.target_groups(),
                names: &policy.names.attributes,
            };
            for &si in policy.by_action[action as usize].iter() {
                let st = &policy.statements[usize::from(si)];
                let mut matched = None;
                for (ri, pattern) in st.resources.iter().enumerate() {
                    match pattern.matches(kind, name, &scope) {
                        Match::Yes => {
                            matched = Some(ri as u16);
                            break;
                        }
                        Match::Unresolved(var) => {
                            if st.effect == Effect::Allow && unresolved.is_none() {
                                unresolved = Some((
                                    Decider {
                                        policy,
                                        statement: si,
                                        resource: ri as u16,
                                    },
                                    var,
                                ));
                            }
                        }
                        Match::No => {}
                    }
                }
                let Some(resource) = matched else { continue };
                if !st.conditions.iter().all(|c| condition_holds(c, &scope)) {
                    continue;
                }
                let decider = Decider {
                    policy,
                    statement: si,
                    resource,
                };
                match st.effect {
                    Effect::Deny => {
                        return Decision {
                            outcome: Outcome::ExplicitDeny,
                            decider: Some(decider),
                            unresolved: None,
                            request: *request,
                            arn_prefix: &self.arn_prefix,
                            policy_count: self.policies.len(),
                        };
                    }
                    Effect::Allow => {
                        allow.get_or_insert(decider);
                    }
                }
            }
        }
        Decision {
            outcome: if allow.is_some() {
                Outcome::Allow
            } else {
                Outcome::ImplicitDeny
            },
            decider: allow,
            unresolved: if allow.is_some() { None } else { unresolved },
            request: *request,
            arn_prefix: &self.arn_prefix,
            policy_count: self.policies.len(),
        }
    }
}

/// Evaluates one condition. A value pattern whose variable has no value makes the condition
/// false: a statement never applies on the strength of something unknown.
fn condition_holds(c: &CompiledCondition, scope: &Scope<'_>) -> bool {
    if c.operator == ConditionOperator::Null {
        let absent = scope.values(c.key).next().is_none();
        // Values were validated to be "true" or "false".
        return c.values.iter().any(|v| {
            let wants_absent = v.matches(Haystack::single(b"true"), scope) == Match::Yes;
            wants_absent == absent
        });
    }
    let negated = c.operator.is_negated();
    // Per value of the key: Some(true) if the operator holds for it, None if unresolvable.
    let check = |value: &str| -> Option<bool> {
        let mut any = false;
        for pattern in c.values.iter() {
            match pattern.matches(Haystack::single(value.as_bytes()), scope) {
                Match::Yes => any = true,
                Match::No => {}
                Match::Unresolved(_) => return None,
            }
        }
        Some(if negated { !any } else { any })
    };
    match c.qualifier {
        Some(SetQualifier::ForAllValues) => {
            for v in scope.values(c.key) {
                if check(v) != Some(true) {
                    return false;
                }
            }
            true
        }
        _ => {
            let mut count = 0usize;
            for v in scope.values(c.key) {
                count += 1;
                match check(v) {
                    Some(true) => return true,
                    None => return false,
                    Some(false) => {}
                }
            }
            // An absent single-valued key satisfies a negated operator (IAM semantics).
            count == 0 && negated && c.qualifier.is_none()
        }
    }
}

/// Everything a [`PolicyEngine`] holds, in a form that can be written to disk and read back
/// (the local hub's data directory uses it).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineSnapshot {
    /// Policies: name, default version, next version number, and kept versions as policy JSON.
    pub policies: Vec<PolicySnapshot>,
    /// Attachments as (target kind, target id, policy names); kinds are `certificate`,
    /// `device`, `group` and `scope`.
    pub attachments: Vec<(String, String, Vec<String>)>,
    /// Thing-group parents as (group, parent).
    pub group_parents: Vec<(String, String)>,
}

/// One policy in an [`EngineSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicySnapshot {
    /// Policy name.
    pub name: String,
    /// The version in force.
    pub default_version: u32,
    /// The number the next version will get.
    pub next_version: u32,
    /// Kept versions, oldest first: (version, AWS IoT policy JSON).
    pub versions: Vec<(u32, String)>,
}

impl AttachTarget {
    fn kind_and_id(&self) -> (&'static str, &str) {
        match self {
            AttachTarget::Certificate(id) => ("certificate", id),
            AttachTarget::Device(id) => ("device", id),
            AttachTarget::Group(id) => ("group", id),
            AttachTarget::Scope(id) => ("scope", id),
        }
    }

    fn from_kind_and_id(kind: &str, id: String) -> Result<Self> {
        Ok(match kind {
            "certificate" => AttachTarget::Certificate(id),
            "device" => AttachTarget::Device(id),
            "group" => AttachTarget::Group(id),
            "scope" => AttachTarget::Scope(id),
            other => {
                return Err(Error::invalid(
                    "policy snapshot",
                    format!("unknown attachment target kind {other:?}"),
                ));
            }
        })
    }
}

impl PolicyEngine {
    /// Everything the engine holds, for saving.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut policies: Vec<PolicySnapshot> = self
            .policies
            .iter()
            .map(|(name, stored)| PolicySnapshot {
                name: name.clone(),
                default_version: stored.default,
                next_version: stored.next_version,
                versions: stored
                    .versions
                    .iter()
                    .map(|v| (v.version, v.document.to_json()))
                    .collect(),
            })
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut attachments: Vec<(String, String, Vec<String>)> = self
            .attachments
            .iter()
            .map(|(target, names)| {
                let (kind, id) = target.kind_and_id();
                (kind.to_string(), id.to_string(), names.clone())
            })
            .collect();
        attachments.sort();
        let mut group_parents: Vec<(String, String)> = self
            .group_parents
            .iter()
            .map(|(g, p)| (g.clone(), p.clone()))
            .collect();
        group_parents.sort();
        EngineSnapshot {
            policies,
            attachments,
            group_parents,
        }
    }

    /// Rebuilds an engine from a snapshot, recompiling every kept version. Fails (building
    /// nothing) if any document no longer parses or an attachment names a missing policy.
    pub fn restore(partition: Partition, snapshot: &EngineSnapshot) -> Result<Self> {
        let mut engine = PolicyEngine::new(partition);
        for p in &snapshot.policies {
            let mut versions = Vec::with_capacity(p.versions.len());
            for (version, json) in &p.versions {
                let doc = PolicyDocument::from_json(json)?;
                versions.push(Arc::new(CompiledPolicy::compile(
                    &p.name,
                    *version,
                    doc,
                    &engine.partition,
                )?));
            }
            if !versions.iter().any(|v| v.version == p.default_version) {
                return Err(Error::invalid(
                    "policy snapshot",
                    format!("policy {} has no version {}", p.name, p.default_version),
                ));
            }
            engine.policies.insert(
                p.name.clone(),
                StoredPolicy {
                    versions,
                    default: p.default_version,
                    next_version: p.next_version,
                },
            );
        }
        for (kind, id, names) in &snapshot.attachments {
            let target = AttachTarget::from_kind_and_id(kind, id.clone())?;
            for name in names {
                engine.attach_policy(name, target.clone())?;
            }
        }
        for (group, parent) in &snapshot.group_parents {
            engine.set_group_parent(group, parent)?;
        }
        Ok(engine)
    }
}
