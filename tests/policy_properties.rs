//! Property tests of the policy engine's guarantees, plus its bad-input errors.

use fleetkit::Error;
use fleetkit::policy::{
    AttachTarget, Outcome, Partition, PolicyDocument, PolicyEngine, PrincipalContext, Request,
    Statement, ThingContext,
};
use proptest::prelude::*;

/// A principal whose thing name / client id / device id is `id`, whatever characters it holds
/// (built by hand: `DeviceId` would refuse most of these).
fn raw_device(id: &str) -> PrincipalContext {
    PrincipalContext {
        device_id: Some(id.to_string()),
        client_id: Some(id.to_string()),
        thing: Some(ThingContext {
            name: id.to_string(),
            attached: true,
            ..ThingContext::default()
        }),
        ..PrincipalContext::default()
    }
}

fn engine(docs: &[(&str, PolicyDocument)], target: &AttachTarget) -> PolicyEngine {
    let mut e = PolicyEngine::new(Partition::local());
    for (name, doc) in docs {
        e.put_policy(name, doc).unwrap();
        e.attach_policy(name, target.clone()).unwrap();
    }
    e
}

/// Reference matcher: a direct recursive reading of IAM wildcard semantics, on chars.
fn reference_match(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|k| reference_match(rest, &text[k..])),
        Some(('?', rest)) => !text.is_empty() && reference_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && reference_match(rest, &text[1..]),
    }
}

const ID_CHARS: &str = "[a-c+#*?/$.-]{1,8}";

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a deeper run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        .. ProptestConfig::default()
    })]

    /// An allow for one literal topic allows that topic and no other.
    #[test]
    fn allow_for_one_topic_never_allows_another(a in "[a-c/+#é]{0,10}", b in "[a-c/+#é]{0,10}") {
        let doc = PolicyDocument::new(vec![Statement::allow(
            &["iot:Publish"],
            &[&format!("arn:aws:iot:*:*:topic/{a}")],
        )]);
        let e = engine(&[("one", doc)], &AttachTarget::Device("d".into()));
        let p = e.principal(raw_device("d"));
        prop_assert!(p.authorize(&Request::publish(&a)).is_allowed());
        prop_assert_eq!(p.authorize(&Request::publish(&b)).is_allowed(), a == b);
    }

    /// Substituted values are literal: whatever characters a thing name holds, the policy
    /// `topic/d/${ThingName}/*` allows exactly the topics under `d/<name>/`.
    #[test]
    fn substitution_cannot_be_escaped(id in ID_CHARS, topic in "[a-c+#*?/$.-]{0,14}") {
        let doc = PolicyDocument::new(vec![
            Statement::allow(&["iot:Publish", "iot:Receive"], &["arn:aws:iot:*:*:topic/d/${iot:Connection.Thing.ThingName}/*"]),
            Statement::allow(&["iot:Subscribe"], &["arn:aws:iot:*:*:topicfilter/d/${iot:ClientId}"]),
            Statement::allow(&["iot:Connect"], &["arn:aws:iot:*:*:client/${fleetkit:DeviceId}"]),
        ]);
        let e = engine(&[("scoped", doc)], &AttachTarget::Device(id.clone()));
        let p = e.principal(raw_device(&id));
        let prefix = format!("d/{id}/");
        prop_assert_eq!(p.authorize(&Request::publish(&topic)).is_allowed(), topic.starts_with(&prefix));
        prop_assert_eq!(p.authorize(&Request::receive(&topic)).is_allowed(), topic.starts_with(&prefix));
        prop_assert_eq!(p.authorize(&Request::subscribe(&topic)).is_allowed(), topic == format!("d/{id}"));
        prop_assert_eq!(p.authorize(&Request::connect(&topic)).is_allowed(), topic == id);
    }

    /// Deny always beats allow, whatever the order of statements and policies.
    #[test]
    fn deny_beats_allow_in_any_order(seed in any::<u64>(), allows in 1usize..6, split in any::<bool>()) {
        let mut statements: Vec<Statement> = (0..allows)
            .map(|i| Statement::allow(&["iot:Publish"], &[&format!("arn:aws:iot:*:*:topic/t/{}*", "*".repeat(i % 2))]))
            .collect();
        statements.push(Statement::deny(&["iot:*"], &["arn:aws:iot:*:*:topic/t/secret"]));
        // Shuffle deterministically from the seed.
        let mut s = seed;
        for i in (1..statements.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            statements.swap(i, (s >> 33) as usize % (i + 1));
        }
        let docs: Vec<(String, PolicyDocument)> = if split {
            statements.into_iter().enumerate().map(|(i, st)| (format!("p{i}"), PolicyDocument::new(vec![st]))).collect()
        } else {
            vec![("all".to_string(), PolicyDocument::new(statements))]
        };
        let named: Vec<(&str, PolicyDocument)> = docs.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let e = engine(&named, &AttachTarget::Group("g".into()));
        let p = e.principal(raw_device("x").with_groups(["g"]));
        prop_assert_eq!(p.authorize(&Request::publish("t/secret")).outcome(), Outcome::ExplicitDeny);
        prop_assert_eq!(p.authorize(&Request::publish("t/open")).outcome(), Outcome::Allow);
    }

    /// The compiled wildcard matcher agrees with the reference definition.
    #[test]
    fn matcher_agrees_with_reference(pattern in "[ab*?/]{0,8}", text in "[ab/]{0,10}") {
        let doc = PolicyDocument::new(vec![Statement::allow(&["iot:Publish"], &[&format!("arn:aws:iot:*:*:topic/{pattern}")])]);
        let e = engine(&[("m", doc)], &AttachTarget::Device("d".into()));
        let p = e.principal(raw_device("d"));
        let pattern_chars: Vec<char> = pattern.chars().collect();
        let text_chars: Vec<char> = text.chars().collect();
        prop_assert_eq!(
            p.authorize(&Request::publish(&text)).is_allowed(),
            reference_match(&pattern_chars, &text_chars)
        );
    }

    /// JSON export round-trips.
    #[test]
    fn json_round_trips(
        topics in proptest::collection::vec("[a-z/*?+#]{1,12}", 1..4),
        deny in any::<bool>(),
        sid in proptest::option::of("[A-Za-z0-9]{1,8}"),
    ) {
        let resources: Vec<String> = topics.iter().map(|t| format!("arn:aws:iot:us-east-1:123456789012:topic/{t}")).collect();
        let refs: Vec<&str> = resources.iter().map(String::as_str).collect();
        let mut st = if deny { Statement::deny(&["iot:Publish", "iot:Receive"], &refs) } else { Statement::allow(&["iot:*"], &refs) };
        if let Some(sid) = &sid { st = st.with_sid(sid); }
        st = st.with_condition(fleetkit::policy::ConditionOperator::StringLike, "iot:ClientId", &["dev-*"]);
        let doc = PolicyDocument::new(vec![st]);
        let again = PolicyDocument::from_json(&doc.to_json()).unwrap();
        prop_assert_eq!(&doc, &again);
        prop_assert_eq!(doc.to_aws_json().unwrap(), again.to_json());
    }

    /// Arbitrary text never panics the parser (the cargo-fuzz target explores further).
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let _ = PolicyDocument::from_json(&text);
    }

    /// Arbitrary statement-shaped JSON never panics the parser and a parsed document compiles.
    #[test]
    fn parsed_documents_always_compile(
        effect in "(Allow|Deny|Maybe)",
        action in "(iot:[A-Za-z*]{0,12}|fleetkit:[A-Za-z]{0,10}|\\*)",
        resource in "(\\*|arn:aws:iot:[a-z0-9*-]{0,6}:[0-9*]{0,4}:(topic|client|thing|topicfilter|bogus)/[a-z${}.:\\[\\]*]{0,20})",
    ) {
        let json = format!(r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"{effect}","Action":"{action}","Resource":"{resource}"}}]}}"#);
        if let Ok(doc) = PolicyDocument::from_json(&json) {
            let mut e = PolicyEngine::new(Partition::local());
            prop_assert!(e.put_policy("p", &doc).is_ok());
        }
    }
}

fn field(e: Error) -> String {
    match e {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn bad_documents_name_the_place() {
    let cases = [
        ("{not json", "policy"),
        (r#"[1,2]"#, "policy"),
        (
            r#"{"Version":"2099-01-01","Statement":[]}"#,
            "policy Version",
        ),
        (r#"{"Version":"2012-10-17"}"#, "policy Statement"),
        (
            r#"{"Version":"2012-10-17","Statement":[]}"#,
            "policy Statement",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*"},{"Effect":"Allow","Action":["iot:Connect","iot:Publishh"],"Resource":"*"}]}"#,
            "policy Statement[1].Action[1]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Permit","Action":"iot:Publish","Resource":"*"}]}"#,
            "policy Statement[0].Effect",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:s3:::bucket/x"}]}"#,
            "policy Statement[0].Resource[0]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"topic/x"}]}"#,
            "policy Statement[0].Resource[0]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:r:1:widget/x"}]}"#,
            "policy Statement[0].Resource[0]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":["*","arn:aws:iot:*:*:topic/${iot:Connection.Thing.Nickname}"]}]}"#,
            "policy Statement[0].Resource[1]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/${iot:ClientId"}]}"#,
            "policy Statement[0].Resource[0]",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*","Condition":{"StringEquals":{"iot:Nope":"x"}}}]}"#,
            "policy Statement[0].Condition.StringEquals.iot:Nope",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*","Condition":{"NumericEquals":{"iot:ClientId":"1"}}}]}"#,
            "policy Statement[0].Condition.NumericEquals",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"iot:Publish","Resource":"*"}]}"#,
            "policy Statement[0].NotAction",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"yes"}}}]}"#,
            "policy Statement[0].Condition.Bool.iot:Connection.Thing.IsAttached",
        ),
    ];
    for (json, expected) in cases {
        let got = field(PolicyDocument::from_json(json).unwrap_err());
        assert_eq!(got, expected, "for {json}");
    }
}

#[test]
fn oversize_documents_are_refused_with_the_limit() {
    let resources: Vec<String> = (0..120)
        .map(|i| format!("\"arn:aws:iot:us-east-1:123456789012:topic/sensors/{i}\""))
        .collect();
    let json = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iot:Publish","Resource":[{}]}}]}}"#,
        resources.join(",")
    );
    let err = PolicyDocument::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("2048"), "{err}");
    let huge = " ".repeat(70_000);
    assert!(matches!(
        PolicyDocument::from_json(&huge),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn a_failed_update_changes_nothing() {
    let mut e = PolicyEngine::new(Partition::local());
    let good = PolicyDocument::new(vec![Statement::allow(
        &["iot:Publish"],
        &["arn:aws:iot:*:*:topic/a"],
    )]);
    e.put_policy("p", &good).unwrap();
    let generation = e.generation();
    let bad = PolicyDocument::new(vec![Statement::allow(&["iot:Teleport"], &["*"])]);
    let err = e.put_policy("p", &bad).unwrap_err();
    assert_eq!(field(err), "policy Statement[0].Action[0]");
    assert_eq!(e.generation(), generation);
    assert_eq!(e.policy("p").unwrap().versions, vec![1]);
    assert!(matches!(
        e.attach_policy("missing", AttachTarget::Device("d".into())),
        Err(Error::NotFound { .. })
    ));
    assert!(e.put_policy("bad name!", &good).is_err());
    // fleetkit-only actions cannot be exported to AWS.
    let ours = PolicyDocument::new(vec![Statement::allow(
        &["fleetkit:InvokeMethod"],
        &["arn:aws:iot:*:*:thing/*"],
    )]);
    assert!(matches!(ours.to_aws_json(), Err(Error::NotSupported(_))));
}
