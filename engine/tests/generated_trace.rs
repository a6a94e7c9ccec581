//! The trace generator is deterministic and its traces stream through the
//! simulator with every submission accounted for.

use komptroller_engine::catalog::Catalog;
use komptroller_engine::simulate::{
    SimulateOptions, generate_trace, read_jsonl_trace, simulate_stream,
};

fn trace(n: u64, seed: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    generate_trace(n, seed, &mut buf).unwrap();
    buf
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    assert_eq!(trace(500, 7), trace(500, 7));
    assert_ne!(trace(500, 7), trace(500, 8));
}

#[test]
fn generated_trace_streams_through_the_simulator() {
    let bytes = trace(3_000, 1);
    let (header, events) = read_jsonl_trace(std::io::Cursor::new(bytes), "generated").unwrap();
    assert_eq!(header.policies.len(), 2);
    let sim = simulate_stream(
        Catalog::builtin(),
        Vec::new(),
        &header,
        events,
        &SimulateOptions {
            timeline: false,
            records: true,
        },
    )
    .unwrap();
    let s = &sim.summary;
    assert_eq!(s.submissions, 3_000);
    // Every submission is admitted, rejected, or still waiting at the end.
    assert!(
        s.admitted + s.rejected + s.still_queued + s.awaiting_approval >= s.submissions - 10,
        "{s:?}"
    );
    assert!(s.admitted > 2_500, "most jobs fit: {s:?}");
    assert_eq!(s.ledger_records as usize, sim.records.len());
    let charged: f64 = s.lineages.values().map(|t| t.charged.0).sum();
    assert!(charged > 0.0);
}

/// A run that keeps no ledger records (`--summary-only`, the benchmark)
/// counts exactly the records a run that keeps them writes, and decides the
/// same.
#[test]
fn a_run_without_records_counts_the_same_records_and_decides_the_same() {
    let run = |records: bool| {
        let (header, events) =
            read_jsonl_trace(std::io::Cursor::new(trace(3_000, 2)), "generated").unwrap();
        simulate_stream(
            Catalog::builtin(),
            Vec::new(),
            &header,
            events,
            &SimulateOptions {
                timeline: false,
                records,
            },
        )
        .unwrap()
    };
    let (kept, counted) = (run(true), run(false));
    assert!(counted.records.is_empty());
    assert_eq!(kept.records.len() as u64, counted.summary.ledger_records);
    assert_eq!(
        serde_json::to_string(&kept.summary).unwrap(),
        serde_json::to_string(&counted.summary).unwrap()
    );
}

/// A line that does not parse ends the stream with an error naming it,
/// though the events are read ahead on another thread.
#[test]
fn a_bad_line_is_reported_with_its_number() {
    let text = concat!(
        r#"{"start":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"at":"1h","removePolicy":"x"}"#,
        "\n",
        "\n",
        r#"{"at":"2h","removePolicy":}"#,
        "\n",
        r#"{"at":"3h","removePolicy":"y"}"#,
        "\n"
    );
    let (_, events) =
        read_jsonl_trace(std::io::Cursor::new(text.as_bytes().to_vec()), "t.jsonl").unwrap();
    let items: Vec<_> = events.collect();
    assert_eq!(items.len(), 2, "reading stops at the bad line");
    assert!(items[0].is_ok());
    let err = items[1].as_ref().unwrap_err();
    assert!(err.starts_with("t.jsonl: line 4:"), "{err}");
}

#[test]
fn out_of_order_streams_are_refused_naming_the_event() {
    let text = concat!(
        r#"{"start":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"at":"2h","removePolicy":"x"}"#,
        "\n",
        r#"{"at":"1h","removePolicy":"y"}"#,
        "\n"
    );
    let (header, events) =
        read_jsonl_trace(std::io::Cursor::new(text.as_bytes().to_vec()), "t").unwrap();
    let err = simulate_stream(
        Catalog::builtin(),
        Vec::new(),
        &header,
        events,
        &SimulateOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.contains("events[1].at") && err.contains("time order"),
        "{err}"
    );
}
