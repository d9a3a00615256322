//! Fuzzes the AWS IoT policy JSON parser: no input may panic it, and whatever it accepts must
//! compile into the engine and round-trip through the exporter unchanged.
#![no_main]

use fleetkit::policy::{Partition, PolicyDocument, PolicyEngine, PrincipalContext, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = PolicyDocument::from_json(text) else {
        return;
    };
    let again = PolicyDocument::from_json(&doc.to_json()).expect("exported JSON parses");
    assert_eq!(doc, again, "export does not round-trip");
    let mut engine = PolicyEngine::new(Partition::local());
    engine
        .put_policy("fuzzed", &doc)
        .expect("a parsed document compiles");
    engine
        .attach_policy(
            "fuzzed",
            fleetkit::policy::AttachTarget::Device("dev-1".into()),
        )
        .expect("attach");
    let principal = engine.principal(PrincipalContext::device("dev-1", "dev-1", None));
    for request in [
        Request::connect("dev-1"),
        Request::publish("sensors/dev-1/t"),
        Request::subscribe("sensors/+/#"),
    ] {
        let decision = principal.authorize(&request);
        let _ = decision.to_string();
    }
});
