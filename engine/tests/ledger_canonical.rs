//! Our single-pass RFC 8785 serializer against the maintained
//! `serde_json_canonicalizer` crate, byte for byte.

use komptroller_engine::ledger::{
    Ledger, canonical_json, reference_canonical_json, sample::sample_records,
};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|i| Value::Number(i.into())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(1e21),
            Just(1e-7),
            Just(-0.0),
            Just(1e25),
            Just(123456789012345680000.0),
            Just(0.1 + 0.2)
        ]
        .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\/\u{7f}\u{e9}\u{20ac}\u{1f600}a-z]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                ("[a-zA-Z\u{e9}\u{20ac}\u{1f600}\u{fb01}_]{0,6}", inner),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_json_is_encoded_exactly_like_the_reference(v in json_value()) {
        let ours = canonical_json(&v).expect("finite values encode");
        let reference = reference_canonical_json(&v).expect("reference encodes");
        prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&reference));
    }

    #[test]
    fn ledger_entries_are_encoded_exactly_like_the_reference(seed in any::<u64>(), n in 1usize..40) {
        let mut l = Ledger::new();
        for r in sample_records(n, seed, "2026-05-01T12:00:00.123456789Z".parse().expect("time")) {
            l.append(r).expect("append");
        }
        for e in l.entries() {
            let ours = e.canonical_line().expect("encode");
            let reference = reference_canonical_json(e).expect("reference");
            prop_assert_eq!(&ours, &reference);
            let body = e.body_bytes().expect("body");
            // The hash is over the canonical form without `hash`.
            let mut v = serde_json::to_value(e).expect("value");
            v.as_object_mut().expect("object").remove("hash");
            prop_assert_eq!(&body, &reference_canonical_json(&v).expect("reference"));
            prop_assert_eq!(e.hash, komptroller_engine::ledger::Sha256Digest::of(&body));
        }
    }
}

#[test]
fn non_finite_numbers_are_refused() {
    assert!(canonical_json(&f64::NAN).is_err());
    assert!(canonical_json(&[1.0, f64::INFINITY]).is_err());
}

#[test]
fn rfc8785_examples() {
    // Numbers from RFC 8785 Appendix B and key order by UTF-16 code units (§3.2.3).
    let cases: [(f64, &str); 8] = [
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (333333333.3333333, "333333333.3333333"),
        (1e23, "1e+23"),
        (295147905179352830000.0, "295147905179352830000"),
        (0.000001, "0.000001"),
    ];
    for (f, want) in cases {
        assert_eq!(
            String::from_utf8(canonical_json(&f).expect("finite")).expect("utf8"),
            want
        );
    }
    let mut m = std::collections::BTreeMap::new();
    m.insert("\u{20ac}", 1); // Euro sign U+20AC
    m.insert("\r", 2);
    m.insert("\u{fb33}", 3); // Hebrew letter dalet with dagesh U+FB33
    m.insert("1", 4);
    m.insert("\u{1f600}", 5); // emoji, surrogate pair D83D DE00
    m.insert("\u{80}", 6);
    m.insert("\u{f6}", 7);
    let got = String::from_utf8(canonical_json(&m).expect("encode")).expect("utf8");
    assert_eq!(
        got,
        "{\"\\r\":2,\"1\":4,\"\u{80}\":6,\"\u{f6}\":7,\"\u{20ac}\":1,\"\u{1f600}\":5,\"\u{fb33}\":3}"
    );
}

mod validator {
    use super::*;
    use komptroller_engine::ledger::is_canonical_json;

    /// The definition: bytes are canonical iff they parse and re-encode to themselves.
    fn by_definition(b: &[u8]) -> bool {
        match serde_json::from_slice::<Value>(b) {
            Ok(v) => reference_canonical_json(&v).is_ok_and(|c| c == b),
            Err(_) => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn canonical_encodings_are_accepted(v in json_value()) {
            let c = canonical_json(&v).expect("encode");
            prop_assert!(is_canonical_json(&c), "{}", String::from_utf8_lossy(&c));
        }

        #[test]
        fn any_single_byte_change_is_judged_like_the_definition(
            v in json_value(), pos in any::<prop::sample::Index>(), byte in any::<u8>(),
        ) {
            let mut c = canonical_json(&v).expect("encode");
            let i = pos.index(c.len());
            c[i] = byte;
            // serde_json tolerates duplicate keys (keeps the last) and so does
            // not re-encode them identically; both agree then as well.
            prop_assert_eq!(is_canonical_json(&c), by_definition(&c), "{}", String::from_utf8_lossy(&c));
        }
    }

    /// The verifier's one-pass decoder: accepts exactly what is canonical,
    /// and decodes it to what serde_json decodes.
    fn decoder_agrees(b: &[u8]) -> Result<(), TestCaseError> {
        let decoded = komptroller_engine::ledger::from_canonical_json::<Value>(b);
        prop_assert_eq!(
            decoded.is_ok(),
            is_canonical_json(b),
            "{}",
            String::from_utf8_lossy(b)
        );
        if let Ok(v) = decoded {
            let reference: Value = serde_json::from_slice(b).expect("canonical JSON parses");
            prop_assert_eq!(v, reference);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn the_one_pass_decoder_accepts_canonical_encodings(v in json_value()) {
            let c = canonical_json(&v).expect("encode");
            decoder_agrees(&c)?;
        }

        #[test]
        fn the_one_pass_decoder_judges_any_single_byte_change_like_the_validator(
            v in json_value(), pos in any::<prop::sample::Index>(), byte in any::<u8>(),
        ) {
            let mut c = canonical_json(&v).expect("encode");
            let i = pos.index(c.len());
            c[i] = byte;
            decoder_agrees(&c)?;
        }
    }

    #[test]
    fn non_canonical_spellings_are_refused() {
        for bad in [
            &b"{\"b\":1,\"a\":2}"[..],
            b"{\"a\":1,\"a\":1}",
            b"{ \"a\":1}",
            b"[1.0]",
            b"[1e25]",
            b"[1E+25]",
            b"[-0]",
            b"[\"\\u0041\"]",
            b"[\"\\/\"]",
            b"[\"\\u000a\"]",
            b"[\"\\u001F\"]",
            b"[01]",
            b"[1]\n",
            b"",
        ] {
            assert!(!is_canonical_json(bad), "{}", String::from_utf8_lossy(bad));
            assert!(
                komptroller_engine::ledger::from_canonical_json::<Value>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"{\"a\":1,\"b\":[true,false,null]}"[..],
            b"[1e+25]",
            b"[\"\\u001f\\n\"]",
            b"\"\xc3\xa9\"",
        ] {
            assert!(is_canonical_json(good), "{}", String::from_utf8_lossy(good));
            decoder_agrees(good).expect("agrees");
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        "[\\x00-\\x1f\"\\\\/\u{7f}\u{e9}\u{20ac}\u{1f600}a-z]{0,10}",
    ]
}

fn job_spec() -> impl Strategy<
    Value = (
        komptroller_engine::job::ModelSpec,
        komptroller_engine::job::AcceleratorSpec,
        u32,
        komptroller_engine::duration::GoDuration,
        i32,
    ),
> {
    use komptroller_engine::catalog::Precision;
    let number = prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(7e10),
        Just(1.5e13),
        Just(-0.0)
    ];
    (
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(number.clone()),
            proptest::option::of(number),
        ),
        (text(), proptest::sample::select(Precision::ALL.to_vec())),
        any::<u32>(),
        0u64..400_000_000_000,
        any::<i32>(),
    )
        .prop_map(
            |((name, base_model, parameters, tokens), (kind, precision), count, ms, priority)| {
                (
                    komptroller_engine::job::ModelSpec {
                        name,
                        base_model,
                        parameters,
                        tokens,
                    },
                    komptroller_engine::job::AcceleratorSpec { kind, precision },
                    count,
                    komptroller_engine::duration::GoDuration(std::time::Duration::from_millis(ms)),
                    priority,
                )
            },
        )
}

proptest! {
    /// The spec hash's direct writer gives exactly the bytes of the generic
    /// serializer (and of the reference crate) for the same tuple.
    #[test]
    fn a_job_spec_is_written_as_the_generic_serializer_writes_it(spec in job_spec()) {
        let (model, accelerator, count, max_duration, priority) = &spec;
        let direct = komptroller_engine::ledger::job_spec_canonical_json(
            model, accelerator, *count, *max_duration, *priority,
        )
        .unwrap();
        let generic = canonical_json(&(model, accelerator, count, max_duration, priority)).unwrap();
        prop_assert_eq!(&direct, &generic, "{}", String::from_utf8_lossy(&direct));
        let reference = reference_canonical_json(&(model, accelerator, count, max_duration, priority)).unwrap();
        prop_assert_eq!(direct, reference);
    }
}
