//! The admission handlers never panic on arbitrary input, and always answer
//! with an AdmissionReview: a property test over malformed bodies — random
//! bytes, random JSON, and the fixture reviews with random subtrees replaced,
//! removed or retyped — posted to every endpoint.
//!
//! CI runs a small number of cases. The full run (one million cases per
//! property) is:
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release -p komptroller --test webhook_fuzz
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod webhook_common;

use komptroller::webhook::review::{self, Route};
use proptest::prelude::*;
use serde_json::Value;
use webhook_common::{FixedView, fixture};

const FIXTURES: &[&str] = &[
    "tj-create-small",
    "tj-create-over-ceiling",
    "tj-create-warn",
    "tj-update-admitted-spec",
    "tj-mutate-update-stamp-dropped",
    "policy-invalid",
    "policy-valid",
    "approval-ok",
    "approval-update",
    "approval-mutate-stamps",
];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("CREATE"),
            Just("UPDATE"),
            Just("DELETE"),
            Just("bf16"),
            Just("fp4"),
            Just("nvidia-h100-sxm"),
            Just("72h"),
            Just("0s"),
            Just("-1h"),
            Just("AwaitingApproval"),
            Just("Admitted"),
            Just("Escalate"),
            Just("nvidia.com/gpu"),
            Just("1e400"),
            Just("komptroller.dev"),
            Just("{\"user\":\"alice\",\"groups\":[]}"),
            Just("2020-01-01T00:00:00Z"),
            Just("safety-board"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    ".{0,8}",
                    prop_oneof![
                        Just("spec"),
                        Just("metadata"),
                        Just("status"),
                        Just("name"),
                        Just("replicas"),
                        Just("template"),
                        Just("containers"),
                        Just("resources"),
                        Just("limits"),
                        Just("annotations"),
                        Just("approver"),
                        Just("approverGroups"),
                        Just("specHash"),
                        Just("tiers"),
                        Just("threshold"),
                        Just("phase"),
                        Just("decision"),
                        Just("approvals"),
                    ]
                    .prop_map(String::from),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// How to damage a review: walk down by `path` (each step picks a child by
/// index modulo the number of children), then replace, remove or retype.
#[derive(Clone, Debug)]
enum Damage {
    Replace(Value),
    Remove,
    Stringify,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => json_value().prop_map(Damage::Replace),
        2 => Just(Damage::Remove),
        1 => Just(Damage::Stringify),
    ]
}

fn apply(v: &mut Value, path: &[usize], d: &Damage) {
    let Some((&step, rest)) = path.split_first() else {
        match d {
            Damage::Replace(n) => *v = n.clone(),
            Damage::Remove => *v = Value::Null,
            Damage::Stringify => *v = Value::String(v.to_string()),
        }
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(step % m.len()).cloned().unwrap();
            if rest.is_empty() && matches!(d, Damage::Remove) {
                m.remove(&key);
                return;
            }
            apply(m.get_mut(&key).unwrap(), rest, d);
        }
        Value::Array(a) if !a.is_empty() => {
            let i = step % a.len();
            if rest.is_empty() && matches!(d, Damage::Remove) {
                a.remove(i);
                return;
            }
            apply(&mut a[i], rest, d);
        }
        other => apply(other, &[], d),
    }
}

struct Bench {
    rt: tokio::runtime::Runtime,
    view: FixedView,
    fixtures: Vec<Value>,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            view: FixedView::load(),
            fixtures: FIXTURES
                .iter()
                .map(|f| serde_json::from_slice(&fixture(f)).unwrap())
                .collect(),
        }
    }

    /// Posts `body` to every route; each answer must be an AdmissionReview with a response.
    fn check(&self, body: &[u8]) -> Result<(), TestCaseError> {
        for route in Route::ALL {
            let a = self.rt.block_on(review::handle(
                route,
                body,
                &self.view,
                jiff::Timestamp::now(),
            ));
            let v: Value = serde_json::from_slice(&a.body)
                .map_err(|e| TestCaseError::fail(format!("answer is not JSON: {e}")))?;
            prop_assert_eq!(&v["kind"], "AdmissionReview");
            prop_assert!(v["response"]["allowed"].is_boolean(), "no allowed in {}", v);
            prop_assert!(a.status == 200 || a.status == 400);
            if v["response"]["allowed"] == false {
                prop_assert!(
                    !v["response"]["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty(),
                    "a denial without a message: {}",
                    v
                );
            }
        }
        Ok(())
    }
}

thread_local! {
    static BENCH: Bench = Bench::new();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        BENCH.with(|b| b.check(&body))?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        BENCH.with(|b| b.check(&body))?;
    }

    #[test]
    fn damaged_reviews_never_panic(
        which in 0..FIXTURES.len(),
        hits in prop::collection::vec((prop::collection::vec(any::<usize>(), 0..8), damage()), 1..4),
    ) {
        BENCH.with(|b| {
            let mut v = b.fixtures[which].clone();
            for (path, d) in &hits {
                apply(&mut v, path, d);
            }
            b.check(&serde_json::to_vec(&v).unwrap())
        })?;
    }
}
