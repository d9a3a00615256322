//! Policy decision latency: fleetkit's engine beside cedar-policy deciding the equivalent request
//! over the equivalent policies, in the same run, printed as a ratio.
//!
//! `cargo bench --bench policy`. The engine holds a registry of 100,000 devices (each with a
//! device attachment to one of 1,000 per-batch policies) plus 100 role policies attached to thing
//! groups `g0`…`g99`. The principal under test, `dev-000042`, has exactly N ∈ {1, 10, 100}
//! policies in force: its batch policy and the role policies of groups `g0`…`g(N-2)`. Every
//! policy is a realistic AWS IoT policy of three statements (Connect to its own client id,
//! Publish/Receive under `sensors/${iot:Connection.Thing.ThingName}/<tag>/*` — with a
//! `StringLike` condition on the thing type in half of them — and a Deny on
//! `sensors/*/<tag>/admin`).
//!
//! - **allowed**: a Publish allowed only by the *last* policy, so every policy is scanned.
//! - **denied**: a Publish to another device's topic: an implicit deny, every policy scanned.
//!
//! Cedar gets one `permit`/`forbid` per statement, the topic matched with `like`. Cedar has no
//! policy variables, so the thing name is substituted into the Cedar text, as a Cedar user would
//! with templates or per-device policies. Cedar has no attachment index either, so its
//! `PolicySet` holds exactly the N policies attached to the principal (giving it the whole
//! fleet's policies would be unfair to it); its `Request` and `Entities` are built once, outside
//! the timed region. Both choices favour Cedar, so the speed-up printed is conservative.
//!
//! Criterion measures the medians (read back from its `estimates.json`). A separate interleaved
//! loop (fleetkit batch, Cedar batch, fleetkit batch, …) times up to 200,000 decisions per
//! engine and row — fewer when that would take more than about 4 s, but never under 16,000 — in
//! batches of 16 (to beat timer overhead) and reports per-decision p50/p99 over the batch means
//! (so the p99 is that of 16-decision averages). `POLICY_BENCH_DECISIONS` fixes the count. Fleet-size flatness: the N = 10 decision (and
//! principal resolution + decision) with 1,000 vs 100,000 devices in the registry.
//!
//! Goal from the issue: at least 10× faster than Cedar at every size, flat in fleet size.

mod support;
use support::median_ns;

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, PolicySet, RestrictedExpression,
};
use criterion::Criterion;
use fleetkit::policy::{
    AttachTarget, Outcome, Partition, PolicyDocument, PolicyEngine, Principal, PrincipalContext,
    Request,
};

/// Devices in the large registry.
const FLEET: usize = 100_000;
/// Devices in the small registry (fleet-size flatness check).
const SMALL_FLEET: usize = 1_000;
/// Distinct per-batch policies the devices are attached to.
const BATCH_POLICIES: usize = 1_000;
/// Role policies, one per thing group.
const ROLE_POLICIES: usize = 100;
/// Policy counts measured.
const SIZES: [usize; 3] = [1, 10, 100];
/// The principal under test.
const THING: usize = 42;
const THING_TYPE: &str = "sensor-v2";
/// Decisions per timed batch in the percentile loop.
const BATCH: usize = 16;
/// Decisions per engine and row in the percentile loop: at most, at least, and the time budget
/// that picks between them.
const MAX_DECISIONS: usize = 200_000;
const MIN_DECISIONS: usize = 16_000;
const ROW_BUDGET: Duration = Duration::from_secs(4);

fn thing_name(k: usize) -> String {
    format!("dev-{k:06}")
}

/// One policy, written both as AWS IoT JSON and as the equivalent Cedar.
struct Spec {
    /// Topic level that distinguishes this policy's grants: `b<k>` or `r<i>`.
    tag: String,
    /// Whether the Publish statement carries the `StringLike` thing-type condition.
    conditioned: bool,
}

impl Spec {
    fn batch(k: usize) -> Self {
        Spec {
            tag: format!("b{k}"),
            conditioned: k.is_multiple_of(2),
        }
    }

    fn role(i: usize) -> Self {
        Spec {
            tag: format!("r{i}"),
            conditioned: i.is_multiple_of(2),
        }
    }

    fn aws(&self) -> PolicyDocument {
        let tag = &self.tag;
        let condition = if self.conditioned {
            r#", "Condition": {"StringLike": {"iot:Connection.Thing.ThingTypeName": "sensor-*"}}"#
        } else {
            ""
        };
        PolicyDocument::from_json(&format!(
            r#"{{"Version": "2012-10-17", "Statement": [
  {{"Effect": "Allow", "Action": "iot:Connect",
    "Resource": "arn:aws:iot:*:*:client/${{iot:Connection.Thing.ThingName}}"}},
  {{"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
    "Resource": "arn:aws:iot:*:*:topic/sensors/${{iot:Connection.Thing.ThingName}}/{tag}/*"{condition}}},
  {{"Effect": "Deny", "Action": "iot:Publish",
    "Resource": "arn:aws:iot:*:*:topic/sensors/*/{tag}/admin"}}
]}}"#
        ))
        .expect("policy parses")
    }

    /// The same three statements in Cedar, with the thing name substituted (escaped, so that it
    /// is as literal as AWS's variable substitution).
    fn cedar(&self, thing: &str) -> String {
        let tag = &self.tag;
        let thing_lit = cedar_string(thing);
        let thing_like = cedar_like(thing);
        let condition = if self.conditioned {
            r#" && principal.thingType like "sensor-*""#
        } else {
            ""
        };
        format!(
            r#"permit(principal, action == Action::"Connect", resource == Client::"{thing_lit}");
permit(principal, action in [Action::"Publish", Action::"Receive"], resource is Topic)
  when {{ resource.name like "sensors/{thing_like}/{tag}/*"{condition} }};
forbid(principal, action == Action::"Publish", resource is Topic)
  when {{ resource.name like "sensors/*/{tag}/admin" }};
"#
        )
    }
}

fn cedar_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn cedar_like(s: &str) -> String {
    cedar_string(s).replace('*', "\\*")
}

/// An engine with `devices` devices attached to batch policies, and the role policies on groups.
fn build_engine(devices: usize) -> PolicyEngine {
    let mut engine = PolicyEngine::new(Partition::local());
    for k in 0..BATCH_POLICIES {
        engine
            .put_policy(&format!("batch-{k}"), &Spec::batch(k).aws())
            .unwrap();
    }
    for i in 0..ROLE_POLICIES {
        let name = format!("role-{i}");
        engine.put_policy(&name, &Spec::role(i).aws()).unwrap();
        engine
            .attach_policy(&name, AttachTarget::Group(format!("g{i}")))
            .unwrap();
    }
    for k in 0..devices {
        engine
            .attach_policy(
                &format!("batch-{}", k % BATCH_POLICIES),
                AttachTarget::Device(thing_name(k)),
            )
            .unwrap();
    }
    engine
}

/// The principal under test, with exactly `n` policies in force (its batch policy first).
fn context(n: usize) -> PrincipalContext {
    let thing = thing_name(THING);
    PrincipalContext::device(&thing, &thing, None)
        .with_thing_type(THING_TYPE)
        .with_groups((0..n - 1).map(|i| format!("g{i}")))
}

/// The specs of the policies attached to the principal of size `n`, in the engine's order.
fn attached_specs(n: usize) -> Vec<Spec> {
    std::iter::once(Spec::batch(THING % BATCH_POLICIES))
        .chain((0..n - 1).map(Spec::role))
        .collect()
}

/// The allowed topic (granted only by the last attached policy) and the denied one (another
/// device's topic under the same tag: implicit deny).
fn topics(n: usize) -> (String, String) {
    let last = attached_specs(n).pop().unwrap().tag;
    (
        format!("sensors/{}/{last}/temp", thing_name(THING)),
        format!("sensors/{}/{last}/temp", thing_name(THING + 1)),
    )
}

struct CedarCase {
    authorizer: Authorizer,
    policies: PolicySet,
    entities: Entities,
    allowed: cedar_policy::Request,
    denied: cedar_policy::Request,
    /// Extra requests used only by the equivalence check: (topic, request).
    checks: Vec<(String, cedar_policy::Request)>,
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_str(&format!("{ty}::\"{}\"", cedar_string(id))).unwrap()
}

fn topic_entity(topic: &str) -> Entity {
    Entity::new(
        uid("Topic", topic),
        HashMap::from([(
            "name".to_string(),
            RestrictedExpression::new_string(topic.to_string()),
        )]),
        HashSet::new(),
    )
    .unwrap()
}

fn cedar_case(n: usize, extra_topics: &[String]) -> CedarCase {
    let thing = thing_name(THING);
    let text: String = attached_specs(n).iter().map(|s| s.cedar(&thing)).collect();
    let policies = PolicySet::from_str(&text).expect("cedar policies parse");
    assert_eq!(policies.policies().count(), 3 * n);
    let principal = Entity::new(
        uid("Device", &thing),
        HashMap::from([(
            "thingType".to_string(),
            RestrictedExpression::new_string(THING_TYPE.to_string()),
        )]),
        (0..n - 1).map(|i| uid("Group", &format!("g{i}"))).collect(),
    )
    .unwrap();
    let (allowed, denied) = topics(n);
    let all_topics: Vec<&String> = [&allowed, &denied]
        .into_iter()
        .chain(extra_topics)
        .collect();
    let entities = Entities::from_entities(
        std::iter::once(principal).chain(all_topics.iter().map(|t| topic_entity(t))),
        None,
    )
    .unwrap();
    let request = |topic: &str| {
        cedar_policy::Request::new(
            uid("Device", &thing),
            uid("Action", "Publish"),
            uid("Topic", topic),
            Context::empty(),
            None,
        )
        .unwrap()
    };
    CedarCase {
        authorizer: Authorizer::new(),
        allowed: request(&allowed),
        denied: request(&denied),
        checks: extra_topics
            .iter()
            .map(|t| (t.clone(), request(t)))
            .collect(),
        policies,
        entities,
    }
}

impl CedarCase {
    fn decide(&self, request: &cedar_policy::Request) -> bool {
        self.authorizer
            .is_authorized(
                black_box(request),
                black_box(&self.policies),
                black_box(&self.entities),
            )
            .decision()
            == cedar_policy::Decision::Allow
    }

    /// Decides and insists that no policy errored (an erroring Cedar policy is silently skipped,
    /// which would make an agreement with fleetkit accidental).
    fn checked(&self, request: &cedar_policy::Request) -> bool {
        let response = self
            .authorizer
            .is_authorized(request, &self.policies, &self.entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "cedar evaluation errors: {errors:?}");
        response.decision() == cedar_policy::Decision::Allow
    }
}

fn fleetkit_decide(principal: &Principal, topic: &str) -> bool {
    black_box(principal)
        .authorize(&Request::publish(black_box(topic)))
        .is_allowed()
}

/// Everything one size needs, with both engines checked to agree.
struct Case {
    n: usize,
    principal: Principal,
    allowed: String,
    denied: String,
    cedar: CedarCase,
}

fn case(engine: &PolicyEngine, n: usize) -> Case {
    let principal = engine.principal(context(n));
    let expected: Vec<String> = std::iter::once(format!("batch-{}", THING % BATCH_POLICIES))
        .chain((0..n - 1).map(|i| format!("role-{i}")))
        .collect();
    assert_eq!(principal.policy_names(), expected, "policies in force");
    let (allowed, denied) = topics(n);
    let last = attached_specs(n).pop().unwrap().tag;
    let thing = thing_name(THING);
    // Beyond the two measured requests: explicit deny, another policy's grant, a foreign tag.
    let extra = vec![
        format!("sensors/{thing}/{last}/admin"),
        format!("sensors/{thing}/b{}/x", THING % BATCH_POLICIES),
        format!("sensors/{thing}/r{}/x", n.saturating_sub(2)),
        format!("sensors/{thing}/r{}/x", ROLE_POLICIES + 7),
        format!("sensors/{thing}/{last}"),
    ];
    let cedar = cedar_case(n, &extra);

    // The measured requests must be decided alike, and as intended.
    let ours = principal.authorize(&Request::publish(&allowed));
    assert_eq!(ours.outcome(), Outcome::Allow, "{ours}");
    assert_eq!(
        ours.statement().map(|(p, _, _)| p.to_string()),
        expected.last().cloned(),
        "the allowed request must be granted by the last policy"
    );
    assert!(cedar.checked(&cedar.allowed), "cedar must allow {allowed}");
    let ours = principal.authorize(&Request::publish(&denied));
    assert_eq!(ours.outcome(), Outcome::ImplicitDeny, "{ours}");
    assert!(!cedar.checked(&cedar.denied), "cedar must deny {denied}");
    for (topic, request) in &cedar.checks {
        let a = principal.authorize(&Request::publish(topic)).is_allowed();
        let b = cedar.checked(request);
        assert_eq!(a, b, "n={n}: fleetkit {a} vs cedar {b} on {topic}");
    }
    // And the thing-type condition really is evaluated on both sides.
    let wrong_type = engine.principal(context(n).with_thing_type("camera"));
    assert!(
        !wrong_type
            .authorize(&Request::publish(&allowed))
            .is_allowed()
    );

    Case {
        n,
        principal,
        allowed,
        denied,
        cedar,
    }
}

/// Per-decision times (ns), from batches of [`BATCH`], for two closures run alternately:
/// `decisions` each, or as many as fit the row budget.
fn interleaved(
    decisions: Option<usize>,
    mut a: impl FnMut() -> bool,
    mut b: impl FnMut() -> bool,
) -> (Vec<f64>, Vec<f64>) {
    fn batch(f: &mut impl FnMut() -> bool) -> f64 {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(f());
        }
        start.elapsed().as_nanos() as f64 / BATCH as f64
    }
    // Warm up, and estimate the cost of one round (a batch of each).
    let warm = Instant::now();
    let mut warm_rounds = 0usize;
    while warm_rounds < 64 || warm.elapsed() < Duration::from_millis(100) {
        batch(&mut a);
        batch(&mut b);
        warm_rounds += 1;
    }
    let round_ns = warm.elapsed().as_nanos() as f64 / warm_rounds as f64;
    let rounds = match decisions {
        Some(d) => d.div_ceil(BATCH),
        None => ((ROW_BUDGET.as_nanos() as f64 / round_ns) as usize)
            .clamp(MIN_DECISIONS / BATCH, MAX_DECISIONS / BATCH),
    };
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        ta.push(batch(&mut a));
        tb.push(batch(&mut b));
    }
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    (ta, tb)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_opt(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".to_string(), fmt_ns)
}

fn main() {
    let setup = Instant::now();
    let engine = build_engine(FLEET);
    let small = build_engine(SMALL_FLEET);
    let cases: Vec<Case> = SIZES.iter().map(|&n| case(&engine, n)).collect();
    let flat_n = 10;
    let flat_large = engine.principal(context(flat_n));
    let flat_small = small.principal(context(flat_n));
    let (flat_topic, _) = topics(flat_n);
    assert!(fleetkit_decide(&flat_small, &flat_topic));
    println!(
        "setup: {FLEET} + {SMALL_FLEET} device registries, {} policies each, both engines \
         checked to agree, in {:.1?}",
        BATCH_POLICIES + ROLE_POLICIES,
        setup.elapsed()
    );

    let out = support::criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();

    for (group, allowed) in [("policy_allowed", true), ("policy_denied", false)] {
        let mut g = c.benchmark_group(group);
        for case in &cases {
            let topic = if allowed { &case.allowed } else { &case.denied };
            let request = if allowed {
                &case.cedar.allowed
            } else {
                &case.cedar.denied
            };
            g.bench_function(format!("fleetkit_n{}", case.n), |b| {
                b.iter(|| fleetkit_decide(&case.principal, topic))
            });
            g.bench_function(format!("cedar_n{}", case.n), |b| {
                b.iter(|| case.cedar.decide(request))
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("policy_fleet");
        for (id, principal) in [("decide_1k", &flat_small), ("decide_100k", &flat_large)] {
            g.bench_function(id, |b| b.iter(|| fleetkit_decide(principal, &flat_topic)));
        }
        for (id, eng) in [
            ("resolve_decide_1k", &small),
            ("resolve_decide_100k", &engine),
        ] {
            let ctx = context(flat_n);
            g.bench_function(id, |b| {
                b.iter(|| {
                    let principal = black_box(eng).principal(black_box(ctx.clone()));
                    fleetkit_decide(&principal, &flat_topic)
                })
            });
        }
        g.finish();
    }
    c.final_summary();

    let decisions: Option<usize> = std::env::var("POLICY_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok());
    let loop_start = Instant::now();

    println!(
        "\n== Policy decision latency: fleetkit vs cedar-policy 4.14.1 ({FLEET} devices in the \
         fleetkit registry) =="
    );
    println!(
        "Cedar's PolicySet holds only the N policies attached to the principal (it has no \
         attachment index;\nthe whole fleet's policies would be unfair to it); its Request and \
         Entities are prebuilt. Thing name\nsubstituted into the Cedar text (no policy variables). \
         median = criterion; p50/p99 = interleaved loop\n(`k` = decisions per engine), per-decision \
         time from batches of {BATCH}. speed-up = cedar / fleetkit."
    );
    println!(
        "{:>4}  {:<8} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8} {:>8} | {:>4} | goal 10x",
        "N",
        "request",
        "fk med",
        "fk p50",
        "fk p99",
        "cedar med",
        "cedar p50",
        "cedar p99",
        "x median",
        "x p99",
        "k"
    );
    let mut goal_met = true;
    for case in &cases {
        for (label, group, topic, request) in [
            (
                "allowed",
                "policy_allowed",
                &case.allowed,
                &case.cedar.allowed,
            ),
            ("denied", "policy_denied", &case.denied, &case.cedar.denied),
        ] {
            let (fk, ce) = interleaved(
                decisions,
                || fleetkit_decide(&case.principal, topic),
                || case.cedar.decide(request),
            );
            let fk_med = median_ns(&out, group, &format!("fleetkit_n{}", case.n));
            let ce_med = median_ns(&out, group, &format!("cedar_n{}", case.n));
            let (fk50, fk99) = (quantile(&fk, 0.5), quantile(&fk, 0.99));
            let (ce50, ce99) = (quantile(&ce, 0.5), quantile(&ce, 0.99));
            // The goal is judged on the median: criterion's if present, else the loop's p50.
            let speedup = match (fk_med, ce_med) {
                (Some(f), Some(c)) => c / f,
                _ => ce50 / fk50,
            };
            let met = speedup >= 10.0 && ce50 / fk50 >= 10.0;
            goal_met &= met;
            println!(
                "{:>4}  {label:<8} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>7.1}x {:>7.1}x | {:>4} | {}",
                case.n,
                fmt_opt(fk_med),
                fmt_ns(fk50),
                fmt_ns(fk99),
                fmt_opt(ce_med),
                fmt_ns(ce50),
                fmt_ns(ce99),
                speedup,
                ce99 / fk99,
                fk.len() * BATCH / 1000,
                if met { "met" } else { "NOT met" }
            );
        }
    }

    println!("\n== Fleet-size flatness (fleetkit, N = {flat_n}; ratio = 100k / 1k, goal ~1.0) ==");
    let (small_t, large_t) = interleaved(
        decisions,
        || fleetkit_decide(&flat_small, &flat_topic),
        || fleetkit_decide(&flat_large, &flat_topic),
    );
    let ctx = context(flat_n);
    let (small_r, large_r) = interleaved(
        decisions,
        || fleetkit_decide(&small.principal(ctx.clone()), &flat_topic),
        || fleetkit_decide(&engine.principal(ctx.clone()), &flat_topic),
    );
    for (label, id_small, id_large, s, l) in [
        (
            "decide (resolved principal)",
            "decide_1k",
            "decide_100k",
            &small_t,
            &large_t,
        ),
        (
            "resolve principal + decide",
            "resolve_decide_1k",
            "resolve_decide_100k",
            &small_r,
            &large_r,
        ),
    ] {
        let m_small = median_ns(&out, "policy_fleet", id_small);
        let m_large = median_ns(&out, "policy_fleet", id_large);
        println!(
            "{label:<28}: median 1k {:>9}  100k {:>9}  ratio {}   | loop p50 1k {:>9} 100k {:>9} \
             ratio {:.2}, p99 ratio {:.2}",
            fmt_opt(m_small),
            fmt_opt(m_large),
            match (m_small, m_large) {
                (Some(s), Some(l)) => format!("{:.2}", l / s),
                _ => "n/a".to_string(),
            },
            fmt_ns(quantile(s, 0.5)),
            fmt_ns(quantile(l, 0.5)),
            quantile(l, 0.5) / quantile(s, 0.5),
            quantile(l, 0.99) / quantile(s, 0.99),
        );
    }
    println!(
        "\ngoal (>= 10x faster than Cedar at every size, allowed and denied): {}  \
         [percentile loops took {:.1?}]",
        if goal_met { "MET" } else { "NOT MET" },
        loop_start.elapsed()
    );
}
