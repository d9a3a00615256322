//! Unit tests and properties of the twin model.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::*;

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}

fn obj(value: Value) -> Object {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn twin_with(desired: Value, reported: Value) -> TwinDocument {
    let mut twin = TwinDocument::new();
    let limits = TwinLimits::permissive();
    if desired.as_object().is_some_and(|m| !m.is_empty()) {
        twin.apply_desired(&desired, None, &limits, at(1)).unwrap();
    }
    if reported.as_object().is_some_and(|m| !m.is_empty()) {
        twin.apply_reported(&reported, None, &limits, at(1))
            .unwrap();
    }
    twin
}

fn delta_value(twin: &TwinDocument) -> Option<Value> {
    twin.delta().map(Value::Object)
}

fn invalid_field(result: Result<Applied>) -> (String, String) {
    match result {
        Err(Error::InvalidInput { field, reason }) => (field, reason),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// RFC 7386 §2's MergePatch pseudo-code, transcribed as literally as possible: the reference
/// the implementation is checked against.
fn rfc7386(target: Value, patch: &Value) -> Value {
    match patch {
        Value::Object(patch) => {
            let mut target = match target {
                Value::Object(t) => t,
                _ => Map::new(),
            };
            for (name, value) in patch {
                if value.is_null() {
                    target.remove(name);
                } else {
                    let current = target.remove(name).unwrap_or(Value::Null);
                    target.insert(name.clone(), rfc7386(current, value));
                }
            }
            Value::Object(target)
        }
        other => other.clone(),
    }
}

// --- merge patch ---------------------------------------------------------------------------

#[test]
fn patch_sets_merges_and_deletes() {
    let limits = TwinLimits::portable();
    let mut twin = TwinDocument::new();
    let applied = twin
        .apply_desired(
            &json!({"a": 1, "b": {"c": 2, "d": 3}, "list": [1, 2]}),
            None,
            &limits,
            at(10),
        )
        .unwrap();
    assert_eq!(applied.versions.version, 1);
    assert_eq!(applied.versions.desired_version, 1);
    assert_eq!(applied.versions.reported_version, 0);
    assert_eq!(applied.reported, None);

    let applied = twin
        .apply_desired(
            &json!({"a": null, "b": {"c": null, "e": 4}, "list": [3]}),
            None,
            &limits,
            at(11),
        )
        .unwrap();
    assert_eq!(
        Value::Object(twin.desired().clone()),
        json!({"b": {"d": 3, "e": 4}, "list": [3]})
    );
    // The effective change: exactly what moved.
    assert_eq!(
        applied.desired.map(Value::Object),
        Some(json!({"a": null, "b": {"c": null, "e": 4}, "list": [3]}))
    );
    assert_eq!(twin.version(), 2);
    assert_eq!(twin.desired_version(), 2);
}

#[test]
fn rfc7386_appendix_a_examples() {
    // RFC 7386 Appendix A, the cases that make sense for a twin (object targets and patches).
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (json!({"e": null}), json!({"a": 1}), json!({"a": 1})),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
    ];
    for (target, patch, expected) in cases {
        // `{"e": null}` as a target is not a storable twin; start from its stored form.
        let target = Value::Object(without_nulls(&obj(target)));
        let mut twin = twin_with(target, json!({}));
        twin.apply_desired(&patch, None, &TwinLimits::permissive(), at(2))
            .unwrap();
        assert_eq!(
            Value::Object(twin.desired().clone()),
            expected,
            "patch {patch}"
        );
    }
}

#[test]
fn same_patch_twice_changes_content_once_but_bumps_versions() {
    let limits = TwinLimits::portable();
    let patch = json!({"a": {"b": 1}, "c": null, "d": [1, 2]});
    let mut twin = TwinDocument::new();
    let first = twin.apply_reported(&patch, None, &limits, at(1)).unwrap();
    let content = twin.reported().clone();
    let second = twin.apply_reported(&patch, None, &limits, at(2)).unwrap();
    assert_eq!(twin.reported(), &content);
    assert!(!first.is_noop());
    assert!(second.is_noop());
    assert_eq!(second.reported, Some(Map::new()));
    assert_eq!(second.versions.version, 2);
    assert_eq!(second.versions.reported_version, 2);
}

#[test]
fn nulls_on_missing_keys_change_nothing_but_the_versions() {
    let limits = TwinLimits::portable();
    let mut twin = twin_with(json!({"keep": 1}), json!({}));
    let before = twin.clone();
    let applied = twin
        .apply_desired(&json!({"gone": null, "also": null}), None, &limits, at(5))
        .unwrap();
    assert!(applied.is_noop());
    assert_eq!(twin.desired(), before.desired());
    assert_eq!(twin.version(), before.version() + 1);
    assert_eq!(twin.desired_version(), before.desired_version() + 1);
    // The Azure notification still goes out, empty, so the device sees the version move.
    assert_eq!(
        applied.desired_change(),
        Some(DesiredChange::new(Map::new(), 2))
    );
}

#[test]
fn empty_and_non_object_patches_are_invalid_and_change_nothing() {
    let limits = TwinLimits::portable();
    let mut twin = twin_with(json!({"a": 1}), json!({"a": 1}));
    let before = twin.clone();
    for patch in [json!({}), json!(null), json!(3), json!("x"), json!([1])] {
        let (field, _) = invalid_field(twin.apply_desired(&patch, None, &limits, at(9)));
        assert_eq!(field, "desired");
        let (field, _) = invalid_field(twin.apply_reported(&patch, None, &limits, at(9)));
        assert_eq!(field, "reported");
    }
    let (field, _) = invalid_field(twin.apply(&TwinUpdate::new(), &limits, at(9)));
    assert_eq!(field, "update");
    assert_eq!(twin, before);
}

#[test]
fn one_update_of_both_sections_is_one_version() {
    let limits = TwinLimits::aws();
    let mut twin = TwinDocument::new();
    let update = TwinUpdate::desired(json!({"x": 1})).with_reported(json!({"y": 2}));
    let applied = twin.apply(&update, &limits, at(1)).unwrap();
    assert_eq!(
        applied.versions,
        TwinVersions {
            version: 1,
            desired_version: 1,
            reported_version: 1
        }
    );
    assert_eq!(applied.desired.map(Value::Object), Some(json!({"x": 1})));
    assert_eq!(applied.reported.map(Value::Object), Some(json!({"y": 2})));
}

#[test]
fn replace_and_clear_sections() {
    let limits = TwinLimits::gcp();
    let mut twin = twin_with(json!({"a": 1, "b": {"c": 2}}), json!({"r": true}));
    let applied = twin
        .apply(
            &TwinUpdate::new().replace_desired(obj(json!({"b": {"c": 2, "d": null}, "e": 5}))),
            &limits,
            at(3),
        )
        .unwrap();
    assert_eq!(
        Value::Object(twin.desired().clone()),
        json!({"b": {"c": 2}, "e": 5})
    );
    assert_eq!(
        applied.desired.map(Value::Object),
        Some(json!({"a": null, "e": 5}))
    );

    let applied = twin
        .apply(&TwinUpdate::new().clear_reported(), &limits, at(4))
        .unwrap();
    assert!(twin.reported().is_empty());
    assert_eq!(
        applied.reported.map(Value::Object),
        Some(json!({"r": null}))
    );
    // Clearing an empty section is allowed (unlike an empty patch) and bumps the version.
    let applied = twin
        .apply(&TwinUpdate::new().clear_reported(), &limits, at(5))
        .unwrap();
    assert!(applied.is_noop());
    assert_eq!(twin.reported_version(), 3);
}

// --- versions ------------------------------------------------------------------------------

#[test]
fn stale_expected_version_is_a_conflict_and_changes_nothing() {
    let limits = TwinLimits::portable();
    let mut twin = twin_with(json!({"a": 1}), json!({"a": 0}));
    assert_eq!(twin.version(), 2);
    let before = twin.clone();
    for expected in [0, 1, 3, u64::MAX] {
        match twin.apply_desired(&json!({"a": 2}), Some(expected), &limits, at(9)) {
            Err(Error::Conflict {
                expected: e,
                current,
                ..
            }) => {
                assert_eq!(e, expected);
                assert_eq!(current, 2);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let update = TwinUpdate::reported(json!({"a": 2})).with_expected_version(expected);
        assert!(matches!(
            twin.apply(&update, &limits, at(9)),
            Err(Error::Conflict { .. })
        ));
    }
    assert_eq!(twin, before);

    let applied = twin
        .apply_desired(&json!({"a": 2}), Some(2), &limits, at(9))
        .unwrap();
    assert_eq!(applied.versions.version, 3);
}

#[test]
fn invalid_input_wins_over_a_conflict() {
    // A permanent error is reported before a retryable one, so a caller does not retry a
    // request that can never succeed.
    let mut twin = twin_with(json!({"a": 1}), json!({}));
    let (field, _) = invalid_field(twin.apply_desired(
        &json!({"$bad": 1}),
        Some(99),
        &TwinLimits::portable(),
        at(1),
    ));
    assert_eq!(field, "desired.$bad");
}

#[test]
fn version_overflow_is_refused() {
    let mut twin = TwinDocument::new();
    twin.set_versions(TwinVersions {
        version: u64::MAX,
        desired_version: 0,
        reported_version: 0,
    });
    let before = twin.clone();
    let (field, _) =
        invalid_field(twin.apply_desired(&json!({"a": 1}), None, &TwinLimits::portable(), at(1)));
    assert_eq!(field, "version");
    assert_eq!(twin, before);
}

// --- limits --------------------------------------------------------------------------------

/// `{"k1": {"k2": … {"kn": 1}}}`: n levels deep.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for level in (1..=levels).rev() {
        let mut map = Map::new();
        map.insert(format!("k{level}"), value);
        value = Value::Object(map);
    }
    value
}

#[test]
fn depth_limit_names_the_path_and_changes_nothing() {
    let aws = TwinLimits::aws();
    let mut twin = TwinDocument::new();
    twin.apply_desired(&nested(6), None, &aws, at(1)).unwrap();
    let before = twin.clone();
    let (field, reason) = invalid_field(twin.apply_desired(&nested(7), None, &aws, at(2)));
    assert_eq!(field, "desired.k1.k2.k3.k4.k5.k6");
    assert!(
        reason.contains("7 levels") && reason.contains("limit is 6"),
        "{reason}"
    );
    assert_eq!(twin, before);

    // Arrays count as a level.
    let mut array = nested(5);
    array["k1"]["k2"]["k3"]["k4"]["k5"] = json!([1]);
    twin.apply_reported(&array, None, &aws, at(2)).unwrap();
    let before = twin.clone();
    let mut deep_array = nested(6);
    deep_array["k1"]["k2"]["k3"]["k4"]["k5"]["k6"] = json!([1]);
    let (field, _) = invalid_field(twin.apply_reported(&deep_array, None, &aws, at(2)));
    assert_eq!(field, "reported.k1.k2.k3.k4.k5.k6");
    let mut inside = nested(5);
    inside["k1"]["k2"]["k3"]["k4"]["k5"] = json!([0, {"x": 1}]);
    let (field, _) = invalid_field(twin.apply_reported(&inside, None, &aws, at(2)));
    assert_eq!(field, "reported.k1.k2.k3.k4.k5[1]");
    assert_eq!(twin, before);

    // Azure allows 10.
    let azure = TwinLimits::azure();
    twin.apply_desired(&nested(10), None, &azure, at(3))
        .unwrap();
    invalid_field(twin.apply_desired(&nested(11), None, &azure, at(3)));
}

#[test]
fn reserved_and_bad_keys_are_refused() {
    let portable = TwinLimits::portable();
    let permissive = TwinLimits::permissive();
    let mut twin = twin_with(json!({"a": {"b": 1}}), json!({}));
    let before = twin.clone();
    let cases = [
        (json!({"$version": 3}), &permissive, "desired.$version"),
        (
            json!({"a": {"$metadata": {}}}),
            &permissive,
            "desired.a.$metadata",
        ),
        (json!({"a": {"": 1}}), &permissive, "desired.a."),
        (json!({"a.b": 1}), &portable, "desired.a.b"),
        (json!({"a": {"x y": 1}}), &portable, "desired.a.x y"),
        (json!({"a": {"x$": 1}}), &portable, "desired.a.x$"),
        (json!({"tab\there": 1}), &portable, "desired.tab\there"),
        (json!({"c1\u{85}": 1}), &portable, "desired.c1\u{85}"),
    ];
    for (patch, limits, path) in cases {
        let (field, _) = invalid_field(twin.apply_desired(&patch, None, limits, at(2)));
        assert_eq!(field, path, "patch {patch}");
    }
    // Dots and spaces are fine where keys are not restricted.
    let long_key = "k".repeat(1025);
    let (field, reason) =
        invalid_field(twin.apply_desired(&json!({ long_key.clone(): 1 }), None, &portable, at(2)));
    assert_eq!(field, format!("desired.{long_key}"));
    assert!(reason.contains("1025 bytes"), "{reason}");
    assert_eq!(twin, before);
    twin.apply_desired(&json!({"a.b c": 1}), None, &TwinLimits::aws(), at(3))
        .unwrap();
}

#[test]
fn string_and_array_rules() {
    let mut twin = TwinDocument::new();
    let long = "s".repeat(4097);
    let (field, _) = invalid_field(twin.apply_reported(
        &json!({"a": [1, long]}),
        None,
        &TwinLimits::azure(),
        at(1),
    ));
    assert_eq!(field, "reported.a[1]");
    let (field, reason) = invalid_field(twin.apply_reported(
        &json!({"a": {"list": [1, null]}}),
        None,
        &TwinLimits::aws(),
        at(1),
    ));
    assert_eq!(field, "reported.a.list[1]");
    assert!(reason.contains("null"));
    assert_eq!(twin, TwinDocument::new());
    // Elsewhere a null in an array is a value, kept as it is.
    twin.apply_reported(&json!({"a": [1, null]}), None, &TwinLimits::azure(), at(1))
        .unwrap();
    assert_eq!(twin.reported()["a"], json!([1, null]));
}

#[test]
fn size_limits_check_the_result_and_change_nothing() {
    let azure = TwinLimits::azure();
    let mut twin = TwinDocument::new();
    let chunk = "x".repeat(4000);
    for i in 0..8 {
        twin.apply_reported(&json!({ format!("k{i}"): chunk }), None, &azure, at(1))
            .unwrap();
    }
    assert!(json_len(twin.reported()) <= 32 * 1024);
    let before = twin.clone();
    let (field, reason) =
        invalid_field(twin.apply_reported(&json!({"k8": chunk}), None, &azure, at(2)));
    assert_eq!(field, "reported");
    assert!(reason.contains("limit is 32768"), "{reason}");
    assert_eq!(twin, before);
    // Deleting to make room is fine: the limit applies to the result, not the patch.
    twin.apply_reported(&json!({"k0": null, "k8": chunk}), None, &azure, at(3))
        .unwrap();
    // The other section has its own budget.
    twin.apply_desired(&json!({"d": chunk}), None, &azure, at(3))
        .unwrap();

    // AWS: 8 KiB for desired and reported together.
    let aws = TwinLimits::aws();
    let mut shadow = TwinDocument::new();
    let half = "y".repeat(4000);
    shadow
        .apply_desired(&json!({"d": half}), None, &aws, at(1))
        .unwrap();
    shadow
        .apply_reported(&json!({"r": half}), None, &aws, at(1))
        .unwrap();
    let before = shadow.clone();
    let (field, _) =
        invalid_field(shadow.apply_reported(&json!({"more": "z".repeat(200)}), None, &aws, at(2)));
    assert_eq!(field, "state");
    assert_eq!(shadow, before);
}

#[test]
fn size_is_compact_json() {
    let map = obj(json!({"a": [1, 2], "b": {"c": "d"}}));
    assert_eq!(json_len(&map), r#"{"a":[1,2],"b":{"c":"d"}}"#.len());
    let state = StateRef {
        desired: &map,
        reported: &Map::new(),
    };
    assert_eq!(
        json_len(&state),
        r#"{"desired":{"a":[1,2],"b":{"c":"d"}}}"#.len()
    );
}

#[test]
fn limit_constructors_are_as_documented() {
    assert_eq!(TwinLimits::default(), TwinLimits::portable());
    let p = TwinLimits::portable();
    for cloud in [TwinLimits::aws(), TwinLimits::azure(), TwinLimits::gcp()] {
        assert!(p.max_depth <= cloud.max_depth);
        for (mine, theirs) in [
            (p.max_section_bytes, cloud.max_section_bytes),
            (p.max_state_bytes, cloud.max_state_bytes),
            (p.max_key_bytes, cloud.max_key_bytes),
            (p.max_string_bytes, cloud.max_string_bytes),
        ] {
            if let Some(theirs) = theirs {
                assert!(mine.is_some_and(|mine| mine <= theirs));
            }
        }
        assert!(p.restricted_key_chars || !cloud.restricted_key_chars);
        assert!(!p.nulls_in_arrays || cloud.nulls_in_arrays);
    }
    let custom = TwinLimits::permissive()
        .with_max_depth(3)
        .with_max_section_bytes(Some(100))
        .with_max_state_bytes(Some(150))
        .with_max_key_bytes(Some(8))
        .with_max_string_bytes(Some(16))
        .with_restricted_key_chars(true)
        .with_nulls_in_arrays(false);
    assert_eq!(custom.max_depth, 3);
    assert_eq!(custom.max_state_bytes, Some(150));
    assert!(custom.restricted_key_chars && !custom.nulls_in_arrays);
}

// --- delta ---------------------------------------------------------------------------------

#[test]
fn delta_examples_from_the_aws_rules() {
    let cases = [
        // Keys that differ or are missing from reported; keys only in reported are left out.
        (
            json!({"color": "RED", "state": "STOP"}),
            json!({"color": "GREEN", "engine": "ON"}),
            Some(json!({"color": "RED", "state": "STOP"})),
        ),
        // Nested differences keep their full path from the root.
        (
            json!({"lights": {"color": "RED", "on": true}, "engine": {"turbine": {"speed": 1200}}}),
            json!({"lights": {"color": "GREEN", "on": true}, "engine": {"turbine": {"speed": 1200}}}),
            Some(json!({"lights": {"color": "RED"}})),
        ),
        // Arrays are compared and copied whole.
        (
            json!({"colors": ["RED", "GREEN", "BLUE"]}),
            json!({"colors": ["RED", "GREEN"]}),
            Some(json!({"colors": ["RED", "GREEN", "BLUE"]})),
        ),
        (
            json!({"colors": ["RED", "GREEN"]}),
            json!({"colors": ["RED", "GREEN"], "extra": 1}),
            None,
        ),
        // An object against a scalar (or nothing) goes in whole.
        (
            json!({"a": {"b": 1, "c": 2}}),
            json!({"a": 5}),
            Some(json!({"a": {"b": 1, "c": 2}})),
        ),
        (
            json!({"a": {"b": 1}}),
            json!({}),
            Some(json!({"a": {"b": 1}})),
        ),
        // A type change counts: 1 is not "1".
        (json!({"n": 1}), json!({"n": "1"}), Some(json!({"n": 1}))),
        (json!({}), json!({"only": "reported"}), None),
        (json!({}), json!({}), None),
    ];
    for (desired, reported, expected) in cases {
        let twin = twin_with(desired.clone(), reported.clone());
        assert_eq!(
            delta_value(&twin),
            expected,
            "desired {desired} reported {reported}"
        );
        let change = twin.delta_change();
        assert_eq!(
            change.as_ref().map(|c| c.version),
            expected.as_ref().map(|_| twin.version())
        );
    }
}

#[test]
fn aws_delta_document() {
    let mut twin = TwinDocument::new().with_metadata();
    let limits = TwinLimits::aws();
    twin.apply_desired(
        &json!({"a": {"b": 1, "c": 2}, "d": 3}),
        None,
        &limits,
        at(100),
    )
    .unwrap();
    twin.apply_reported(&json!({"a": {"b": 1}, "d": 3}), None, &limits, at(200))
        .unwrap();
    assert_eq!(
        twin.to_aws_delta_document(at(300)),
        Some(json!({
            "state": {"a": {"c": 2}},
            "metadata": {"a": {"c": {"timestamp": 100}}},
            "version": 2,
            "timestamp": 300,
        }))
    );
    let change =
        DesiredChange::from_aws_delta_document(&twin.to_aws_delta_document(at(300)).unwrap())
            .unwrap();
    assert_eq!(change, twin.delta_change().unwrap());

    twin.apply_reported(&json!({"a": {"c": 2}}), None, &limits, at(400))
        .unwrap();
    assert_eq!(twin.to_aws_delta_document(at(500)), None);
    assert!(DesiredChange::from_aws_delta_document(&json!({"state": 1, "version": 1})).is_err());
    assert!(DesiredChange::from_aws_delta_document(&json!({"state": {}})).is_err());
}

// --- metadata ------------------------------------------------------------------------------

#[test]
fn metadata_records_each_written_leaf() {
    let limits = TwinLimits::portable();
    let mut twin = TwinDocument::new().with_metadata();
    assert!(twin.tracks_metadata());
    twin.apply_desired(
        &json!({"a": {"b": 1, "c": [1, 2]}, "d": true}),
        None,
        &limits,
        at(10),
    )
    .unwrap();
    twin.apply_desired(&json!({"a": {"b": 2}}), None, &limits, at(20))
        .unwrap();
    let d = Section::Desired;
    assert_eq!(twin.last_updated(d, &["a", "b"]), Some(at(20)));
    assert_eq!(twin.last_updated(d, &["a", "c"]), Some(at(10)));
    assert_eq!(twin.last_updated(d, &["a"]), Some(at(20)));
    assert_eq!(twin.last_updated(d, &["d"]), Some(at(10)));
    assert_eq!(twin.last_updated(d, &[]), Some(at(20)));
    assert_eq!(twin.last_updated(d, &["a", "b", "deeper"]), None);
    assert_eq!(twin.last_updated(Section::Reported, &[]), None);

    // Writing an unchanged value still counts as a write; deleting forgets the time; an
    // object replacing a scalar gets times for its leaves.
    twin.apply_desired(&json!({"d": true, "a": {"c": null}}), None, &limits, at(30))
        .unwrap();
    assert_eq!(twin.last_updated(d, &["d"]), Some(at(30)));
    assert_eq!(twin.last_updated(d, &["a", "c"]), None);
    twin.apply_desired(&json!({"d": {"e": 1}}), None, &limits, at(40))
        .unwrap();
    assert_eq!(twin.last_updated(d, &["d", "e"]), Some(at(40)));

    // Replacing a section starts its metadata over.
    twin.apply(
        &TwinUpdate::new().replace_desired(obj(json!({"z": 1}))),
        &limits,
        at(50),
    )
    .unwrap();
    assert_eq!(twin.last_updated(d, &["a"]), None);
    assert_eq!(twin.last_updated(d, &["z"]), Some(at(50)));

    // Without metadata there is nothing to tell.
    let plain = twin_with(json!({"a": 1}), json!({}));
    assert!(!plain.tracks_metadata());
    assert_eq!(plain.last_updated(d, &["a"]), None);
}

// --- dialect documents ---------------------------------------------------------------------

#[test]
fn aws_shadow_document_shape() {
    let limits = TwinLimits::aws();
    let mut twin = TwinDocument::new().with_metadata();
    twin.apply_desired(
        &json!({"color": "RED", "list": [1, 2]}),
        None,
        &limits,
        at(100),
    )
    .unwrap();
    twin.apply_reported(&json!({"color": "GREEN"}), None, &limits, at(200))
        .unwrap();
    assert_eq!(
        twin.to_aws_shadow_document(at(300)),
        json!({
            "state": {
                "desired": {"color": "RED", "list": [1, 2]},
                "reported": {"color": "GREEN"},
                "delta": {"color": "RED", "list": [1, 2]},
            },
            "metadata": {
                "desired": {"color": {"timestamp": 100}, "list": {"timestamp": 100}},
                "reported": {"color": {"timestamp": 200}},
            },
            "version": 2,
            "timestamp": 300,
        })
    );
    // Empty sections and the delta are left out; no metadata unless tracked.
    assert_eq!(
        TwinDocument::new().to_aws_shadow_document(at(1)),
        json!({"state": {}, "version": 0, "timestamp": 1})
    );
}

#[test]
fn aws_shadow_document_is_read_back() {
    let doc = json!({
        "state": {
            "desired": {"timestamp": 5, "nested": {"x": 1}, "arr": ["a", "b"]},
            "reported": {"timestamp": 5},
            "delta": {"nested": {"x": 1}, "arr": ["a", "b"]},
        },
        "metadata": {
            "desired": {
                "timestamp": {"timestamp": 1_600_000_000},
                "nested": {"x": {"timestamp": 1_600_000_001}},
                "arr": [{"timestamp": 1_600_000_002}, {"timestamp": 1_600_000_003}],
            },
            "reported": {"timestamp": {"timestamp": 1_600_000_004}},
        },
        "version": 17,
        "timestamp": 1_600_000_100,
        "clientToken": "abc",
    });
    let twin = TwinDocument::from_aws_shadow_document(&doc).unwrap();
    assert_eq!(twin.version(), 17);
    assert_eq!(twin.desired_version(), 17);
    assert_eq!(twin.reported_version(), 17);
    assert_eq!(twin.desired()["timestamp"], 5);
    let d = Section::Desired;
    assert_eq!(
        twin.last_updated(d, &["timestamp"]),
        Some(at(1_600_000_000))
    );
    assert_eq!(
        twin.last_updated(d, &["nested", "x"]),
        Some(at(1_600_000_001))
    );
    assert_eq!(twin.last_updated(d, &["arr"]), Some(at(1_600_000_003)));
    assert_eq!(
        twin.last_updated(Section::Reported, &["timestamp"]),
        Some(at(1_600_000_004))
    );
    assert_eq!(
        delta_value(&twin),
        Some(json!({"nested": {"x": 1}, "arr": ["a", "b"]}))
    );

    // Deleted sections, missing metadata, no version.
    let bare =
        TwinDocument::from_aws_shadow_document(&json!({"state": {"desired": null}})).unwrap();
    assert_eq!(bare, TwinDocument::new());

    for (bad, field) in [
        (json!([]), "shadow"),
        (json!({"state": 1}), "state"),
        (json!({"state": {"desired": 1}}), "state.desired"),
        (
            json!({"state": {"reported": {"a": null}}}),
            "state.reported.a",
        ),
        (json!({"state": {}, "version": -1}), "version"),
        (json!({"state": {}, "metadata": 1}), "metadata"),
    ] {
        match TwinDocument::from_aws_shadow_document(&bad) {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn aws_update_request() {
    let update = TwinUpdate::from_aws_update_request(&json!({
        "state": {"desired": {"a": 1}, "reported": {"b": null}},
        "version": 3,
        "clientToken": "t-1",
    }))
    .unwrap();
    assert_eq!(update.expected_version(), Some(3));
    assert_eq!(
        update.desired_update(),
        Some(&SectionUpdate::Patch(json!({"a": 1})))
    );
    assert_eq!(
        update.reported_update(),
        Some(&SectionUpdate::Patch(json!({"b": null})))
    );

    let clear = TwinUpdate::from_aws_update_request(&json!({"state": {"desired": null}})).unwrap();
    assert_eq!(clear, TwinUpdate::new().clear_desired());

    for (bad, field, reason) in [
        (json!("x"), "request", "Invalid JSON"),
        (json!({}), "state", "Missing required node: state"),
        (
            json!({"state": []}),
            "state",
            "State node must be an object",
        ),
        (
            json!({"state": {"desired": 1}}),
            "state.desired",
            "Desired node must be an object",
        ),
        (
            json!({"state": {"reported": "x"}}),
            "state.reported",
            "Reported node must be an object",
        ),
        (
            json!({"state": {"delta": {}}}),
            "state.delta",
            "State contains an invalid node",
        ),
        (
            json!({"state": {}, "version": "1"}),
            "version",
            "Invalid version",
        ),
    ] {
        match TwinUpdate::from_aws_update_request(&bad) {
            Err(Error::InvalidInput {
                field: f,
                reason: r,
            }) => {
                assert_eq!((f.as_str(), r.as_str()), (field, reason), "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }

    // Applied as one update: desired set, reported untouched key deleted, one version.
    let mut twin = twin_with(json!({}), json!({"b": 1}));
    assert_eq!(twin.version(), 1);
    let update = TwinUpdate::from_aws_update_request(&json!({
        "state": {"desired": {"a": 1}, "reported": {"b": null}},
        "version": 1,
    }))
    .unwrap();
    twin.apply(&update, &TwinLimits::aws(), at(1)).unwrap();
    assert_eq!(twin.version(), 2);
    assert!(twin.reported().is_empty());
}

#[test]
fn azure_twin_document() {
    let limits = TwinLimits::azure();
    let mut twin = TwinDocument::new();
    twin.apply_desired(&json!({"interval": 30}), None, &limits, at(1))
        .unwrap();
    twin.apply_desired(&json!({"mode": "eco"}), None, &limits, at(2))
        .unwrap();
    twin.apply_reported(&json!({"interval": 30}), None, &limits, at(3))
        .unwrap();
    let doc = twin.to_azure_twin_document();
    assert_eq!(
        doc,
        json!({
            "desired": {"interval": 30, "mode": "eco", "$version": 2},
            "reported": {"interval": 30, "$version": 1},
        })
    );
    assert_eq!(TwinDocument::from_azure_twin_document(&doc).unwrap(), twin);

    // The service shape, with $metadata and a twin version.
    let service = json!({
        "deviceId": "d1",
        "version": 9,
        "properties": {
            "desired": {"a": 1, "$version": 4, "$metadata": {"$lastUpdated": "2024-01-01T00:00:00Z"}},
            "reported": {"b": {"c": 2}, "$version": 5},
        },
    });
    let read = TwinDocument::from_azure_twin_document(&service).unwrap();
    assert_eq!(
        read.versions(),
        TwinVersions {
            version: 9,
            desired_version: 4,
            reported_version: 5
        }
    );
    assert_eq!(Value::Object(read.desired().clone()), json!({"a": 1}));

    for bad in [
        json!(1),
        json!({"properties": 1}),
        json!({"desired": []}),
        json!({"desired": {"$version": "x"}}),
        json!({"reported": {"a": null}}),
        json!({"version": -2}),
    ] {
        assert!(
            TwinDocument::from_azure_twin_document(&bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn azure_desired_change() {
    let limits = TwinLimits::azure();
    let mut twin = twin_with(json!({"a": 1, "b": 2}), json!({}));
    let applied = twin
        .apply_desired(&json!({"a": 1, "b": null, "c": 3}), None, &limits, at(5))
        .unwrap();
    let change = applied.desired_change().unwrap();
    assert_eq!(change.version, 2);
    assert_eq!(
        change.to_azure_patch(),
        json!({"b": null, "c": 3, "$version": 2})
    );
    assert_eq!(
        DesiredChange::from_azure_patch(&change.to_azure_patch()).unwrap(),
        change
    );
    // A reported update has no desired change.
    let applied = twin
        .apply_reported(&json!({"c": 3}), None, &limits, at(6))
        .unwrap();
    assert_eq!(applied.desired_change(), None);

    // A device mirroring the stream ends up with the service's desired section.
    let mut device = TwinDocument::new();
    let patch = Value::Object(change.patch.clone());
    device
        .apply_desired(
            &json!({"a": 1, "b": 2}),
            None,
            &TwinLimits::permissive(),
            at(5),
        )
        .unwrap();
    device
        .apply_desired(&patch, None, &TwinLimits::permissive(), at(5))
        .unwrap();
    assert_eq!(device.desired(), twin.desired());

    assert!(DesiredChange::from_azure_patch(&json!([1])).is_err());
    assert!(DesiredChange::from_azure_patch(&json!({"$version": -1})).is_err());
}

#[test]
fn neutral_serde_shape() {
    let limits = TwinLimits::portable();
    let mut twin = TwinDocument::new();
    twin.apply_desired(&json!({"a": 1}), None, &limits, at(1))
        .unwrap();
    assert_eq!(
        serde_json::to_value(&twin).unwrap(),
        json!({"desired": {"a": 1}, "reported": {}, "version": 1, "desired_version": 1, "reported_version": 0})
    );

    let mut tracked = TwinDocument::new().with_metadata();
    tracked
        .apply_reported(&json!({"a": {"b": [1]}}), None, &limits, at(2))
        .unwrap();
    let value = serde_json::to_value(&tracked).unwrap();
    assert_eq!(
        value["metadata"],
        json!({"desired": {}, "reported": {"a": {"b": 2000}}})
    );
    let back: TwinDocument = serde_json::from_value(value).unwrap();
    assert_eq!(back, tracked);

    // Missing members default; nulls and malformed metadata are refused.
    let empty: TwinDocument = serde_json::from_value(json!({})).unwrap();
    assert_eq!(empty, TwinDocument::new());
    let err =
        serde_json::from_value::<TwinDocument>(json!({"desired": {"a": {"b": null}}})).unwrap_err();
    assert!(err.to_string().contains("desired.a.b"), "{err}");
    assert!(
        serde_json::from_value::<TwinDocument>(json!({"metadata": {"desired": {"a": "x"}}}))
            .is_err()
    );
    assert!(serde_json::from_value::<TwinDocument>(json!({"version": -1})).is_err());
}

#[test]
fn desired_change_serde() {
    let change = DesiredChange::new(obj(json!({"a": 1})), 7);
    let value = serde_json::to_value(&change).unwrap();
    assert_eq!(value, json!({"patch": {"a": 1}, "version": 7}));
    assert_eq!(
        serde_json::from_value::<DesiredChange>(value).unwrap(),
        change
    );
}

// --- properties ----------------------------------------------------------------------------

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-2i64..3).prop_map(Value::from),
        prop::sample::select(vec!["x", "y"]).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
    ]
}

/// Values for a stored twin (no nulls) or, with `nulls`, for a patch.
fn value(nulls: bool) -> impl Strategy<Value = Value> {
    let base = if nulls {
        prop_oneof![3 => leaf(), 1 => Just(Value::Null)].boxed()
    } else {
        leaf().boxed()
    };
    base.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map(key(), inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn section() -> impl Strategy<Value = Object> {
    prop::collection::btree_map(key(), value(false), 0..5).prop_map(|m| m.into_iter().collect())
}

fn patch() -> impl Strategy<Value = Object> {
    prop::collection::btree_map(key(), value(true), 1..5).prop_map(|m| m.into_iter().collect())
}

fn stored(desired: Object, reported: Object, metadata: bool) -> TwinDocument {
    let twin = if metadata {
        TwinDocument::new().with_metadata()
    } else {
        TwinDocument::new()
    };
    let mut twin = twin;
    let limits = TwinLimits::permissive();
    let update = TwinUpdate::new()
        .replace_desired(desired)
        .replace_reported(reported);
    twin.apply(&update, &limits, at(1_700_000_000)).unwrap();
    twin
}

/// Every non-null leaf of `patch` is readable at its path in `section`; every null's key is
/// absent.
fn assert_patch_readable(
    section: &Object,
    patch: &Object,
) -> std::result::Result<(), TestCaseError> {
    for (key, value) in patch {
        match value {
            Value::Null => prop_assert!(!section.contains_key(key)),
            Value::Object(sub) => match section.get(key) {
                Some(Value::Object(inner)) => assert_patch_readable(inner, sub)?,
                other => prop_assert!(false, "{key}: expected an object, found {other:?}"),
            },
            other => prop_assert_eq!(section.get(key), Some(other)),
        }
    }
    Ok(())
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().any(contains_null),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The merge is RFC 7386's, a patch's values are what you read afterwards, the effective
    /// change reproduces the result, and applying the patch again changes nothing but versions.
    #[test]
    fn merge_patch_laws(desired in section(), reported in section(), p in patch(), meta in any::<bool>()) {
        let limits = TwinLimits::permissive();
        let mut twin = stored(desired.clone(), reported.clone(), meta);
        let before = twin.clone();
        let patch_value = Value::Object(p.clone());
        let applied = twin.apply_desired(&patch_value, Some(before.version()), &limits, at(1_700_000_001)).unwrap();

        let expected = rfc7386(Value::Object(desired.clone()), &patch_value);
        prop_assert_eq!(Value::Object(twin.desired().clone()), expected);
        assert_patch_readable(twin.desired(), &p)?;
        prop_assert_eq!(twin.reported(), &reported);
        prop_assert!(!twin.desired().values().any(contains_null));

        let change = applied.desired.clone().unwrap();
        let replayed = rfc7386(Value::Object(desired), &Value::Object(change.clone()));
        prop_assert_eq!(&replayed, &Value::Object(twin.desired().clone()));
        prop_assert_eq!(applied.versions.version, before.version() + 1);
        prop_assert_eq!(applied.versions.desired_version, before.desired_version() + 1);
        prop_assert_eq!(applied.versions.reported_version, before.reported_version());
        prop_assert_eq!(applied.is_noop(), twin.desired() == before.desired());

        let content = twin.desired().clone();
        let again = twin.apply_desired(&patch_value, None, &limits, at(1_700_000_002)).unwrap();
        prop_assert_eq!(twin.desired(), &content);
        prop_assert!(again.is_noop());
        prop_assert_eq!(twin.version(), before.version() + 2);
    }

    /// Replacing a section gives exactly the new content, and the change reproduces it.
    #[test]
    fn replace_laws(old in section(), new in section()) {
        let mut twin = stored(old.clone(), Map::new(), false);
        let applied = twin
            .apply(&TwinUpdate::new().replace_desired(new.clone()), &TwinLimits::permissive(), at(2))
            .unwrap();
        prop_assert_eq!(twin.desired(), &new);
        let change = Value::Object(applied.desired.unwrap());
        prop_assert_eq!(rfc7386(Value::Object(old), &change), Value::Object(new));
    }

    /// After the device reports the delta, desired and reported are in sync; the delta never
    /// holds null or a key desired lacks.
    #[test]
    fn reporting_the_delta_syncs(desired in section(), reported in section()) {
        let mut twin = stored(desired, reported, false);
        match twin.delta() {
            None => {
                for (key, want) in twin.desired() {
                    prop_assert_eq!(twin.reported().get(key).is_some(), true);
                    if !want.is_object() {
                        prop_assert_eq!(twin.reported().get(key), Some(want));
                    }
                }
            }
            Some(delta) => {
                prop_assert!(!delta.values().any(contains_null));
                prop_assert!(delta.keys().all(|k| twin.desired().contains_key(k)));
                let desired = twin.desired().clone();
                let version = twin.version();
                twin.apply_reported(&Value::Object(delta), Some(version), &TwinLimits::permissive(), at(3)).unwrap();
                prop_assert_eq!(twin.delta(), None);
                prop_assert_eq!(twin.desired(), &desired);
            }
        }
    }

    /// Any update refused by the limits or a version check leaves the twin exactly as it was.
    #[test]
    fn refused_updates_change_nothing(desired in section(), reported in section(), p in patch(), stale in 1u64..4) {
        let mut twin = stored(desired, reported, true);
        let before = twin.clone();
        let patch_value = Value::Object(p);
        let conflict = twin.apply_desired(&patch_value, Some(twin.version() + stale), &TwinLimits::permissive(), at(5));
        prop_assert!(matches!(conflict, Err(Error::Conflict { .. })), "{:?}", conflict);
        let no_depth = TwinLimits::permissive().with_max_depth(0);
        prop_assert!(twin.apply_reported(&patch_value, None, &no_depth, at(5)).is_err());
        let no_room = TwinLimits::permissive().with_max_state_bytes(Some(1));
        prop_assert!(twin.apply(&TwinUpdate::reported(patch_value.clone()), &no_room, at(5)).is_err());
        let mut wrapped = Map::new();
        wrapped.insert("$x".into(), patch_value);
        prop_assert!(twin.apply_desired(&Value::Object(wrapped), None, &TwinLimits::permissive(), at(5)).is_err());
        prop_assert_eq!(&twin, &before);
    }

    /// The dialect documents and the neutral shape read back to the same twin.
    #[test]
    fn document_round_trips(desired in section(), reported in section(), extra in 0u64..5) {
        let mut twin = stored(desired, reported, true);
        for _ in 0..extra {
            twin.apply_reported(&json!({"n": extra}), None, &TwinLimits::permissive(), at(1_700_000_010)).unwrap();
        }

        // AWS: content, version and (whole-second) metadata survive; AWS has no section versions.
        let aws = twin.to_aws_shadow_document(at(1_800_000_000));
        let back = TwinDocument::from_aws_shadow_document(&aws).unwrap();
        prop_assert_eq!(back.desired(), twin.desired());
        prop_assert_eq!(back.reported(), twin.reported());
        prop_assert_eq!(back.version(), twin.version());
        prop_assert_eq!(back.delta(), twin.delta());
        prop_assert_eq!(back.to_aws_shadow_document(at(1_800_000_000)), aws);

        // Azure: content and section versions survive (metadata is not carried).
        let azure = twin.to_azure_twin_document();
        let back = TwinDocument::from_azure_twin_document(&azure).unwrap();
        prop_assert_eq!(back.desired(), twin.desired());
        prop_assert_eq!(back.reported(), twin.reported());
        prop_assert_eq!(back.desired_version(), twin.desired_version());
        prop_assert_eq!(back.reported_version(), twin.reported_version());
        prop_assert_eq!(back.to_azure_twin_document(), azure);

        // Neutral: everything.
        let text = serde_json::to_string(&twin).unwrap();
        let back: TwinDocument = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, twin);
    }
}
