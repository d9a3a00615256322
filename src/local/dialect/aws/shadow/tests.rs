//! Unit tests and properties of the AWS shadow service.

use std::cell::{Cell, RefCell};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::*;

const T0: i64 = 1_700_000_000;

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}

fn store(_: &Value) -> Result<()> {
    Ok(())
}

fn disk_full(_: &Value) -> Result<()> {
    Err(Error::Unavailable("disk full".into()))
}

fn lamp() -> ShadowId {
    ShadowId::classic("lamp-1")
}

/// The messages as (topic suffix after the shadow's prefix, JSON).
fn decode(id: &ShadowId, messages: Vec<ShadowMessage>) -> Vec<(String, Value)> {
    let prefix = format!("{}/", topic_prefix(id));
    messages
        .into_iter()
        .map(|m| {
            let suffix = m
                .topic
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{} is not under {prefix}", m.topic))
                .to_owned();
            let doc = serde_json::from_slice(&m.payload).expect("JSON payload");
            (suffix, doc)
        })
        .collect()
}

fn send_at(
    svc: &ShadowService,
    id: &ShadowId,
    request: ShadowRequest,
    payload: &[u8],
    now: i64,
) -> Vec<(String, Value)> {
    decode(id, svc.handle(id, request, payload, at(now), &store))
}

fn update_at(svc: &ShadowService, id: &ShadowId, request: Value, now: i64) -> Vec<(String, Value)> {
    let payload = serde_json::to_vec(&request).unwrap();
    send_at(svc, id, ShadowRequest::Update, &payload, now)
}

fn update(svc: &ShadowService, id: &ShadowId, request: Value) -> Vec<(String, Value)> {
    update_at(svc, id, request, T0)
}

fn suffixes(messages: &[(String, Value)]) -> Vec<&str> {
    messages.iter().map(|(s, _)| s.as_str()).collect()
}

/// The one message, which must be on `suffix`.
fn only(messages: Vec<(String, Value)>, suffix: &str) -> Value {
    assert_eq!(suffixes(&messages), [suffix], "{messages:?}");
    messages.into_iter().next().unwrap().1
}

fn message(messages: &[(String, Value)], suffix: &str) -> Option<Value> {
    messages
        .iter()
        .find(|(s, _)| s == suffix)
        .map(|(_, d)| d.clone())
}

/// A service holding lamp-1's classic shadow at version 1.
fn lamp_at_version_1() -> ShadowService {
    let svc = ShadowService::default();
    let answers = update(&svc, &lamp(), json!({"state": {"desired": {"on": true}}}));
    assert_eq!(answers[0].0, "update/accepted");
    svc
}

/// Sends `payload` to lamp-1's `/update` (the shadow at version 1) and checks that it is
/// rejected with exactly `expected` and changes nothing, without trying to save.
fn assert_update_rejected(payload: &[u8], expected: Value) {
    let svc = lamp_at_version_1();
    let before = svc.save_state();
    let saves = Cell::new(0);
    let counting = |_: &Value| -> Result<()> {
        saves.set(saves.get() + 1);
        Ok(())
    };
    let answers = svc.handle(
        &lamp(),
        ShadowRequest::Update,
        payload,
        at(T0 + 5),
        &counting,
    );
    let doc = only(decode(&lamp(), answers), "update/rejected");
    assert_eq!(doc, expected);
    assert_eq!(saves.get(), 0);
    assert_eq!(svc.save_state(), before);
    assert_eq!(svc.document(&lamp(), at(T0)).unwrap()["version"], 1);
}

fn error_doc(code: u16, message: &str, token: Option<&str>) -> Value {
    let mut doc = json!({"code": code, "message": message, "timestamp": T0 + 5});
    if let Some(token) = token {
        doc["clientToken"] = token.into();
    }
    doc
}

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Topics and names
// ---------------------------------------------------------------------------------------------

#[test]
fn request_topics_parse() {
    assert_eq!(
        parse_request_topic("$aws/things/lamp-1/shadow/get"),
        Some((lamp(), ShadowRequest::Get))
    );
    assert_eq!(
        parse_request_topic("$aws/things/lamp-1/shadow/update"),
        Some((lamp(), ShadowRequest::Update))
    );
    assert_eq!(
        parse_request_topic("$aws/things/lamp-1/shadow/delete"),
        Some((lamp(), ShadowRequest::Delete))
    );
    assert_eq!(
        parse_request_topic("$aws/things/a:b_c-D9/shadow/name/$cfg:x_y-1/update"),
        Some((
            ShadowId::named("a:b_c-D9", "$cfg:x_y-1"),
            ShadowRequest::Update
        ))
    );
    // A classic shadow of a thing called "name" is not confused with a named shadow.
    assert_eq!(
        parse_request_topic("$aws/things/name/shadow/get"),
        Some((ShadowId::classic("name"), ShadowRequest::Get))
    );
}

#[test]
fn other_topics_do_not_parse() {
    let long_thing = "t".repeat(129);
    let long_shadow = "s".repeat(65);
    for topic in [
        "$aws/things/lamp-1/shadow/get/accepted",
        "$aws/things/lamp-1/shadow/update/delta",
        "$aws/things/lamp-1/shadow/update/documents",
        "$aws/things/lamp-1/shadow/delete/rejected",
        "$aws/things/lamp-1/shadow/name/cfg/get/accepted",
        "$aws/things/lamp-1/shadow/name/get",
        "$aws/things/lamp-1/shadow/name//get",
        "$aws/things/lamp-1/shadow/name/a/b/get",
        "$aws/things/lamp-1/shadow/Get",
        "$aws/things/lamp-1/shadow/list",
        "$aws/things/lamp-1/shadow",
        "$aws/things/lamp-1/shadow/",
        "$aws/things//shadow/get",
        "$aws/things/lamp 1/shadow/get",
        "$aws/things/lamp$1/shadow/get",
        "$aws/things/lamp-1/shadow/name/c.fg/get",
        "$aws/things/lamp-1/jobs/get",
        "aws/things/lamp-1/shadow/get",
        "$aws/things/lamp-1/shadow/get/",
        "/$aws/things/lamp-1/shadow/get",
        &format!("$aws/things/{long_thing}/shadow/get"),
        &format!("$aws/things/lamp-1/shadow/name/{long_shadow}/get"),
    ] {
        assert_eq!(parse_request_topic(topic), None, "{topic}");
    }
    let thing = "t".repeat(128);
    let shadow = "s".repeat(64);
    assert!(
        parse_request_topic(&format!("$aws/things/{thing}/shadow/name/{shadow}/get")).is_some()
    );
}

#[test]
fn prefixes_and_ids() {
    assert_eq!(topic_prefix(&lamp()), "$aws/things/lamp-1/shadow");
    assert_eq!(
        topic_prefix(&ShadowId::named("lamp-1", "cfg")),
        "$aws/things/lamp-1/shadow/name/cfg"
    );
    assert_eq!(
        ShadowId::new("lamp-1", Some("cfg".into())).unwrap(),
        ShadowId::named("lamp-1", "cfg")
    );
    assert!(ShadowId::new("lamp 1", None).is_err());
    assert!(ShadowId::new("lamp-1", Some(String::new())).is_err());
    assert_eq!(lamp().to_string(), "classic shadow of lamp-1");
    assert_eq!(
        ShadowId::named("lamp-1", "cfg").to_string(),
        "shadow cfg of lamp-1"
    );
    assert_eq!(ShadowRequest::Delete.as_str(), "delete");
}

// ---------------------------------------------------------------------------------------------
// Rejected updates: every AWS message, and nothing changes
// ---------------------------------------------------------------------------------------------

#[test]
fn not_json_is_invalid_json() {
    assert_update_rejected(b"{\"state\": ", error_doc(400, "Invalid JSON", None));
    assert_update_rejected(b"", error_doc(400, "Invalid JSON", None));
    assert_update_rejected(b"[1, 2]", error_doc(400, "Invalid JSON", None));
    assert_update_rejected(b"\"state\"", error_doc(400, "Invalid JSON", None));
}

#[test]
fn missing_state() {
    assert_update_rejected(
        &bytes(json!({"clientToken": "t-1", "version": 1})),
        error_doc(400, "Missing required node: state", Some("t-1")),
    );
}

#[test]
fn state_must_be_an_object() {
    for state in [json!(5), json!("x"), json!([]), json!(true)] {
        assert_update_rejected(
            &bytes(json!({"state": state, "clientToken": "t-2"})),
            error_doc(400, "State node must be an object", Some("t-2")),
        );
    }
}

#[test]
fn sections_must_be_objects() {
    for value in [json!(5), json!("x"), json!([{"a": 1}]), json!(false)] {
        assert_update_rejected(
            &bytes(json!({"state": {"desired": value}, "clientToken": "t"})),
            error_doc(400, "Desired node must be an object", Some("t")),
        );
        assert_update_rejected(
            &bytes(json!({"state": {"reported": value}})),
            error_doc(400, "Reported node must be an object", None),
        );
    }
}

#[test]
fn unknown_state_nodes_are_invalid() {
    for node in ["delta", "metadata", "Desired", ""] {
        let mut state = Map::new();
        state.insert(node.into(), json!({"a": 1}));
        state.insert("desired".into(), json!({"a": 1}));
        assert_update_rejected(
            &bytes(json!({"state": state, "clientToken": "t"})),
            error_doc(400, "State contains an invalid node", Some("t")),
        );
    }
}

#[test]
fn bad_versions_are_invalid() {
    for version in [
        json!("1"),
        json!(-1),
        json!(1.5),
        json!([1]),
        json!({"v": 1}),
    ] {
        assert_update_rejected(
            &bytes(json!({"state": {"desired": {"a": 1}}, "version": version, "clientToken": "v"})),
            error_doc(400, "Invalid version", Some("v")),
        );
    }
}

#[test]
fn stale_versions_conflict() {
    for version in [0, 2, 7] {
        assert_update_rejected(
            &bytes(json!({"state": {"desired": {"a": 1}}, "version": version, "clientToken": "v"})),
            error_doc(409, "Version conflict", Some("v")),
        );
    }
    // Also for an update that changes nothing.
    assert_update_rejected(
        &bytes(json!({"state": {}, "version": 3})),
        error_doc(409, "Version conflict", None),
    );
}

#[test]
fn client_tokens_are_at_most_64_bytes_and_strings() {
    let long = "x".repeat(65);
    assert_update_rejected(
        &bytes(json!({"state": {"desired": {"a": 1}}, "clientToken": long})),
        error_doc(400, "Invalid clientToken", None),
    );
    // 64 bytes, as UTF-8 (22 three-byte characters are 66 bytes).
    assert_update_rejected(
        &bytes(json!({"state": {"desired": {"a": 1}}, "clientToken": "€".repeat(22)})),
        error_doc(400, "Invalid clientToken", None),
    );
    for token in [json!(7), json!({"t": 1}), json!(true)] {
        assert_update_rejected(
            &bytes(json!({"state": {"desired": {"a": 1}}, "clientToken": token})),
            error_doc(400, "Invalid clientToken", None),
        );
    }
    let svc = ShadowService::default();
    let token = "y".repeat(64);
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}, "clientToken": token}),
    );
    for (suffix, doc) in &answers {
        assert_eq!(doc["clientToken"], json!(token), "{suffix}");
    }
}

/// `{"a": {"a": … {"a": leaf}}}`: `levels` nested objects, the outermost included.
fn nested(levels: usize, leaf: Value) -> Value {
    (0..levels).fold(leaf, |inner, _| json!({"a": inner}))
}

#[test]
fn six_levels_of_nesting_at_most() {
    // The section object is level 1; five more objects inside it make six.
    let svc = ShadowService::default();
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": nested(6, json!(1))}}),
    );
    assert_eq!(answers[0].0, "update/accepted");
    // Arrays count as a level.
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"reported": nested(5, json!([1]))}}),
    );
    assert_eq!(answers[0].0, "update/accepted");

    let too_deep = error_doc(
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        Some("d"),
    );
    assert_update_rejected(
        &bytes(json!({"state": {"desired": nested(7, json!(1))}, "clientToken": "d"})),
        too_deep.clone(),
    );
    assert_update_rejected(
        &bytes(json!({"state": {"reported": nested(6, json!([1]))}, "clientToken": "d"})),
        too_deep,
    );
}

#[test]
fn requests_over_128_kib_are_too_large() {
    let big = "x".repeat(128 * 1024);
    assert_update_rejected(
        &bytes(json!({"state": {"desired": {"a": big}}, "clientToken": "t"})),
        error_doc(413, "The payload exceeds the maximum size allowed", None),
    );
}

#[test]
fn states_over_8_kib_are_too_large() {
    // One request alone...
    assert_update_rejected(
        &bytes(json!({"state": {"desired": {"a": "x".repeat(8 * 1024)}}, "clientToken": "t"})),
        error_doc(
            413,
            "The payload exceeds the maximum size allowed",
            Some("t"),
        ),
    );
    // ...or the shadow after merging it: desired and reported count together.
    let svc = ShadowService::default();
    let half = "x".repeat(4 * 1024);
    let answers = update(&svc, &lamp(), json!({"state": {"desired": {"a": half}}}));
    assert_eq!(answers[0].0, "update/accepted");
    let answers = update(&svc, &lamp(), json!({"state": {"reported": {"b": half}}}));
    let doc = only(answers, "update/rejected");
    assert_eq!(doc["code"], 413);
    assert_eq!(svc.document(&lamp(), at(T0)).unwrap()["version"], 1);
}

#[test]
fn non_utf8_is_unsupported() {
    let mut payload = br#"{"state": {"desired": {"a": "#.to_vec();
    payload.extend_from_slice(&[0xff, 0xfe]);
    payload.extend_from_slice(br#""}}}"#);
    assert_update_rejected(
        &payload,
        error_doc(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
            None,
        ),
    );
}

#[test]
fn arrays_may_not_hold_null() {
    assert_update_rejected(
        &bytes(json!({"state": {"desired": {"colors": [null, "RED"]}}, "clientToken": "n"})),
        error_doc(400, "Invalid JSON", Some("n")),
    );
}

#[test]
fn reserved_and_empty_keys_are_invalid_nodes() {
    // A rule of fleetkit's twin model, not documented by AWS (see the twin module).
    for key in ["$version", ""] {
        let mut desired = Map::new();
        desired.insert(key.into(), json!(1));
        assert_update_rejected(
            &bytes(json!({"state": {"desired": desired}})),
            error_doc(400, "State contains an invalid node", None),
        );
    }
}

#[test]
fn a_rejected_update_of_a_missing_shadow_does_not_create_it() {
    let svc = ShadowService::default();
    let answers = update(&svc, &lamp(), json!({"state": {"desired": 3}}));
    only(answers, "update/rejected");
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}, "version": 1}),
    );
    assert_eq!(only(answers, "update/rejected")["code"], 409);
    assert!(matches!(
        svc.document(&lamp(), at(T0)),
        Err(Error::NotFound { what: "shadow", .. })
    ));
    assert_eq!(svc.save_state(), json!({"shadows": []}));
}

// ---------------------------------------------------------------------------------------------
// Accepted updates: the exact documents
// ---------------------------------------------------------------------------------------------

#[test]
fn first_update_documents() {
    let svc = ShadowService::default();
    let desired = json!({"color": "red", "fan": {"speed": 3}, "list": [1, 2]});
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": desired}, "clientToken": "c1"}),
    );
    assert_eq!(
        suffixes(&answers),
        ["update/accepted", "update/delta", "update/documents"]
    );
    let meta = json!({
        "color": {"timestamp": T0},
        "fan": {"speed": {"timestamp": T0}},
        "list": {"timestamp": T0},
    });
    assert_eq!(
        answers[0].1,
        json!({
            "state": {"desired": desired},
            "metadata": {"desired": meta},
            "version": 1,
            "timestamp": T0,
            "clientToken": "c1",
        })
    );
    assert_eq!(
        answers[1].1,
        json!({
            "state": desired,
            "metadata": meta,
            "version": 1,
            "timestamp": T0,
            "clientToken": "c1",
        })
    );
    assert_eq!(
        answers[2].1,
        json!({
            "previous": null,
            "current": {
                "state": {"desired": desired},
                "metadata": {"desired": meta},
                "version": 1,
            },
            "timestamp": T0,
            "clientToken": "c1",
        })
    );
}

#[test]
fn second_update_documents_and_get() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"color": "red", "fan": {"speed": 3}, "list": [1, 2]}}}),
    );
    let t1 = T0 + 10;
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"reported": {"color": "red", "fan": {"speed": 1}, "extra": true}}}),
        t1,
    );
    assert_eq!(
        suffixes(&answers),
        ["update/accepted", "update/delta", "update/documents"]
    );
    assert_eq!(
        answers[0].1,
        json!({
            "state": {"reported": {"color": "red", "fan": {"speed": 1}, "extra": true}},
            "metadata": {"reported": {
                "color": {"timestamp": t1},
                "fan": {"speed": {"timestamp": t1}},
                "extra": {"timestamp": t1},
            }},
            "version": 2,
            "timestamp": t1,
        })
    );
    // The whole delta, with the desired leaves' times; `extra` is only reported.
    assert_eq!(
        answers[1].1,
        json!({
            "state": {"fan": {"speed": 3}, "list": [1, 2]},
            "metadata": {"fan": {"speed": {"timestamp": T0}}, "list": {"timestamp": T0}},
            "version": 2,
            "timestamp": t1,
        })
    );
    let desired_meta = json!({
        "color": {"timestamp": T0},
        "fan": {"speed": {"timestamp": T0}},
        "list": {"timestamp": T0},
    });
    let reported_meta = json!({
        "color": {"timestamp": t1},
        "fan": {"speed": {"timestamp": t1}},
        "extra": {"timestamp": t1},
    });
    assert_eq!(
        answers[2].1,
        json!({
            "previous": {
                "state": {"desired": {"color": "red", "fan": {"speed": 3}, "list": [1, 2]}},
                "metadata": {"desired": desired_meta},
                "version": 1,
            },
            "current": {
                "state": {
                    "desired": {"color": "red", "fan": {"speed": 3}, "list": [1, 2]},
                    "reported": {"color": "red", "fan": {"speed": 1}, "extra": true},
                },
                "metadata": {"desired": desired_meta, "reported": reported_meta},
                "version": 2,
            },
            "timestamp": t1,
        })
    );

    let get = json!({
        "state": {
            "desired": {"color": "red", "fan": {"speed": 3}, "list": [1, 2]},
            "reported": {"color": "red", "fan": {"speed": 1}, "extra": true},
            "delta": {"fan": {"speed": 3}, "list": [1, 2]},
        },
        "metadata": {"desired": desired_meta, "reported": reported_meta},
        "version": 2,
        "timestamp": T0 + 20,
    });
    assert_eq!(svc.document(&lamp(), at(T0 + 20)).unwrap(), get);
    let mut with_token = get.clone();
    with_token["clientToken"] = "g".into();
    let answers = send_at(
        &svc,
        &lamp(),
        ShadowRequest::Get,
        br#"{"clientToken": "g"}"#,
        T0 + 20,
    );
    assert_eq!(only(answers, "get/accepted"), with_token);
    // Other content of a get is ignored.
    for payload in [&b""[..], b"junk", b"[1]", b"{}", b"\xff"] {
        let answers = send_at(&svc, &lamp(), ShadowRequest::Get, payload, T0 + 20);
        assert_eq!(only(answers, "get/accepted"), get);
    }
}

#[test]
fn a_get_with_a_bad_client_token_is_rejected() {
    let svc = lamp_at_version_1();
    let payload = bytes(json!({"clientToken": "z".repeat(65)}));
    let answers = send_at(&svc, &lamp(), ShadowRequest::Get, &payload, T0 + 5);
    assert_eq!(
        only(answers, "get/rejected"),
        error_doc(400, "Invalid clientToken", None)
    );
}

#[test]
fn nulls_delete_and_are_echoed() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}, "reported": {"a": 1}}}),
    );
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": null, "b": {"c": null}}, "reported": null}}),
        T0 + 1,
    );
    assert_eq!(
        answers[0].1,
        json!({
            "state": {"desired": {"a": null, "b": {"c": null}}, "reported": null},
            "metadata": {
                "desired": {"a": {"timestamp": T0 + 1}, "b": {"c": {"timestamp": T0 + 1}}},
                "reported": {"timestamp": T0 + 1},
            },
            "version": 2,
            "timestamp": T0 + 1,
        })
    );
    let doc = svc.document(&lamp(), at(T0 + 2)).unwrap();
    assert_eq!(
        doc["state"],
        json!({"desired": {"b": {"d": 3}}, "delta": {"b": {"d": 3}}})
    );
    assert_eq!(
        doc["metadata"],
        json!({"desired": {"b": {"d": {"timestamp": T0}}}})
    );
}

#[test]
fn null_state_empties_the_shadow_but_keeps_it() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}, "reported": {"b": 2}}}),
    );
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": null, "clientToken": "n"}),
        T0 + 1,
    );
    assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
    assert_eq!(
        answers[0].1,
        json!({
            "state": null,
            "metadata": {"timestamp": T0 + 1},
            "version": 2,
            "timestamp": T0 + 1,
            "clientToken": "n",
        })
    );
    assert_eq!(
        answers[1].1["current"],
        json!({"state": {}, "metadata": {}, "version": 2})
    );
    assert_eq!(
        svc.document(&lamp(), at(T0 + 2)).unwrap(),
        json!({"state": {}, "metadata": {}, "version": 2, "timestamp": T0 + 2})
    );
    // A version condition applies to it too.
    let answers = update(&svc, &lamp(), json!({"state": null, "version": 1}));
    assert_eq!(only(answers, "update/rejected")["code"], 409);
    let answers = update(&svc, &lamp(), json!({"state": null, "version": 2}));
    assert_eq!(answers[0].1["version"], 3);
}

#[test]
fn empty_updates_take_a_version() {
    let svc = lamp_at_version_1();
    let answers = update(&svc, &lamp(), json!({"state": {}, "clientToken": "e"}));
    assert_eq!(
        suffixes(&answers),
        ["update/accepted", "update/delta", "update/documents"]
    );
    assert_eq!(
        answers[0].1,
        json!({"state": {}, "metadata": {}, "version": 2, "timestamp": T0, "clientToken": "e"})
    );
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {}, "reported": {}}, "version": 2}),
    );
    assert_eq!(
        answers[0].1,
        json!({
            "state": {"desired": {}, "reported": {}},
            "metadata": {"desired": {}, "reported": {}},
            "version": 3,
            "timestamp": T0,
        })
    );
    assert_eq!(
        svc.document(&lamp(), at(T0)).unwrap()["state"],
        json!({"desired": {"on": true}, "delta": {"on": true}})
    );
    // `"state": {}` creates a shadow, empty.
    let id = ShadowId::named("lamp-1", "empty");
    let answers = update(&svc, &id, json!({"state": {}}));
    assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
    assert_eq!(answers[1].1["previous"], Value::Null);
    assert_eq!(svc.document(&id, at(T0)).unwrap()["version"], 1);
}

#[test]
fn version_conditions() {
    let svc = lamp_at_version_1();
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}, "version": 1}),
    );
    assert_eq!(answers[0].1["version"], 2);
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 2}}, "version": null}),
    );
    assert_eq!(answers[0].1["version"], 3);
    // A new shadow is at version 0.
    let id = ShadowId::classic("other");
    let answers = update(
        &svc,
        &id,
        json!({"state": {"reported": {"a": 1}}, "version": 0}),
    );
    assert_eq!(answers[0].1["version"], 1);
}

// ---------------------------------------------------------------------------------------------
// Delta rules and when the delta is published
// ---------------------------------------------------------------------------------------------

#[test]
fn delta_follows_awss_rules() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {
            "desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}, "seq": [1, 2], "same": 1, "new": "x"},
            "reported": {"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "seq": [1], "same": 1, "only": 5},
        }}),
    );
    let doc = svc.document(&lamp(), at(T0)).unwrap();
    assert_eq!(
        doc["state"]["delta"],
        json!({"lights": {"color": {"g": 255}}, "seq": [1, 2], "new": "x"})
    );
}

#[test]
fn delta_is_published_whenever_an_update_leaves_one() {
    let svc = ShadowService::default();
    // Desired with no reported: a delta.
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1, "b": 1}}}),
    );
    assert_eq!(
        message(&answers, "update/delta").unwrap()["state"],
        json!({"a": 1, "b": 1})
    );
    // The device reports one of them: the rest is still out of sync, and published whole.
    let answers = update(&svc, &lamp(), json!({"state": {"reported": {"a": 1}}}));
    assert_eq!(
        message(&answers, "update/delta").unwrap()["state"],
        json!({"b": 1})
    );
    // The device reports something else that differs: published.
    let answers = update(&svc, &lamp(), json!({"state": {"reported": {"b": 2}}}));
    assert_eq!(
        message(&answers, "update/delta").unwrap()["state"],
        json!({"b": 1})
    );
    // In sync: none.
    let answers = update(&svc, &lamp(), json!({"state": {"reported": {"b": 1}}}));
    assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
    // Setting desired to what is reported: none.
    let answers = update(&svc, &lamp(), json!({"state": {"desired": {"a": 1}}}));
    assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
    // Removing a reported member that is desired: published.
    let answers = update(&svc, &lamp(), json!({"state": {"reported": {"a": null}}}));
    assert_eq!(
        message(&answers, "update/delta").unwrap()["state"],
        json!({"a": 1})
    );
    // Clearing desired: none.
    let answers = update(&svc, &lamp(), json!({"state": {"desired": null}}));
    assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
}

// ---------------------------------------------------------------------------------------------
// Delete, and versions after it
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_documents_and_not_found() {
    let svc = ShadowService::default();
    update(&svc, &lamp(), json!({"state": {"desired": {"a": 1}}}));
    update(&svc, &lamp(), json!({"state": {"desired": {"a": 2}}}));
    let answers = send_at(
        &svc,
        &lamp(),
        ShadowRequest::Delete,
        br#"{"clientToken": "del"}"#,
        T0 + 3,
    );
    assert_eq!(
        only(answers, "delete/accepted"),
        json!({"version": 2, "timestamp": T0 + 3, "clientToken": "del"})
    );
    let not_found = |token: Option<&str>| {
        let mut doc = json!({
            "code": 404,
            "message": "No shadow exists with name: 'lamp-1'",
            "timestamp": T0 + 5,
        });
        if let Some(token) = token {
            doc["clientToken"] = token.into();
        }
        doc
    };
    let answers = send_at(&svc, &lamp(), ShadowRequest::Get, b"", T0 + 5);
    assert_eq!(only(answers, "get/rejected"), not_found(None));
    let answers = send_at(
        &svc,
        &lamp(),
        ShadowRequest::Delete,
        br#"{"clientToken": "again"}"#,
        T0 + 5,
    );
    assert_eq!(only(answers, "delete/rejected"), not_found(Some("again")));
    assert!(matches!(
        svc.document(&lamp(), at(T0)),
        Err(Error::NotFound { what: "shadow", .. })
    ));
    assert!(matches!(svc.twin(&lamp()), Err(Error::NotFound { .. })));
    assert!(matches!(
        svc.delete(&lamp(), at(T0), &store),
        Err(Error::NotFound { .. })
    ));

    // A named shadow's 404 names the shadow; delete ignores other content.
    let cfg = ShadowId::named("lamp-1", "cfg");
    let answers = send_at(&svc, &cfg, ShadowRequest::Delete, b"whatever", T0 + 5);
    assert_eq!(
        only(answers, "delete/rejected")["message"],
        "No shadow exists with name: 'cfg'"
    );
    update(&svc, &cfg, json!({"state": {"reported": {"x": 1}}}));
    let answers = send_at(&svc, &cfg, ShadowRequest::Delete, b"whatever", T0 + 5);
    assert_eq!(
        only(answers, "delete/accepted"),
        json!({"version": 1, "timestamp": T0 + 5})
    );
}

#[test]
fn versions_continue_after_a_delete() {
    let svc = ShadowService::default();
    for i in 0..3 {
        update(&svc, &lamp(), json!({"state": {"reported": {"i": i}}}));
    }
    let messages = decode(&lamp(), svc.delete(&lamp(), at(T0 + 10), &store).unwrap());
    assert_eq!(only(messages, "delete/accepted")["version"], 3);
    assert!(svc.twin(&lamp()).is_err());

    // Within 48 hours the new shadow follows the deleted one...
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}}),
        T0 + 10 + 48 * 3600,
    );
    assert_eq!(answers[0].1["version"], 4);
    let documents = message(&answers, "update/documents").unwrap();
    assert_eq!(documents["previous"], Value::Null);
    assert_eq!(documents["current"]["state"], json!({"desired": {"a": 1}}));
    // ...with a version condition against the old version.
    svc.delete(&lamp(), at(T0 + 20), &store).unwrap();
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}, "version": 0}),
        T0 + 30,
    );
    assert_eq!(only(answers, "update/rejected")["code"], 409);
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}, "version": 4}),
        T0 + 30,
    );
    assert_eq!(answers[0].1["version"], 5);

    // More than 48 hours after a delete, it starts again.
    svc.delete(&lamp(), at(T0 + 40), &store).unwrap();
    let answers = update_at(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}}),
        T0 + 41 + 48 * 3600,
    );
    assert_eq!(answers[0].1["version"], 1);

    // Unless told to remember forever.
    let forever = ShadowService::new(ShadowLimits::default().with_deleted_version_retention(None));
    update(&forever, &lamp(), json!({"state": {"desired": {"a": 1}}}));
    forever.delete(&lamp(), at(T0), &store).unwrap();
    let answers = update_at(
        &forever,
        &lamp(),
        json!({"state": {"desired": {"a": 1}}}),
        T0 + 365 * 86_400,
    );
    assert_eq!(answers[0].1["version"], 2);
}

// ---------------------------------------------------------------------------------------------
// Named and classic shadows
// ---------------------------------------------------------------------------------------------

#[test]
fn named_and_classic_shadows_are_separate() {
    let svc = ShadowService::default();
    let cfg = ShadowId::named("lamp-1", "cfg");
    let zeta = ShadowId::named("lamp-1", "zeta");
    let alpha = ShadowId::named("lamp-1", "alpha");
    let other = ShadowId::named("lamp-2", "cfg");
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"who": "classic"}}}),
    );
    for id in [&zeta, &cfg, &alpha, &other] {
        let answers = update(
            &svc,
            id,
            json!({"state": {"desired": {"who": id.aws_name()}}}),
        );
        // Each named shadow answers on its own topics, from version 1.
        assert_eq!(answers[0].0, "update/accepted");
        assert_eq!(answers[0].1["version"], 1);
    }
    update(&svc, &cfg, json!({"state": {"reported": {"who": "cfg"}}}));
    assert_eq!(svc.document(&lamp(), at(T0)).unwrap()["version"], 1);
    assert_eq!(svc.document(&cfg, at(T0)).unwrap()["version"], 2);
    assert_eq!(
        svc.document(&lamp(), at(T0)).unwrap()["state"]["desired"],
        json!({"who": "classic"})
    );
    assert_eq!(
        svc.document(&other, at(T0)).unwrap()["state"]["desired"],
        json!({"who": "cfg"})
    );
    assert_eq!(svc.named_shadows("lamp-1"), ["alpha", "cfg", "zeta"]);
    assert_eq!(svc.named_shadows("lamp-2"), ["cfg"]);
    assert!(svc.named_shadows("lamp").is_empty());
    svc.delete(&cfg, at(T0), &store).unwrap();
    assert_eq!(svc.named_shadows("lamp-1"), ["alpha", "zeta"]);
    assert!(svc.document(&lamp(), at(T0)).is_ok());
    svc.delete(&lamp(), at(T0), &store).unwrap();
    assert_eq!(svc.named_shadows("lamp-1"), ["alpha", "zeta"]);
    assert_eq!(svc.shadows(), [alpha, zeta, other]);
    // Messages go to the named shadow's topics.
    let raw = svc.handle(
        &ShadowId::named("lamp-1", "alpha"),
        ShadowRequest::Get,
        b"",
        at(T0),
        &store,
    );
    assert_eq!(
        raw[0].topic,
        "$aws/things/lamp-1/shadow/name/alpha/get/accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

#[test]
fn every_change_is_saved_before_it_is_answered() {
    let svc = ShadowService::default();
    let saved = RefCell::new(Vec::new());
    let recording = |state: &Value| -> Result<()> {
        saved.borrow_mut().push(state.clone());
        Ok(())
    };
    svc.handle(
        &lamp(),
        ShadowRequest::Update,
        br#"{"state": {"desired": {"a": 1}}}"#,
        at(T0),
        &recording,
    );
    assert_eq!(saved.borrow().len(), 1);
    assert_eq!(saved.borrow()[0], svc.save_state());
    svc.handle(&lamp(), ShadowRequest::Get, b"", at(T0), &recording);
    assert_eq!(saved.borrow().len(), 1, "a get saves nothing");
    svc.handle(&lamp(), ShadowRequest::Delete, b"", at(T0), &recording);
    assert_eq!(saved.borrow().len(), 2);
    assert_eq!(saved.borrow()[1], svc.save_state());
}

#[test]
fn a_failed_save_undoes_an_update() {
    let svc = lamp_at_version_1();
    let before = svc.save_state();
    let answers = decode(
        &lamp(),
        svc.handle(
            &lamp(),
            ShadowRequest::Update,
            br#"{"state": {"desired": {"on": false}}, "clientToken": "s"}"#,
            at(T0 + 5),
            &disk_full,
        ),
    );
    assert_eq!(
        only(answers, "update/rejected"),
        error_doc(500, "Internal service failure", Some("s"))
    );
    assert_eq!(svc.save_state(), before);

    // A new shadow is not created either.
    let cfg = ShadowId::named("lamp-1", "cfg");
    let answers = decode(
        &cfg,
        svc.handle(
            &cfg,
            ShadowRequest::Update,
            br#"{"state": {}}"#,
            at(T0),
            &disk_full,
        ),
    );
    assert_eq!(only(answers, "update/rejected")["code"], 500);
    assert_eq!(svc.save_state(), before);

    // The typed API returns the save's own error.
    let result = svc.update(
        &lamp(),
        &json!({"state": {"desired": {"on": false}}}),
        at(T0),
        &disk_full,
    );
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    assert_eq!(svc.save_state(), before);
}

#[test]
fn a_failed_save_undoes_a_delete() {
    let svc = lamp_at_version_1();
    let before = svc.save_state();
    let answers = decode(
        &lamp(),
        svc.handle(&lamp(), ShadowRequest::Delete, b"", at(T0 + 5), &disk_full),
    );
    assert_eq!(
        only(answers, "delete/rejected"),
        error_doc(500, "Internal service failure", None)
    );
    assert!(matches!(
        svc.delete(&lamp(), at(T0), &disk_full),
        Err(Error::Unavailable(_))
    ));
    assert_eq!(svc.save_state(), before);
    assert!(svc.twin(&lamp()).is_ok());
}

#[test]
fn state_round_trips() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": [1, 2], "b": {"c": "x"}}}}),
    );
    update_at(
        &svc,
        &lamp(),
        json!({"state": {"reported": {"a": [1]}}}),
        T0 + 7,
    );
    let cfg = ShadowId::named("lamp-1", "cfg");
    update(&svc, &cfg, json!({"state": {"reported": {"z": true}}}));
    let gone = ShadowId::named("lamp-2", "gone");
    update(&svc, &gone, json!({"state": {"reported": {"z": true}}}));
    update(&svc, &gone, json!({"state": {"reported": {"z": false}}}));
    svc.delete(&gone, at(T0 + 9), &store).unwrap();
    let state = svc.save_state();

    let copy = ShadowService::default();
    copy.load_state(state.clone()).unwrap();
    assert_eq!(copy.save_state(), state);
    for id in [lamp(), cfg.clone()] {
        assert_eq!(
            copy.document(&id, at(T0 + 20)).unwrap(),
            svc.document(&id, at(T0 + 20)).unwrap()
        );
        assert_eq!(copy.twin(&id).unwrap(), svc.twin(&id).unwrap());
    }
    assert!(copy.document(&gone, at(T0)).is_err());
    assert_eq!(copy.named_shadows("lamp-1"), ["cfg"]);
    // The deleted shadow's version survives the reload.
    let answers = update(&copy, &gone, json!({"state": {"reported": {"z": 1}}}));
    assert_eq!(answers[0].1["version"], 3);
    // Metadata survives too.
    let doc = copy.document(&lamp(), at(T0 + 20)).unwrap();
    assert_eq!(
        doc["metadata"]["reported"]["a"],
        json!({"timestamp": T0 + 7})
    );
    assert_eq!(doc["state"]["delta"], json!({"a": [1, 2], "b": {"c": "x"}}));

    // `null` is an empty state.
    copy.load_state(Value::Null).unwrap();
    assert!(copy.shadows().is_empty());
}

#[test]
fn bad_saved_state_is_refused_and_changes_nothing() {
    let svc = lamp_at_version_1();
    let before = svc.save_state();
    for bad in [
        json!(5),
        json!({"shadows": 5}),
        json!({"shadows": [{"thing": "a"}]}),
        json!({"shadows": [{"thing": "a b", "document": {}}]}),
        json!({"shadows": [{"thing": "a", "document": {}, "deleted": {"version": 1, "at": 0}}]}),
        json!({"shadows": [{"thing": "a", "document": {"desired": {"x": null}}}]}),
        json!({"shadows": [{"thing": "a", "document": {}}, {"thing": "a", "document": {}}]}),
        json!({"shadows": [], "other": 1}),
    ] {
        assert!(
            matches!(svc.load_state(bad.clone()), Err(Error::InvalidInput { .. })),
            "{bad}"
        );
        assert_eq!(svc.save_state(), before);
    }
}

// ---------------------------------------------------------------------------------------------
// The typed (cloud-side) API
// ---------------------------------------------------------------------------------------------

#[test]
fn typed_update_publishes_like_a_device_update() {
    let svc = ShadowService::default();
    let (accepted, messages) = svc
        .update(
            &lamp(),
            &json!({"state": {"desired": {"a": 1}}, "clientToken": "api"}),
            at(T0),
            &store,
        )
        .unwrap();
    assert_eq!(
        accepted,
        json!({
            "state": {"desired": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": T0}}},
            "version": 1,
            "timestamp": T0,
            "clientToken": "api",
        })
    );
    let messages = decode(&lamp(), messages);
    assert_eq!(
        suffixes(&messages),
        ["update/accepted", "update/delta", "update/documents"]
    );
    assert_eq!(messages[0].1, accepted);
}

#[test]
fn typed_update_errors() {
    let svc = lamp_at_version_1();
    let before = svc.save_state();
    match svc.update(
        &lamp(),
        &json!({"state": {"desired": {"a": 1}}, "version": 5}),
        at(T0),
        &store,
    ) {
        Err(Error::Conflict {
            what,
            expected: 5,
            current: 1,
        }) => assert_eq!(what, "classic shadow of lamp-1"),
        other => panic!("{other:?}"),
    }
    let invalid = |request: Value| match svc.update(&lamp(), &request, at(T0), &store) {
        Err(Error::InvalidInput { field, reason }) => (field, reason),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        invalid(json!({"state": {"desired": 1}})).1,
        "Desired node must be an object"
    );
    assert_eq!(
        invalid(json!({"desired": {}})).1,
        "Missing required node: state"
    );
    assert_eq!(invalid(json!([])).1, "Invalid JSON");
    assert_eq!(
        invalid(json!({"state": {}, "clientToken": "x".repeat(65)})),
        ("clientToken".to_owned(), "Invalid clientToken".to_owned())
    );
    assert_eq!(
        invalid(json!({"state": {"desired": {"a": "x".repeat(9000)}}})).1,
        "The payload exceeds the maximum size allowed"
    );
    assert_eq!(
        invalid(json!({"state": {"desired": {"a": "x".repeat(200 * 1024)}}})).1,
        "The payload exceeds the maximum size allowed"
    );
    let (field, reason) = invalid(json!({"state": {"desired": nested(7, json!(1))}}));
    assert_eq!(
        reason,
        "JSON contains too many levels of nesting; maximum is 6"
    );
    assert!(field.starts_with("desired.a.a"), "{field}");
    assert_eq!(svc.save_state(), before);
}

#[test]
fn twin_view() {
    let svc = ShadowService::default();
    update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": 1}, "reported": {"a": 0}}}),
    );
    let twin = svc.twin(&lamp()).unwrap();
    assert_eq!(twin.version(), 1);
    assert_eq!(twin.desired()["a"], 1);
    assert!(twin.tracks_metadata());
    assert_eq!(twin.delta().map(Value::Object), Some(json!({"a": 1})));
}

#[test]
fn limits_are_configurable() {
    let svc = ShadowService::new(
        ShadowLimits::default()
            .with_max_client_token_bytes(4)
            .with_max_request_bytes(64)
            .with_state(TwinLimits::aws().with_max_depth(2)),
    );
    assert_eq!(svc.limits().max_request_bytes, 64);
    let answers = update(&svc, &lamp(), json!({"state": {}, "clientToken": "12345"}));
    assert_eq!(
        only(answers, "update/rejected")["message"],
        "Invalid clientToken"
    );
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": {"b": {"c": 1}}}}}),
    );
    assert_eq!(
        only(answers, "update/rejected")["message"],
        "JSON contains too many levels of nesting; maximum is 2"
    );
    let answers = update(
        &svc,
        &lamp(),
        json!({"state": {"desired": {"a": "x".repeat(64)}}}),
    );
    assert_eq!(only(answers, "update/rejected")["code"], 413);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The documented delta rule, written out independently: every desired member that reported
/// lacks, or holds with another value; objects on both sides recursively (with the full path);
/// arrays and scalars compared whole; members only in reported never.
fn reference_delta(
    desired: &Map<String, Value>,
    reported: &Map<String, Value>,
) -> Map<String, Value> {
    let mut delta = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (_, None) => {
                delta.insert(key.clone(), want.clone());
            }
            (Value::Object(want), Some(Value::Object(have))) => {
                let inner = reference_delta(want, have);
                if !inner.is_empty() {
                    delta.insert(key.clone(), Value::Object(inner));
                }
            }
            (want, Some(have)) => {
                if want != have {
                    delta.insert(key.clone(), want.clone());
                }
            }
        }
    }
    delta
}

/// JSON merge patch (RFC 7386), written out independently.
fn reference_merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    reference_merge(slot, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

fn section_of(doc: &Value, name: &str) -> Map<String, Value> {
    doc["state"]
        .get(name)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-1i64..3).prop_map(Value::from),
        prop::sample::select(vec!["x", "y"]).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
    ]
}

/// A patch value: leaves, nulls (deletes) and objects, at most 3 objects deep.
fn patch_value() -> impl Strategy<Value = Value> {
    prop_oneof![3 => leaf(), 1 => Just(Value::Null)].prop_recursive(3, 24, 3, |inner| {
        prop::collection::btree_map(key(), inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

/// What an update does to one section: a patch, or `null` (clear it).
fn section_change() -> impl Strategy<Value = Value> {
    prop_oneof![
        5 => prop::collection::btree_map(key(), patch_value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => Just(Value::Null),
    ]
}

/// A valid update request.
fn valid_update() -> impl Strategy<Value = Value> {
    (
        prop::option::of(section_change()),
        prop::option::of(section_change()),
    )
        .prop_map(|(desired, reported)| {
            let mut state = Map::new();
            if let Some(d) = desired {
                state.insert("desired".into(), d);
            }
            if let Some(r) = reported {
                state.insert("reported".into(), r);
            }
            json!({"state": state})
        })
}

/// A request payload AWS rejects, whatever the shadow holds (versions stay far below 1000).
fn invalid_update() -> impl Strategy<Value = Vec<u8>> {
    let wrap = |state: Value| bytes(json!({"state": state}));
    prop_oneof![
        Just(b"{\"state\": {".to_vec()),
        Just(b"\xff{}".to_vec()),
        Just(bytes(json!({"desired": {"a": 1}}))),
        (1000u64..2000).prop_map(|v| bytes(json!({"state": {"desired": {"a": 1}}, "version": v}))),
        Just(bytes(json!({"state": {}, "version": "1"}))),
        Just(bytes(
            json!({"state": {"reported": {"a": 1}}, "clientToken": "t".repeat(65)})
        )),
        scalar().prop_map(wrap),
        scalar().prop_map(move |s| wrap(json!({"desired": s}))),
        scalar().prop_map(move |s| wrap(json!({"reported": [s]}))),
        key().prop_map(move |k| wrap(json!({"delta": {k: 1}}))),
        leaf().prop_map(move |l| wrap(json!({"desired": nested(7, l)}))),
        scalar().prop_map(move |s| wrap(json!({"reported": {"list": [s, null]}}))),
        Just(wrap(json!({"desired": {"big": "x".repeat(9000)}}))),
        Just(bytes(
            json!({"state": {"desired": {"a": "x".repeat(130 * 1024)}}})
        )),
    ]
}

fn updates_then(svc: &ShadowService, requests: &[Value]) {
    for request in requests {
        let answers = update(svc, &lamp(), request.clone());
        assert_eq!(answers[0].0, "update/accepted", "{request}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        .. ProptestConfig::default()
    })]

    /// After any sequence of accepted updates, the shadow holds the merged sections and its
    /// delta is the documented rule applied to them; `/update/delta` carries exactly that delta
    /// whenever it is not empty, and is absent otherwise.
    #[test]
    fn delta_is_the_documented_rule(requests in prop::collection::vec(valid_update(), 1..8)) {
        let svc = ShadowService::default();
        let (mut desired, mut reported) = (Map::new(), Map::new());
        for request in &requests {
            let answers = update(&svc, &lamp(), request.clone());
            prop_assert_eq!(&answers[0].0, "update/accepted");
            for (name, model) in [("desired", &mut desired), ("reported", &mut reported)] {
                match request["state"].get(name) {
                    Some(Value::Null) => model.clear(),
                    Some(Value::Object(patch)) => reference_merge(model, patch),
                    _ => {}
                }
            }
            let doc = svc.document(&lamp(), at(T0)).unwrap();
            prop_assert_eq!(&section_of(&doc, "desired"), &desired);
            prop_assert_eq!(&section_of(&doc, "reported"), &reported);
            let expected = reference_delta(&desired, &reported);
            prop_assert_eq!(&section_of(&doc, "delta"), &expected);
            prop_assert_eq!(doc["state"].get("delta").is_some(), !expected.is_empty());
            let published = message(&answers, "update/delta").map(|d| d["state"].clone());
            prop_assert_eq!(published, (!expected.is_empty()).then(|| Value::Object(expected)));
        }
    }

    /// Reporting exactly the delta brings the shadow into sync.
    #[test]
    fn reporting_the_delta_clears_it(requests in prop::collection::vec(valid_update(), 1..8)) {
        let svc = ShadowService::default();
        updates_then(&svc, &requests);
        let delta = section_of(&svc.document(&lamp(), at(T0)).unwrap(), "delta");
        if !delta.is_empty() {
            let answers = update(&svc, &lamp(), json!({"state": {"reported": delta}}));
            prop_assert_eq!(suffixes(&answers), ["update/accepted", "update/documents"]);
            let doc = svc.document(&lamp(), at(T0)).unwrap();
            prop_assert!(doc["state"].get("delta").is_none(), "{}", doc);
        }
    }

    /// The version counts the accepted updates, and nothing else.
    #[test]
    fn version_counts_accepted_updates(
        requests in prop::collection::vec(
            prop_oneof![2 => valid_update().prop_map(bytes), 1 => invalid_update()],
            1..12,
        )
    ) {
        let svc = ShadowService::default();
        let mut accepted = 0u64;
        for payload in &requests {
            let answers = send_at(&svc, &lamp(), ShadowRequest::Update, payload, T0);
            if answers[0].0 == "update/accepted" {
                accepted += 1;
                prop_assert_eq!(&answers[0].1["version"], &json!(accepted));
            } else {
                prop_assert_eq!(suffixes(&answers), ["update/rejected"]);
            }
        }
        match svc.document(&lamp(), at(T0)) {
            Ok(doc) => prop_assert_eq!(&doc["version"], &json!(accepted)),
            Err(_) => prop_assert_eq!(accepted, 0),
        }
    }

    /// A rejected update changes nothing and saves nothing.
    #[test]
    fn rejected_updates_change_nothing(
        requests in prop::collection::vec(valid_update(), 0..5),
        bad in invalid_update(),
    ) {
        let svc = ShadowService::default();
        updates_then(&svc, &requests);
        let state = svc.save_state();
        let doc = svc.document(&lamp(), at(T0));
        let saves = Cell::new(0);
        let counting = |_: &Value| -> Result<()> {
            saves.set(saves.get() + 1);
            Ok(())
        };
        let answers = decode(
            &lamp(),
            svc.handle(&lamp(), ShadowRequest::Update, &bad, at(T0 + 1), &counting),
        );
        prop_assert_eq!(suffixes(&answers), ["update/rejected"]);
        prop_assert_eq!(saves.get(), 0);
        prop_assert_eq!(svc.save_state(), state);
        prop_assert_eq!(svc.document(&lamp(), at(T0)).ok(), doc.ok());
    }
}
