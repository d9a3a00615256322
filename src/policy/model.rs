//! The policy document model: AWS IoT policy JSON, read and written so it round-trips.

use std::fmt;

use serde_json::{Map, Value};

use super::vars::{Names, parse_pattern_with, parse_var};
use crate::{Error, Result};

/// Largest policy document accepted, in characters excluding whitespace: AWS IoT Core's quota,
/// so a policy that loads here also loads there.
pub const MAX_POLICY_CHARS: usize = 2048;

/// Hard bound on the raw text handed to the parser (whitespace included).
const MAX_POLICY_BYTES: usize = 64 * 1024;

/// An action a policy can allow or deny.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `iot:Connect` on `client/<client id>`.
    Connect,
    /// `iot:Publish` on `topic/<topic>`.
    Publish,
    /// `iot:Subscribe` on `topicfilter/<filter>`.
    Subscribe,
    /// `iot:Receive` on `topic/<topic>`: checked for every delivery.
    Receive,
    /// `iot:RetainPublish` on `topic/<topic>`: a publish with RETAIN set (needs Publish too).
    RetainPublish,
    /// `iot:GetRetainedMessage` on `topic/<topic>`.
    GetRetainedMessage,
    /// `iot:ListRetainedMessages` on `*`.
    ListRetainedMessages,
    /// `iot:GetThingShadow` on `thing/<name>`: read the twin.
    GetThingShadow,
    /// `iot:UpdateThingShadow` on `thing/<name>`: update the twin.
    UpdateThingShadow,
    /// `iot:DeleteThingShadow` on `thing/<name>`.
    DeleteThingShadow,
    /// `iot:ListNamedShadowsForThing` on `thing/<name>`.
    ListNamedShadowsForThing,
    /// `iot:DescribeJobExecution` on `thing/<name>`.
    DescribeJobExecution,
    /// `iot:GetPendingJobExecutions` on `thing/<name>`.
    GetPendingJobExecutions,
    /// `iot:UpdateJobExecution` on `thing/<name>`.
    UpdateJobExecution,
    /// `iot:StartNextPendingJobExecution` on `thing/<name>`.
    StartNextPendingJobExecution,
    /// `fleetkit:InvokeMethod` on `thing/<name>`: call a direct method on a device.
    InvokeMethod,
    /// `fleetkit:SendCommand` on `thing/<name>`: send a cloud-to-device command.
    SendCommand,
    /// `fleetkit:UpdateDesired` on `thing/<name>`: change a device's desired twin state.
    UpdateDesired,
    /// `fleetkit:Provision` on `provisioningtemplate/<name>`: obtain an identity by claim.
    Provision,
}

impl Action {
    /// Every action, in a fixed order (bit positions in compiled statements).
    pub const ALL: [Action; 19] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::RetainPublish,
        Action::GetRetainedMessage,
        Action::ListRetainedMessages,
        Action::GetThingShadow,
        Action::UpdateThingShadow,
        Action::DeleteThingShadow,
        Action::ListNamedShadowsForThing,
        Action::DescribeJobExecution,
        Action::GetPendingJobExecutions,
        Action::UpdateJobExecution,
        Action::StartNextPendingJobExecution,
        Action::InvokeMethod,
        Action::SendCommand,
        Action::UpdateDesired,
        Action::Provision,
    ];

    /// The action's name in policy documents, e.g. `iot:Publish`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
            Action::GetRetainedMessage => "iot:GetRetainedMessage",
            Action::ListRetainedMessages => "iot:ListRetainedMessages",
            Action::GetThingShadow => "iot:GetThingShadow",
            Action::UpdateThingShadow => "iot:UpdateThingShadow",
            Action::DeleteThingShadow => "iot:DeleteThingShadow",
            Action::ListNamedShadowsForThing => "iot:ListNamedShadowsForThing",
            Action::DescribeJobExecution => "iot:DescribeJobExecution",
            Action::GetPendingJobExecutions => "iot:GetPendingJobExecutions",
            Action::UpdateJobExecution => "iot:UpdateJobExecution",
            Action::StartNextPendingJobExecution => "iot:StartNextPendingJobExecution",
            Action::InvokeMethod => "fleetkit:InvokeMethod",
            Action::SendCommand => "fleetkit:SendCommand",
            Action::UpdateDesired => "fleetkit:UpdateDesired",
            Action::Provision => "fleetkit:Provision",
        }
    }

    /// Looks an action up by its exact name.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether AWS IoT Core knows this action (the `iot:` ones) — `fleetkit:` actions are
    /// enforced by the local hub and the SDK only.
    pub fn is_aws(self) -> bool {
        self.name().starts_with("iot:")
    }

    /// Whether the action is a device data-plane action (MQTT, shadow, jobs).
    pub fn is_data_plane(self) -> bool {
        !matches!(
            self,
            Action::InvokeMethod | Action::SendCommand | Action::UpdateDesired | Action::Provision
        )
    }

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Allow or Deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Grants the actions on the resources.
    Allow,
    /// Refuses them, whatever any other statement allows.
    Deny,
}

/// A condition operator (the supported subset of IAM's).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionOperator {
    /// Exact, case-sensitive match with one of the values.
    StringEquals,
    /// Matches none of the values.
    StringNotEquals,
    /// Case-insensitive match with one of the values.
    StringEqualsIgnoreCase,
    /// Case-insensitive: matches none of the values.
    StringNotEqualsIgnoreCase,
    /// Wildcard (`*`, `?`) match with one of the values.
    StringLike,
    /// Wildcard match with none of the values.
    StringNotLike,
    /// `"true"` / `"false"` comparison.
    Bool,
    /// `"true"`: the key has no value; `"false"`: it has one.
    Null,
}

impl ConditionOperator {
    const ALL: [ConditionOperator; 8] = [
        ConditionOperator::StringEquals,
        ConditionOperator::StringNotEquals,
        ConditionOperator::StringEqualsIgnoreCase,
        ConditionOperator::StringNotEqualsIgnoreCase,
        ConditionOperator::StringLike,
        ConditionOperator::StringNotLike,
        ConditionOperator::Bool,
        ConditionOperator::Null,
    ];

    /// The operator's name in policy JSON.
    pub fn name(self) -> &'static str {
        match self {
            ConditionOperator::StringEquals => "StringEquals",
            ConditionOperator::StringNotEquals => "StringNotEquals",
            ConditionOperator::StringEqualsIgnoreCase => "StringEqualsIgnoreCase",
            ConditionOperator::StringNotEqualsIgnoreCase => "StringNotEqualsIgnoreCase",
            ConditionOperator::StringLike => "StringLike",
            ConditionOperator::StringNotLike => "StringNotLike",
            ConditionOperator::Bool => "Bool",
            ConditionOperator::Null => "Null",
        }
    }

    /// Negated operators hold when *no* value matches (and when the key is absent).
    pub(crate) fn is_negated(self) -> bool {
        matches!(
            self,
            ConditionOperator::StringNotEquals
                | ConditionOperator::StringNotEqualsIgnoreCase
                | ConditionOperator::StringNotLike
        )
    }
}

/// How a condition treats a key with several values (IAM's set operators).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetQualifier {
    /// `ForAnyValue:`: at least one of the key's values satisfies the operator.
    ForAnyValue,
    /// `ForAllValues:`: every value does (true when the key has no values).
    ForAllValues,
}

/// One condition: `operator` applied to `key` with `values` (ORed for positive operators).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// The set qualifier, for multi-valued keys.
    pub qualifier: Option<SetQualifier>,
    /// The operator.
    pub operator: ConditionOperator,
    /// The condition key, e.g. `iot:Connection.Thing.ThingTypeName`.
    pub key: String,
    /// The values (policy variables allowed).
    pub values: Vec<String>,
}

/// One statement of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Optional statement id.
    pub sid: Option<String>,
    /// Allow or Deny.
    pub effect: Effect,
    /// Action names or patterns (`iot:Publish`, `iot:*`, `iot:*Shadow`).
    pub actions: Vec<String>,
    /// Resource ARNs or patterns, or `*`.
    pub resources: Vec<String>,
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

impl Statement {
    /// An Allow statement.
    pub fn allow(actions: &[&str], resources: &[&str]) -> Self {
        Self::new(Effect::Allow, actions, resources)
    }

    /// A Deny statement.
    pub fn deny(actions: &[&str], resources: &[&str]) -> Self {
        Self::new(Effect::Deny, actions, resources)
    }

    fn new(effect: Effect, actions: &[&str], resources: &[&str]) -> Self {
        Statement {
            sid: None,
            effect,
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            conditions: Vec::new(),
        }
    }

    /// Adds a condition.
    pub fn with_condition(
        mut self,
        operator: ConditionOperator,
        key: &str,
        values: &[&str],
    ) -> Self {
        self.conditions.push(Condition {
            qualifier: None,
            operator,
            key: key.to_string(),
            values: values.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Sets the statement id.
    pub fn with_sid(mut self, sid: &str) -> Self {
        self.sid = Some(sid.to_string());
        self
    }
}

/// A policy document: a version and a list of statements.
///
/// ```
/// use fleetkit::policy::PolicyDocument;
///
/// let doc = PolicyDocument::from_json(r#"{
///   "Version": "2012-10-17",
///   "Statement": [{
///     "Effect": "Allow",
///     "Action": "iot:Publish",
///     "Resource": "arn:aws:iot:us-east-1:123456789012:topic/sensors/${iot:Connection.Thing.ThingName}/*"
///   }]
/// }"#)?;
/// let again = PolicyDocument::from_json(&doc.to_json())?;
/// assert_eq!(doc, again);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDocument {
    /// The policy language version (`2012-10-17`).
    pub version: String,
    /// The statements, in order (numbered from 1 in explanations).
    pub statements: Vec<Statement>,
}

impl PolicyDocument {
    /// A document with the current language version and these statements.
    pub fn new(statements: Vec<Statement>) -> Self {
        PolicyDocument {
            version: "2012-10-17".into(),
            statements,
        }
    }

    /// Parses AWS IoT policy JSON, validating everything a policy can get wrong.
    ///
    /// Errors are [`Error::InvalidInput`] whose field names the place, e.g.
    /// `policy Statement[1].Action[0]`: unknown actions, malformed or foreign ARNs, unknown
    /// variables and condition keys, unsupported elements (`NotAction`, `NotResource`,
    /// `Principal`), and documents over [`MAX_POLICY_CHARS`] non-whitespace characters.
    pub fn from_json(text: &str) -> Result<Self> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(Error::invalid(
                "policy",
                format!(
                    "{} bytes is more than the {MAX_POLICY_BYTES} accepted",
                    text.len()
                ),
            ));
        }
        let chars = text.chars().filter(|c| !c.is_whitespace()).count();
        if chars > MAX_POLICY_CHARS {
            return Err(Error::invalid(
                "policy",
                format!(
                    "{chars} characters (excluding whitespace) exceeds AWS IoT's limit of {MAX_POLICY_CHARS}"
                ),
            ));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::invalid(
                "policy",
                format!(
                    "not valid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let doc = Self::from_value(&value)?;
        doc.validate()?;
        Ok(doc)
    }

    fn from_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("policy", "must be a JSON object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "Version" | "Statement" | "Id") {
                return Err(Error::invalid(
                    format!("policy {key}"),
                    "unknown top-level element",
                ));
            }
        }
        let version = match obj.get("Version") {
            None => "2012-10-17".to_string(),
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => v.clone(),
            Some(other) => {
                return Err(Error::invalid(
                    "policy Version",
                    format!("{other} is not a policy language version (use \"2012-10-17\")"),
                ));
            }
        };
        let statements = match obj.get("Statement") {
            Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(single @ Value::Object(_)) => vec![single],
            Some(_) => {
                return Err(Error::invalid(
                    "policy Statement",
                    "must be an object or an array of objects",
                ));
            }
            None => return Err(Error::invalid("policy Statement", "is missing")),
        };
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse_statement(i, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(PolicyDocument {
            version,
            statements,
        })
    }

    /// Checks every action, resource, variable and condition (what [`from_json`] checks);
    /// documents built in code are checked when they are added to an engine.
    ///
    /// [`from_json`]: PolicyDocument::from_json
    pub fn validate(&self) -> Result<()> {
        if self.statements.is_empty() {
            return Err(Error::invalid("policy Statement", "has no statements"));
        }
        let mut names = Names::default();
        for (i, st) in self.statements.iter().enumerate() {
            let at = |field: &str| format!("policy Statement[{i}].{field}");
            if st.actions.is_empty() {
                return Err(Error::invalid(at("Action"), "is empty"));
            }
            if st.resources.is_empty() {
                return Err(Error::invalid(at("Resource"), "is empty"));
            }
            for (j, a) in st.actions.iter().enumerate() {
                action_mask(a).map_err(|e| Error::invalid(at(&format!("Action[{j}]")), e))?;
            }
            for (j, r) in st.resources.iter().enumerate() {
                validate_resource(r)
                    .and_then(|()| parse_pattern_with(r, &mut names).map(|_| ()))
                    .map_err(|e| Error::invalid(at(&format!("Resource[{j}]")), e))?;
            }
            for c in &st.conditions {
                let field = at(&format!("Condition.{}.{}", c.operator.name(), c.key));
                let var = parse_var(&c.key, &mut names).map_err(|e| Error::invalid(&field, e))?;
                if c.qualifier.is_some() && !var.is_multi_valued() {
                    return Err(Error::invalid(
                        &field,
                        "ForAnyValue/ForAllValues only apply to multi-valued keys",
                    ));
                }
                if c.values.is_empty() {
                    return Err(Error::invalid(&field, "has no values"));
                }
                for v in &c.values {
                    if matches!(
                        c.operator,
                        ConditionOperator::Bool | ConditionOperator::Null
                    ) && v != "true"
                        && v != "false"
                    {
                        return Err(Error::invalid(
                            &field,
                            format!(
                                "{} takes \"true\" or \"false\", not {v:?}",
                                c.operator.name()
                            ),
                        ));
                    }
                    parse_pattern_with(v, &mut names).map_err(|e| Error::invalid(&field, e))?;
                }
            }
        }
        Ok(())
    }

    /// Writes AWS IoT policy JSON (pretty-printed). [`from_json`] reads it back to an equal
    /// document.
    ///
    /// [`from_json`]: PolicyDocument::from_json
    pub fn to_json(&self) -> String {
        let statements: Vec<Value> = self.statements.iter().map(statement_to_value).collect();
        let mut doc = Map::new();
        doc.insert("Version".into(), Value::String(self.version.clone()));
        doc.insert("Statement".into(), Value::Array(statements));
        serde_json::to_string_pretty(&Value::Object(doc)).expect("a JSON value always serialises")
    }

    /// Like [`to_json`](Self::to_json), but refuses documents AWS IoT Core cannot hold: a
    /// statement using a `fleetkit:` action, or more than [`MAX_POLICY_CHARS`] characters.
    pub fn to_aws_json(&self) -> Result<String> {
        for (i, st) in self.statements.iter().enumerate() {
            for (j, a) in st.actions.iter().enumerate() {
                if a.starts_with("fleetkit:") {
                    return Err(Error::NotSupported(format!(
                        "statement {} action {j} `{a}` exists only in fleetkit, not in AWS IoT Core",
                        i + 1
                    )));
                }
            }
            for c in &st.conditions {
                if c.key.starts_with("fleetkit:") {
                    return Err(Error::NotSupported(format!(
                        "statement {} condition key `{}` exists only in fleetkit",
                        i + 1,
                        c.key
                    )));
                }
            }
        }
        let json = self.to_json();
        let chars = json.chars().filter(|c| !c.is_whitespace()).count();
        if chars > MAX_POLICY_CHARS {
            return Err(Error::NotSupported(format!(
                "{chars} characters exceeds AWS IoT's policy size limit of {MAX_POLICY_CHARS}"
            )));
        }
        Ok(json)
    }
}

fn string_or_array(value: &Value, field: &str) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(j, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::invalid(format!("{field}[{j}]"), "must be a string"))
            })
            .collect(),
        _ => Err(Error::invalid(
            field,
            "must be a string or an array of strings",
        )),
    }
}

fn parse_statement(i: usize, value: &Value) -> Result<Statement> {
    let at = |field: &str| format!("policy Statement[{i}].{field}");
    let obj = value
        .as_object()
        .ok_or_else(|| Error::invalid(format!("policy Statement[{i}]"), "must be an object"))?;
    for key in obj.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Action" | "Resource" | "Condition" => {}
            "NotAction" | "NotResource" | "Principal" | "NotPrincipal" => {
                return Err(Error::invalid(
                    at(key),
                    "is not supported in AWS IoT policies or by fleetkit",
                ));
            }
            _ => return Err(Error::invalid(at(key), "unknown element")),
        }
    }
    let sid = match obj.get("Sid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Error::invalid(at("Sid"), "must be a string")),
    };
    let effect = match obj.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        Some(other) => {
            return Err(Error::invalid(
                at("Effect"),
                format!("{other:?} is neither \"Allow\" nor \"Deny\""),
            ));
        }
        None => return Err(Error::invalid(at("Effect"), "is missing or not a string")),
    };
    let actions = string_or_array(
        obj.get("Action")
            .ok_or_else(|| Error::invalid(at("Action"), "is missing"))?,
        &at("Action"),
    )?;
    let resources = string_or_array(
        obj.get("Resource")
            .ok_or_else(|| Error::invalid(at("Resource"), "is missing"))?,
        &at("Resource"),
    )?;
    let mut conditions = Vec::new();
    if let Some(cond) = obj.get("Condition") {
        let cond = cond
            .as_object()
            .ok_or_else(|| Error::invalid(at("Condition"), "must be an object"))?;
        for (op_name, block) in cond {
            let (qualifier, bare) = if let Some(rest) = op_name.strip_prefix("ForAnyValue:") {
                (Some(SetQualifier::ForAnyValue), rest)
            } else if let Some(rest) = op_name.strip_prefix("ForAllValues:") {
                (Some(SetQualifier::ForAllValues), rest)
            } else {
                (None, op_name.as_str())
            };
            let operator = ConditionOperator::ALL
                .into_iter()
                .find(|o| o.name() == bare)
                .ok_or_else(|| {
                    Error::invalid(
                        at(&format!("Condition.{op_name}")),
                        "unknown or unsupported condition operator",
                    )
                })?;
            let block = block.as_object().ok_or_else(|| {
                Error::invalid(at(&format!("Condition.{op_name}")), "must be an object")
            })?;
            for (key, values) in block {
                let field = at(&format!("Condition.{op_name}.{key}"));
                let values = match values {
                    Value::Bool(b) => vec![b.to_string()],
                    other => string_or_array(other, &field)?,
                };
                conditions.push(Condition {
                    qualifier,
                    operator,
                    key: key.clone(),
                    values,
                });
            }
        }
    }
    Ok(Statement {
        sid,
        effect,
        actions,
        resources,
        conditions,
    })
}

fn one_or_many(items: &[String]) -> Value {
    match items {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    }
}

fn statement_to_value(st: &Statement) -> Value {
    let mut obj = Map::new();
    if let Some(sid) = &st.sid {
        obj.insert("Sid".into(), Value::String(sid.clone()));
    }
    obj.insert(
        "Effect".into(),
        Value::String(
            match st.effect {
                Effect::Allow => "Allow",
                Effect::Deny => "Deny",
            }
            .into(),
        ),
    );
    obj.insert("Action".into(), one_or_many(&st.actions));
    obj.insert("Resource".into(), one_or_many(&st.resources));
    if !st.conditions.is_empty() {
        let mut cond: Map<String, Value> = Map::new();
        for c in &st.conditions {
            let op = match c.qualifier {
                None => c.operator.name().to_string(),
                Some(SetQualifier::ForAnyValue) => format!("ForAnyValue:{}", c.operator.name()),
                Some(SetQualifier::ForAllValues) => format!("ForAllValues:{}", c.operator.name()),
            };
            let block = cond
                .entry(op)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("inserted as an object");
            block.insert(c.key.clone(), one_or_many(&c.values));
        }
        obj.insert("Condition".into(), Value::Object(cond));
    }
    Value::Object(obj)
}

/// The set of actions an action pattern (`iot:*Shadow`) covers, as a bit mask.
pub(crate) fn action_mask(pattern: &str) -> std::result::Result<u32, String> {
    if !pattern.contains(['*', '?']) {
        return Action::from_name(pattern)
            .map(Action::bit)
            .ok_or_else(|| format!("unknown action `{pattern}`"));
    }
    let compiled = super::vars::parse_pattern_with(pattern, &mut Names::default())?;
    let scope = super::context::Scope::empty();
    let mask = Action::ALL
        .into_iter()
        .filter(|a| {
            compiled.matches(
                super::pattern::Haystack::single(a.name().as_bytes()),
                &scope,
            ) == super::pattern::Match::Yes
        })
        .fold(0, |m, a| m | a.bit());
    if mask == 0 {
        return Err(format!("`{pattern}` matches no known action"));
    }
    Ok(mask)
}

/// Resource types fleetkit knows, after `arn:<partition>:iot:<region>:<account>:`.
pub(crate) const RESOURCE_TYPES: [&str; 8] = [
    "client",
    "topic",
    "topicfilter",
    "thing",
    "thinggroup",
    "rolealias",
    "provisioningtemplate",
    "cert",
];

/// Checks a resource is `*` or an AWS IoT ARN with a known resource type.
fn validate_resource(r: &str) -> std::result::Result<(), String> {
    if r == "*" {
        return Ok(());
    }
    let mut parts = r.splitn(6, ':');
    let (arn, partition, service, _region, _account, rest) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    );
    if arn != Some("arn") {
        return Err(format!(
            "`{r}` is neither `*` nor an ARN (arn:aws:iot:<region>:<account>:<type>/<name>)"
        ));
    }
    let Some(rest) = rest else {
        return Err(format!("`{r}` has too few `:`-separated parts for an ARN"));
    };
    if !matches!(partition, Some("aws" | "aws-cn" | "aws-us-gov" | "*")) {
        return Err(format!("unknown partition in `{r}`"));
    }
    if !matches!(service, Some("iot" | "*")) {
        return Err(format!("`{r}` is not an AWS IoT (service `iot`) ARN"));
    }
    let kind = rest.split('/').next().unwrap_or_default();
    if kind.contains(['*', '?']) || RESOURCE_TYPES.contains(&kind) {
        Ok(())
    } else {
        Err(format!("unknown resource type `{kind}` in `{r}`"))
    }
}
