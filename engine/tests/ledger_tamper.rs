//! Tamper evidence over generated ledgers: every single-byte change to any
//! entry or report, any reordering, deletion or insertion of entries, a
//! report signed by another key and a previous report that does not match
//! are all detected by the verifier.

use komptroller_engine::ledger::{
    EventFacts, Ledger, LedgerEntry, RecordFacts, sample::sample_records, verify_jsonl,
    verify_jsonl_facts, write_jsonl,
};
use komptroller_engine::policy::Policy;
use komptroller_engine::report::{
    FailureClass, NamedInput, Period, SignedReport, VerifyFailure, VerifyRequest, build_report,
    verify_report,
};
use komptroller_engine::signing::{Ed25519SigningKey, public_key_pem, signing_key_from_seed};
use proptest::prelude::*;

fn policies() -> Vec<Policy> {
    let yaml = r#"
- name: eu-ai-act
  spec:
    tiers:
      - name: gpai
        threshold: 1e22
        action: Admit
        reporting: {regulation: "EU AI Act Art. 53", notifyWithin: 14d}
      - name: systemic
        threshold: 1e24
        action: Escalate
        reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 336h}
"#;
    serde_saphyr::from_str(yaml).expect("policies")
}

struct Case {
    key: Ed25519SigningKey,
    entries: Vec<LedgerEntry>,
    ledger: Vec<u8>,
    report: SignedReport,
    report_bytes: Vec<u8>,
    pem: String,
}

fn case(n: usize, seed: u64) -> Case {
    let key = signing_key_from_seed(&[seed as u8; 32]);
    let mut l = Ledger::new();
    for r in sample_records(n, seed, "2026-02-01T00:00:00Z".parse().expect("time")) {
        l.append(r).expect("append");
    }
    let entries = l.into_entries();
    let mut ledger = Vec::new();
    write_jsonl(&entries, &mut ledger).expect("write");
    let report = build_report(&entries, &policies(), Period::covering(&entries), None)
        .expect("build")
        .sign(&key)
        .expect("sign");
    let report_bytes = report.canonical_bytes().expect("bytes");
    let pem = public_key_pem(&key.verifying_key()).expect("pem");
    Case {
        key,
        entries,
        ledger,
        report,
        report_bytes,
        pem,
    }
}

fn check(
    c: &Case,
    report: &[u8],
    ledger: &[u8],
    previous: Option<&[u8]>,
) -> Result<(), VerifyFailure> {
    verify_report(&VerifyRequest {
        report: NamedInput {
            name: "report.json",
            bytes: report,
        },
        public_keys: &[NamedInput {
            name: "public-key.pem",
            bytes: c.pem.as_bytes(),
        }],
        ledger: Some(NamedInput {
            name: "ledger.jsonl",
            bytes: ledger,
        }),
        previous: previous.map(|b| NamedInput {
            name: "previous.json",
            bytes: b,
        }),
        entry: None,
        allow_longer_ledger: false,
    })
    .map(|_| ())
}

fn jsonl(entries: &[LedgerEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    write_jsonl(entries, &mut out).expect("write");
    out
}

#[test]
fn an_untouched_ledger_and_report_verify() {
    for seed in 0..5 {
        let c = case(30 + seed as usize, seed);
        check(&c, &c.report_bytes, &c.ledger, None).expect("verifies");
        assert!(!c.report.report.threshold_crossings.is_empty());
    }
}

/// Exhaustive over a small ledger: every byte position, several replacement
/// values (~25,000 verifications; Ed25519 in an unoptimized build makes that
/// minutes, so debug builds run it only with `--ignored`).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "exhaustive; run with `cargo test --release` (or --ignored)"
)]
fn every_single_byte_change_anywhere_is_detected() {
    let c = case(6, 3);
    let replacements = |b: u8| [b ^ 0x01, b ^ 0x20, b'0', b' ', b'\n', b'"', b'}', 0x80];
    let mut tried = 0;
    for i in 0..c.ledger.len() {
        for r in replacements(c.ledger[i]) {
            if r == c.ledger[i] {
                continue;
            }
            let mut l = c.ledger.clone();
            l[i] = r;
            tried += 1;
            assert!(
                check(&c, &c.report_bytes, &l, None).is_err(),
                "ledger byte {i} changed from {:?} to {:?} went undetected",
                c.ledger[i] as char,
                r as char
            );
        }
    }
    for i in 0..c.report_bytes.len() {
        for r in replacements(c.report_bytes[i]) {
            if r == c.report_bytes[i] {
                continue;
            }
            let mut b = c.report_bytes.clone();
            b[i] = r;
            tried += 1;
            assert!(
                check(&c, &b, &c.ledger, None).is_err(),
                "report byte {i} changed from {:?} to {:?} went undetected",
                c.report_bytes[i] as char,
                r as char
            );
        }
    }
    assert!(tried > 20_000, "only {tried} mutations tried");
}

/// Fewer cases in unoptimized builds, where each verification is ~50× slower.
const CASES: u32 = if cfg!(debug_assertions) { 12 } else { 64 };

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_byte_change_to_the_ledger_is_detected(
        n in 1usize..40, seed in any::<u64>(), pos in any::<prop::sample::Index>(), byte in any::<u8>(),
    ) {
        let c = case(n, seed);
        let i = pos.index(c.ledger.len());
        prop_assume!(c.ledger[i] != byte);
        let mut l = c.ledger.clone();
        l[i] = byte;
        prop_assert!(check(&c, &c.report_bytes, &l, None).is_err());
    }

    #[test]
    fn any_byte_change_to_the_report_is_detected(
        n in 1usize..40, seed in any::<u64>(), pos in any::<prop::sample::Index>(), byte in any::<u8>(),
    ) {
        let c = case(n, seed);
        let i = pos.index(c.report_bytes.len());
        prop_assume!(c.report_bytes[i] != byte);
        let mut b = c.report_bytes.clone();
        b[i] = byte;
        let err = check(&c, &b, &c.ledger, None).expect_err("detected");
        prop_assert!(matches!(err.class, FailureClass::Input | FailureClass::Signature), "{:?}", err);
    }

    #[test]
    fn reordering_deleting_or_inserting_entries_is_detected(
        n in 2usize..40, seed in any::<u64>(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
        op in 0u8..5,
    ) {
        let c = case(n, seed);
        let mut e = c.entries.clone();
        let (i, j) = (a.index(n), b.index(n));
        match op {
            // Swap two entries.
            0 => { prop_assume!(i != j); e.swap(i, j); }
            // Delete one.
            1 => { e.remove(i); }
            // Duplicate one.
            2 => { let x = e[i].clone(); e.insert(j, x); }
            // Delete one and re-chain everything after it (a forger without the signing key).
            3 => {
                e.remove(i);
                let mut l = Ledger::new();
                for x in e.drain(..) { l.append(x.record).expect("append"); }
                e = l.into_entries();
            }
            // Insert a forged entry, re-chained from there on.
            _ => {
                let mut forged = e[i].record.clone();
                forged.actor = "mallory".into();
                e.insert(j, LedgerEntry { seq: 0, prev_hash: Default::default(), hash: Default::default(), record: forged });
                let mut l = Ledger::new();
                for x in e.drain(..) { l.append(x.record).expect("append"); }
                e = l.into_entries();
            }
        }
        let err = check(&c, &c.report_bytes, &jsonl(&e), None).expect_err("detected");
        // Removing the last entry leaves an intact but shorter chain, which
        // no longer matches the signed size, head hash and root.
        let want = if op >= 3 || (op == 1 && i == n - 1) {
            FailureClass::LedgerMismatch
        } else {
            FailureClass::Chain
        };
        prop_assert_eq!(err.class, want, "{}", err.message);
    }

    #[test]
    fn a_report_signed_by_another_key_is_detected(n in 1usize..30, seed in any::<u64>(), other in any::<[u8; 32]>()) {
        let c = case(n, seed);
        let k2 = signing_key_from_seed(&other);
        prop_assume!(k2.verifying_key() != c.key.verifying_key());
        let forged = c.report.report.clone().sign(&k2).expect("sign");
        let err = check(&c, &forged.canonical_bytes().expect("bytes"), &c.ledger, None).expect_err("detected");
        prop_assert_eq!(err.class, FailureClass::Signature);
        // Even with the key id rewritten to ours, the signature does not hold.
        let mut relabelled = forged.clone();
        relabelled.key_id = c.report.key_id;
        let err = check(&c, &relabelled.canonical_bytes().expect("bytes"), &c.ledger, None).expect_err("detected");
        prop_assert_eq!(err.class, FailureClass::Signature);
    }

    #[test]
    fn a_previous_report_that_does_not_match_is_detected(n in 4usize..40, seed in any::<u64>(), cut in any::<prop::sample::Index>()) {
        let c = case(n, seed);
        let m = 1 + cut.index(n - 2);
        let first = &c.entries[..m];
        let prev = build_report(first, &policies(), Period::covering(first), None).expect("build").sign(&c.key).expect("sign");
        let next = build_report(&c.entries, &policies(), Period::covering(&c.entries[m..]), Some(&prev))
            .expect("build").sign(&c.key).expect("sign");
        let next_bytes = next.canonical_bytes().expect("bytes");
        let prev_bytes = prev.canonical_bytes().expect("bytes");
        check(&c, &next_bytes, &c.ledger, Some(&prev_bytes)).expect("the true predecessor verifies");
        // A different (validly signed) predecessor: one entry shorter or longer.
        let other_m = if m > 1 { m - 1 } else { m + 1 };
        let other_entries = &c.entries[..other_m];
        let other = build_report(other_entries, &policies(), Period::covering(other_entries), None)
            .expect("build").sign(&c.key).expect("sign");
        let err = check(&c, &next_bytes, &c.ledger, Some(&other.canonical_bytes().expect("bytes"))).expect_err("detected");
        prop_assert_eq!(err.class, FailureClass::Previous, "{}", err.message);
        // A predecessor over a rewritten history with the same size.
        let mut l = Ledger::new();
        for (k, x) in c.entries[..m].iter().enumerate() {
            let mut r = x.record.clone();
            if k == 0 { r.actor.push('!'); }
            l.append(r).expect("append");
        }
        let rewritten = build_report(l.entries(), &policies(), Period::covering(l.entries()), None)
            .expect("build").sign(&c.key).expect("sign");
        let err = check(&c, &next_bytes, &c.ledger, Some(&rewritten.canonical_bytes().expect("bytes"))).expect_err("detected");
        prop_assert_eq!(err.class, FailureClass::Previous, "{}", err.message);
    }
}

fn check_keys(
    report: &[u8],
    keys: &[(&str, &[u8])],
    ledger: &[u8],
    previous: Option<&[u8]>,
) -> Result<String, VerifyFailure> {
    let inputs: Vec<NamedInput<'_>> = keys
        .iter()
        .map(|(name, bytes)| NamedInput { name, bytes })
        .collect();
    verify_report(&VerifyRequest {
        report: NamedInput {
            name: "report.json",
            bytes: report,
        },
        public_keys: &inputs,
        ledger: Some(NamedInput {
            name: "ledger.jsonl",
            bytes: ledger,
        }),
        previous: previous.map(|b| NamedInput {
            name: "previous.json",
            bytes: b,
        }),
        entry: None,
        allow_longer_ledger: false,
    })
    .map(|v| v.checks.join("\n"))
}

/// Key rotation: the report's keyId selects among several given keys (as
/// separate files or one PEM bundle); a predecessor signed by the old key
/// verifies beside a report signed by the new one; a report signed by none
/// of the keys fails naming its key id.
#[test]
fn key_rotation_selects_the_key_by_key_id() {
    let c = case(20, 4);
    let old = c.pem.clone();
    let new_key = signing_key_from_seed(&[201; 32]);
    let new = public_key_pem(&new_key.verifying_key()).expect("pem");
    let stranger = signing_key_from_seed(&[202; 32]);
    let m = 8;
    let prev = build_report(
        &c.entries[..m],
        &policies(),
        Period::covering(&c.entries[..m]),
        None,
    )
    .expect("build")
    .sign(&c.key)
    .expect("sign");
    let next = build_report(
        &c.entries,
        &policies(),
        Period::covering(&c.entries[m..]),
        Some(&prev),
    )
    .expect("build")
    .sign(&new_key)
    .expect("sign");
    let (prev_b, next_b) = (
        prev.canonical_bytes().expect("bytes"),
        next.canonical_bytes().expect("bytes"),
    );
    let two = [("old.pem", old.as_bytes()), ("new.pem", new.as_bytes())];
    let checks = check_keys(&next_b, &two, &c.ledger, Some(&prev_b)).expect("rotation verifies");
    assert!(
        checks.contains(&next.key_id.to_hex()) && checks.contains("new.pem"),
        "{checks}"
    );
    assert!(checks.contains(&prev.key_id.to_hex()), "{checks}");
    // The same two keys as one bundle, in the other order.
    let bundle = format!("{new}\n{old}");
    check_keys(
        &next_b,
        &[("keys.pem", bundle.as_bytes())],
        &c.ledger,
        Some(&prev_b),
    )
    .expect("bundle verifies");
    // Only the new key: the predecessor's signature cannot be checked.
    let err = check_keys(
        &next_b,
        &[("new.pem", new.as_bytes())],
        &c.ledger,
        Some(&prev_b),
    )
    .expect_err("old key missing");
    assert_eq!(err.class, FailureClass::Previous, "{}", err.message);
    // Signed by a key that is none of the given ones.
    let forged = next.report.clone().sign(&stranger).expect("sign");
    let err = check_keys(
        &forged.canonical_bytes().expect("bytes"),
        &two,
        &c.ledger,
        None,
    )
    .expect_err("unknown key");
    assert_eq!(err.class, FailureClass::Signature, "{}", err.message);
    assert!(
        err.message.contains(&forged.key_id.to_hex())
            && err.message.contains("none of the 2 given keys"),
        "{}",
        err.message
    );
    // A relabelled key id still needs the right signature.
    let mut relabelled = forged;
    relabelled.key_id = next.key_id;
    let err = check_keys(
        &relabelled.canonical_bytes().expect("bytes"),
        &two,
        &c.ledger,
        None,
    )
    .expect_err("relabelled");
    assert_eq!(err.class, FailureClass::Signature, "{}", err.message);
    // A private key inside a bundle is refused as bad input.
    let private = komptroller_engine::signing::private_key_pem(&c.key).expect("pem");
    let mixed = format!("{new}\n{private}");
    let err = check_keys(&next_b, &[("mixed.pem", mixed.as_bytes())], &c.ledger, None)
        .expect_err("private");
    assert_eq!(err.class, FailureClass::Input, "{}", err.message);
}

/// The verifier's in-place path (no typed entries, several threads) against
/// the typed one: the same entries, or the same first error, word for word.
fn in_place_agrees_with_typed(ledger: &[u8], threads: usize) -> Result<(), TestCaseError> {
    let mut seen = Vec::new();
    let in_place = verify_jsonl_facts(ledger, threads, |e| {
        seen.push((e.seq, e.hash, facts_summary(&e.facts)))
    });
    match verify_jsonl(ledger) {
        Ok(entries) => {
            prop_assert_eq!(in_place, Ok(entries.len() as u64));
            let typed: Vec<_> = entries
                .iter()
                .map(|e| (e.seq, e.hash, facts_summary(&RecordFacts::of(&e.record))))
                .collect();
            prop_assert_eq!(seen, typed);
        }
        Err(e) => prop_assert_eq!(in_place.map_err(|e| e.to_string()), Err(e.to_string())),
    }
    Ok(())
}

/// Everything totals and reports read from a record, in one comparable
/// value (the in-place path borrows lists the typed one owns).
fn facts_summary(f: &RecordFacts<'_>) -> String {
    let event = match f.event {
        EventFacts::Decided {
            verdict,
            policy,
            tier,
            charged,
            charged_lineages,
            selected_by,
        } => format!(
            "Decided {verdict:?} {policy:?} {tier:?} {charged:?} {:?} {:?}",
            charged_lineages.iter().collect::<Vec<_>>(),
            selected_by.map(|l| l.iter().collect::<Vec<_>>())
        ),
        EventFacts::Metered {
            consumed,
            accelerator_seconds,
        } => format!("Metered {consumed:?} {accelerator_seconds:?}"),
        EventFacts::Other => "Other".into(),
    };
    format!(
        "{} {:?} {:?} {:?} {:?} {event}",
        f.time, f.job, f.lineage, f.base_lineage, f.accelerator
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES * 4))]

    #[test]
    fn the_in_place_check_names_the_same_first_error_as_the_typed_one(
        n in 1usize..40, seed in any::<u64>(), pos in any::<prop::sample::Index>(), byte in any::<u8>(),
    ) {
        let c = case(n, seed);
        in_place_agrees_with_typed(&c.ledger, 1)?;
        let i = pos.index(c.ledger.len());
        let mut l = c.ledger.clone();
        l[i] = byte;
        in_place_agrees_with_typed(&l, 1)?;
    }
}

/// A ledger of several chunks checked on several threads: the result and
/// the first error in file order do not depend on the number of threads,
/// and the report verifies.
#[test]
fn several_threads_give_the_same_result_and_first_error() {
    let c = case(9_500, 11);
    check(&c, &c.report_bytes, &c.ledger, None).expect("verifies");
    for threads in [1, 2, 3, 8] {
        in_place_agrees_with_typed(&c.ledger, threads).expect("agrees");
    }
    let lines: Vec<&[u8]> = c.ledger.split(|&b| b == b'\n').collect();
    let offset = |line: usize| lines[..line].iter().map(|l| l.len() + 1).sum::<usize>();
    // Two breaks, in different chunks: the first in file order is named.
    let mut l = c.ledger.clone();
    l[offset(9_000) + 30] ^= 0x01;
    l[offset(5_000) + 30] ^= 0x01;
    for threads in [1, 2, 3, 8] {
        in_place_agrees_with_typed(&l, threads).expect("agrees");
        let err = verify_jsonl_facts(&l, threads, |_| {}).expect_err("broken");
        assert_eq!(err.line(), 5_001, "{err}");
    }
    let err = check(&c, &c.report_bytes, &l, None).expect_err("broken");
    assert!(
        matches!(err.class, FailureClass::Chain | FailureClass::Input),
        "{err:?}"
    );
    assert!(err.message.contains("line 5001"), "{}", err.message);
}
