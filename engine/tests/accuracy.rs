//! Accuracy of the projection against Epoch AI's training runs
//! (`tests/data/training-runs.csv`, CC BY 4.0, see tests/data/README.md).
//!
//! Rows used: estimation method includes "Operation counting" (so the reported
//! compute does not itself come from a hardware × utilization guess), with
//! training hardware, hardware quantity and training time, and every listed
//! hardware in the catalog. Rows listing two hardware types (2 of them) use
//! the one with the fastest dense peak, so the ceiling stays a bound; the
//! other 64 list one type (the "64 rows").
//!
//! For each row a `JobRequest` is built (count = quantity, maxDuration =
//! hours) and `projection::project` is called:
//! - coverage: the adversarial ceiling (utilization 1.0 at the fastest dense
//!   precision) must cover the reported compute; a fine-tune whose figure
//!   includes its base model is covered when the base lineage (the base
//!   model's reported compute, looked up in the same file) is counted; a
//!   figure includes its base when it is at least the base's compute;
//! - expected: the job's precision is the `Numerical format` column when it
//!   names one the chip supports (the fastest of those), else komptroller's
//!   default for an undeclared job (bf16) when supported, else the chip's
//!   fastest dense precision; utilization is the catalog default, compared
//!   with Epoch AI's recommendation (0.3) on the same rows and precision.
//!
//! Run with `cargo test -p komptroller-engine --test accuracy -- --nocapture`
//! to see every row.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use komptroller_engine::GoDuration;
use komptroller_engine::catalog::{AcceleratorEntry, Catalog, Precision};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec};
use komptroller_engine::projection::{Projection, project};

const TRAINING_RUNS: &str = "tests/data/training-runs.csv";
/// Epoch AI's recommended utilization for language models when MFU is unknown.
const EPOCH_UTILIZATION: f64 = 0.3;

struct Row {
    model: String,
    hardware: Vec<String>,
    quantity: f64,
    hours: f64,
    reported: f64,
    format: String,
    base_models: Vec<String>,
}

struct Case {
    row: Row,
    entry: AcceleratorEntry,
    ours: Projection,
    epoch: Projection,
    /// Reported compute of the base models found in the file, when the row's
    /// reported figure includes it (reported >= base); else 0.
    base_compute: f64,
    missing_bases: Vec<String>,
}

fn field(rec: &csv::StringRecord, idx: &BTreeMap<String, usize>, name: &str) -> String {
    let i = idx
        .get(name)
        .unwrap_or_else(|| panic!("column {name:?} missing"));
    rec.get(*i).unwrap_or("").trim().to_string()
}

fn num(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0)
}

/// All rows, and every model's reported compute (for base-lineage lookups).
fn read_rows() -> (Vec<(Row, String)>, BTreeMap<String, f64>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TRAINING_RUNS);
    let mut rdr = csv::Reader::from_path(&path).expect("tests/data/training-runs.csv");
    let idx: BTreeMap<String, usize> = rdr
        .headers()
        .expect("header")
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_string(), i))
        .collect();
    let mut rows = Vec::new();
    let mut compute = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.expect("csv record");
        let model = field(&rec, &idx, "Model");
        let reported = num(&field(&rec, &idx, "Training compute (FLOP)"));
        if let Some(c) = reported {
            compute.insert(model.clone(), c);
        }
        let split = |s: String| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        rows.push((
            Row {
                model,
                hardware: split(field(&rec, &idx, "Training hardware")),
                quantity: num(&field(&rec, &idx, "Hardware quantity")).unwrap_or(0.0),
                hours: num(&field(&rec, &idx, "Training time (hours)")).unwrap_or(0.0),
                reported: reported.unwrap_or(0.0),
                format: field(&rec, &idx, "Numerical format"),
                base_models: split(field(&rec, &idx, "Base model")),
            },
            field(&rec, &idx, "Training compute estimation method"),
        ));
    }
    (rows, compute)
}

/// The precision a job on `entry` is projected at (see the module comment).
fn precision_for(entry: &AcceleratorEntry, format: &str) -> Precision {
    let declared = format
        .split(',')
        .filter_map(Precision::parse)
        .filter_map(|p| entry.peak(p).map(|r| (p, r.0)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(p, _)| p);
    declared
        .or_else(|| {
            entry
                .peak(Precision::default())
                .map(|_| Precision::default())
        })
        .or_else(|| entry.fastest().map(|(p, _)| p))
        .expect("every entry has a peak")
}

fn job(row: &Row, entry: &AcceleratorEntry, precision: Precision) -> JobRequest {
    JobRequest {
        id: JobId {
            namespace: "epoch".into(),
            name: row.model.clone(),
            uid: String::new(),
        },
        namespace_labels: Default::default(),
        model: ModelSpec::default(),
        accelerator: AcceleratorSpec {
            kind: entry.name.clone(),
            precision,
        },
        count: row.quantity.round() as u32,
        max_duration: GoDuration(Duration::from_secs_f64(row.hours * 3600.0)),
        priority: 0,
        submitter: None,
        spec_hash: String::new(),
    }
}

/// (cases, rows skipped because some hardware is not in the catalog)
fn cases() -> (Vec<Case>, Vec<String>) {
    let catalog = Catalog::builtin();
    let (rows, compute) = read_rows();
    let mut out = Vec::new();
    let mut not_in_catalog = Vec::new();
    for (row, method) in rows {
        if !method.contains("Operation counting")
            || row.hardware.is_empty()
            || row.quantity <= 0.0
            || row.hours <= 0.0
            || row.reported <= 0.0
        {
            continue;
        }
        let entries: Option<Vec<&AcceleratorEntry>> =
            row.hardware.iter().map(|h| catalog.get(h)).collect();
        let Some(entries) = entries else {
            not_in_catalog.push(format!("{} ({})", row.model, row.hardware.join(", ")));
            continue;
        };
        let entry = entries
            .into_iter()
            .max_by(|a, b| {
                let fa = a.fastest().map_or(0.0, |f| f.1.0);
                let fb = b.fastest().map_or(0.0, |f| f.1.0);
                fa.total_cmp(&fb)
            })
            .expect("at least one hardware")
            .clone();
        let precision = precision_for(&entry, &row.format);
        let j = job(&row, &entry, precision);
        let ours = project(&catalog, &j, None).expect("projection");
        let epoch = project(&catalog, &j, Some(EPOCH_UTILIZATION)).expect("projection");
        let (mut base_compute, mut missing_bases) = (0.0, Vec::new());
        for b in &row.base_models {
            match compute.get(b) {
                Some(c) => base_compute += c,
                None => missing_bases.push(b.clone()),
            }
        }
        // The figure includes the base only if it is at least the base's
        // own compute (UnifiedQA and IDEFICS report the fine-tune alone).
        if base_compute > row.reported {
            base_compute = 0.0;
        }
        out.push(Case {
            row,
            entry,
            ours,
            epoch,
            base_compute,
            missing_bases,
        });
    }
    (out, not_in_catalog)
}

fn log_err(estimate: f64, reported: f64) -> f64 {
    (estimate / reported).log10().abs()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn row_selection_is_stable() {
    let (cases, not_in_catalog) = cases();
    assert!(
        not_in_catalog.is_empty(),
        "hardware missing from the catalog: {not_in_catalog:?}"
    );
    let single = cases.iter().filter(|c| c.row.hardware.len() == 1).count();
    assert_eq!(
        cases.len(),
        66,
        "operation-counting rows with hardware, quantity and time"
    );
    assert_eq!(single, 64, "rows listing one hardware type");
}

#[test]
fn upper_bound_covers_reported_compute() {
    let (cases, _) = cases();
    let mut covered = 0usize;
    let mut misses = Vec::new();
    for c in &cases {
        let ceiling = c.ours.adversarial_ceiling.0;
        let reported = c.row.reported;
        assert!(
            ceiling >= c.ours.upper_bound.0,
            "{}: ceiling below upper bound",
            c.row.model
        );
        if ceiling >= reported {
            covered += 1;
        } else if c.base_compute > 0.0 && ceiling + c.base_compute >= reported {
            covered += 1;
            println!(
                "covered with lineage: {} (ceiling {:.2e} + base {} {:.2e} >= reported {:.2e})",
                c.row.model,
                ceiling,
                c.row.base_models.join(", "),
                c.base_compute,
                reported
            );
        } else {
            let reason = if !c.missing_bases.is_empty() {
                format!(
                    "fine-tune of {} whose reported figure includes the base model; the base's compute is not in the dataset, so the lineage cannot be counted here",
                    c.missing_bases.join(", ")
                )
            } else {
                format!(
                    "reported compute is {:.1}x what {} x {} could do in {} h at the fastest dense peak ({}): the listed hardware or time cannot have produced the reported figure (data inconsistency)",
                    reported / ceiling,
                    c.ours.count,
                    c.entry.name,
                    c.row.hours,
                    c.ours.ceiling_precision
                )
            };
            misses.push(format!(
                "MISS {}: ceiling {:.2e} < reported {:.2e}: {reason}",
                c.row.model, ceiling, reported
            ));
        }
    }
    for m in &misses {
        println!("{m}");
    }
    let share = covered as f64 / cases.len() as f64;
    println!(
        "coverage: {covered}/{} = {:.1}% of reported compute within the adversarial ceiling",
        cases.len(),
        share * 100.0
    );
    assert!(share >= 0.93, "coverage {share:.3} < 0.93");
    assert_eq!(misses.len(), cases.len() - covered);
}

#[test]
fn expected_estimate_beats_epoch_default() {
    let (cases, _) = cases();
    let two = 2f64.log10();
    let (mut ours, mut epoch) = (Vec::new(), Vec::new());
    println!(
        "{:<36} {:<28} {:>5} {:>5} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "model", "accelerator", "prec", "U", "reported", "expected", "epoch0.3", "ours/r", "ep/r"
    );
    for c in &cases {
        // A fine-tune's reported figure includes its base when the base is
        // known: compare lineage with lineage, for both estimates alike.
        let o = c.ours.expected.0 + c.base_compute;
        let e = c.epoch.expected.0 + c.base_compute;
        let r = c.row.reported;
        println!(
            "{:<36} {:<28} {:>5} {:>5.2} {:>10.2e} {:>10.2e} {:>10.2e} {:>7.2} {:>7.2}",
            c.row.model.chars().take(36).collect::<String>(),
            c.entry.name,
            c.ours.precision.as_str(),
            c.ours.utilization,
            r,
            o,
            e,
            o / r,
            e / r
        );
        ours.push(log_err(o, r));
        epoch.push(log_err(e, r));
    }
    let within =
        |v: &[f64]| v.iter().filter(|x| **x <= two + 1e-12).count() as f64 / v.len() as f64;
    let (ours_share, epoch_share) = (within(&ours), within(&epoch));
    let (ours_median, epoch_median) = (median(ours.clone()), median(epoch.clone()));
    println!(
        "expected, catalog default utilization: {:.1}% within 2x, median |log10 error| {:.3} ({} rows)",
        ours_share * 100.0,
        ours_median,
        ours.len()
    );
    println!(
        "expected, Epoch AI's 0.3 baseline:     {:.1}% within 2x, median |log10 error| {:.3}",
        epoch_share * 100.0,
        epoch_median
    );
    assert!(
        epoch_share >= 0.59,
        "baseline {epoch_share:.3}: row selection changed?"
    );
    assert!(ours_share >= 0.59, "ours {ours_share:.3} < 0.59");
    assert!(
        ours_share >= epoch_share,
        "ours {ours_share:.3} < Epoch baseline {epoch_share:.3}"
    );
    assert!(
        ours_median <= epoch_median,
        "median |log10 error| ours {ours_median:.3} > baseline {epoch_median:.3}"
    );
}
