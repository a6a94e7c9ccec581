//! The offline commands, run as a user runs them: exit codes and messages.

use std::process::Command;

fn komptroller(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_komptroller"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run komptroller");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn simulate_with_no_arguments_replays_the_bundled_quarter() {
    let (code, out, err) = komptroller(&["simulate"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "TIMELINE",
        "QUEUE WAITS",
        "LINEAGE TOTALS",
        "THRESHOLD CROSSINGS",
        "atlas crossed eu-systemic-risk",
        "notify under EU AI Act Art. 52(1)",
        "Awaiting approval",
        "cannot approve it (separation of duties)",
        "Queued: namespace research has used",
        "Queued: cluster runs 3072 of its 3072 accelerators",
        "Rejected:",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn simulate_json_is_machine_readable() {
    let (code, out, err) = komptroller(&["simulate", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["submissions"], 16);
    assert!(
        v["summary"]["lineages"]["atlas"]["charged"]
            .as_f64()
            .unwrap()
            > 1e25
    );
}

#[test]
fn project_names_every_figure_in_json() {
    let (code, out, err) = komptroller(&[
        "project",
        "-f",
        "examples/trainingjob.yaml",
        "--policy",
        "operator/assets/default-policy.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["projection"];
    assert_eq!(p["count"], 32);
    let rate = p["rate"].as_f64().unwrap();
    assert!((rate - 32.0 * 989e12).abs() < 1.0);
    assert!((p["upperBound"].as_f64().unwrap() - rate * 72.0 * 3600.0).abs() < 1e6);
    assert!(p["adversarialCeiling"].as_f64().unwrap() > p["upperBound"].as_f64().unwrap());
    assert!(p["expected"].as_f64().unwrap() < p["upperBound"].as_f64().unwrap());
    assert_eq!(p["opcount"].as_f64().unwrap(), 6.0 * 7.0e10 * 1.0e10);
    assert_eq!(v["decision"]["verdict"], "Admit");
}

#[test]
fn project_text_explains_the_decision() {
    let (code, out, _) = komptroller(&["project", "-f", "examples/trainingjob.yaml"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("upper bound") && out.contains("verdict: Admit"),
        "{out}"
    );
}

#[test]
fn unknown_accelerator_names_the_closest_keys_and_exits_2() {
    let (code, _, err) = komptroller(&[
        "project",
        "-f",
        "operator/tests/fixtures/unknown-accelerator.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("spec.accelerator.type") && err.contains("nvidia-h100-sxm"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn malformed_duration_shows_the_accepted_syntax() {
    let (code, _, err) =
        komptroller(&["project", "-f", "operator/tests/fixtures/bad-duration.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("3 days") && err.contains("72h30m"), "{err}");
}

#[test]
fn yaml_errors_carry_line_and_column() {
    let (code, _, err) = komptroller(&["project", "-f", "operator/tests/fixtures/bad-yaml.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("line") && err.contains("column"), "{err}");
}

#[test]
fn limits_on_another_vendors_resource_are_refused() {
    let (code, _, err) = komptroller(&[
        "project",
        "-f",
        "operator/tests/fixtures/wrong-resource.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("amd.com/gpu") && err.contains("nvidia.com/gpu"),
        "{err}"
    );
}

#[test]
fn inconsistent_policies_name_the_field() {
    let (code, _, err) = komptroller(&[
        "project",
        "-f",
        "examples/trainingjob.yaml",
        "--policy",
        "operator/tests/fixtures/unsorted-tiers.yaml",
    ]);
    assert_eq!(code, 2);
    for needle in [
        "spec.tiers[1].threshold",
        "spec.budgets[0].window",
        "spec.budgets[0].limit",
    ] {
        assert!(err.contains(needle), "missing {needle}: {err}");
    }
}

#[test]
fn a_file_that_is_no_manifest_says_what_a_manifest_is() {
    let (code, out, err) = komptroller(&["project", "-f", "operator/tests/fixtures/colons.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "", "nothing is written on bad input");
    assert_eq!(
        err,
        "error: operator/tests/fixtures/colons.yaml: not a TrainingJob manifest: expected a mapping of \
         apiVersion (komptroller.dev/v1alpha1), kind (TrainingJob), metadata and spec; \
         found a key that is not a field name at line 1, column 1\n"
    );
}

#[test]
fn every_problem_of_a_manifest_is_listed_once() {
    let (code, out, err) = komptroller(&[
        "project",
        "-f",
        "operator/tests/fixtures/three-problems.yaml",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "", "nothing is written on bad input");
    assert_eq!(
        err,
        "error: operator/tests/fixtures/three-problems.yaml: 3 problems:\n  \
         * spec.accelerator.precision \"fp9\": unknown precision; use one of fp64, fp32, tf32, fp16, bf16, fp8, fp4\n  \
         * spec.maxDuration \"-1h\": cannot be negative; use a Go duration such as 72h\n  \
         * spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"] \"eight\": \
         is not a whole number of devices; write a count such as 8\n"
    );
    assert_eq!(err.matches("error").count(), 1, "{err}");
}

#[test]
fn a_good_manifest_projects_the_same_numbers() {
    let (code, out, err) =
        komptroller(&["project", "-f", "examples/trainingjob.yaml", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The spec hash the controller shows as status.specHash for this
    // manifest (`nvidia.com/gpu: 8` read as the quantity "8"), which an
    // approval binds to; before the one spec hash, `project` printed the
    // hash of the limit as written (8b1a93e6…), which no approval matched.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/trainingjob.yaml"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let controller = komptroller::crd::TrainingJobSpec::spec_hash_of(&doc["spec"]).unwrap();
    assert_eq!(v["specHash"], controller.as_str());
    assert_eq!(
        v["specHash"],
        "3fecdb33b4027b1b1b6c718918d82a3dfa60ddfff3bf5341b40af387c4eac59d"
    );
    // The figures `komptroller project` gave before the conversion moved
    // into the engine's one reading of a spec.
    assert_eq!(v["accelerators"], 32);
    let p = &v["projection"];
    assert_eq!(p["accelerator"], "nvidia-h100-sxm");
    assert_eq!(p["precision"], "bf16");
    assert_eq!(p["count"], 32);
    assert_eq!(p["maxDuration"], 259200.0);
    assert_eq!(p["acceleratorSeconds"], 8294400.0);
    assert_eq!(p["rate"], 3.1648e16);
    assert_eq!(p["upperBound"], 8.2031616e21);
    assert_eq!(p["expected"], 3.28126464e21);
    assert_eq!(p["adversarialCeiling"], 1.64146176e22);
    assert_eq!(p["opcount"], 4.2e21);
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = komptroller(&["project", "-f", "does/not/exist.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("does/not/exist.yaml"), "{err}");
}

#[test]
fn simulate_out_writes_the_books_and_verify_accepts_them() {
    let dir = std::env::temp_dir().join(format!("komptroller-sim-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (code, out, err) = komptroller(&["simulate", "--out", d]);
    assert_eq!(code, 0, "{err}");
    for f in [
        "ledger.jsonl",
        "report.json",
        "report.csv",
        "report.md",
        "openreport.yaml",
        "signing-key.pem",
        "public-key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
        assert!(
            out.contains(&dir.join(f).display().to_string()),
            "{f} path not printed: {out}"
        );
    }
    let (code, out, err) = komptroller(&[
        "verify",
        "--report",
        &format!("{d}/report.json"),
        "--key",
        &format!("{d}/public-key.pem"),
        "--ledger",
        &format!("{d}/ledger.jsonl"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let ledger = std::fs::read_to_string(dir.join("ledger.jsonl")).unwrap();
    assert_eq!(
        ledger.lines().count(),
        55,
        "one entry per engine record of the bundled quarter"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--summary-only` keeps no timeline, records or reasons, yet its summary
/// counts what a full run counts, and it says per-job waits were not kept
/// instead of claiming no job waited.
#[test]
fn simulate_summary_only_counts_what_a_full_run_counts() {
    let dir = std::env::temp_dir().join(format!("komptroller-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl");
    let trace = trace.to_str().unwrap();
    let (code, _, err) = komptroller(&["gen-trace", "--submissions", "2000", "-o", trace]);
    assert_eq!(code, 0, "{err}");
    let (code, full, err) = komptroller(&["simulate", "--trace", trace]);
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = komptroller(&["simulate", "--trace", trace, "--summary-only"]);
    assert_eq!(code, 0, "{err}");
    let counts = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("2000 submissions,"))
            .map(str::to_string)
    };
    assert!(counts(&full).is_some(), "{full}");
    assert_eq!(counts(&full), counts(&summary));
    assert!(
        summary.contains("per-job waits not kept (summary only)"),
        "{summary}"
    );
    assert!(!summary.contains("no job waited"), "{summary}");
    assert!(!full.contains("per-job waits not kept"), "{full}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn project_reads_a_kueue_job_as_its_workload() {
    let (code, out, err) = komptroller(&["project", "-f", "examples/kueue-job.yaml", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["accelerators"], 32, "parallelism 4 × 8 GPUs");
    assert_eq!(v["job"]["name"], "job.batch/atlas-sft");
    assert_eq!(v["projection"]["maxDuration"], 86400.0);
    assert_eq!(v["projection"]["accelerator"], "nvidia-h100-sxm");
    let (code, out, _) = komptroller(&["project", "-f", "examples/kueue-job.yaml"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("Job (Kueue) ml-research/job.batch/atlas-sft"),
        "{out}"
    );
}
