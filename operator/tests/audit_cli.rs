//! `komptroller audit` through the real binary, on clusters built by
//! `komptroller simulate --out DIR --report-every 1d` from traces written
//! here, each signed with its own key from `komptroller keygen`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_komptroller"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run komptroller")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const POLICY: &str = r#"apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: eu-ai-act}
spec:
  tiers:
    - name: eu-systemic-risk
      threshold: 1e25
      action: Admit
      reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
"#;

const CLUSTERS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// The audit time: the day after the last cluster's last report.
const AT: &str = "2026-02-09T12:00:00Z";

struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Lab {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn books_args(&self) -> Vec<String> {
        CLUSTERS
            .iter()
            .flat_map(|c| {
                [
                    "--books".to_string(),
                    format!("{c}={}", self.path(&format!("books/{c}")).display()),
                ]
            })
            .collect()
    }

    fn audit(&self, extra: &[&str]) -> Output {
        self.audit_at(AT, extra)
    }

    fn audit_at(&self, at: &str, extra: &[&str]) -> Output {
        run(bin()
            .arg("audit")
            .arg("--trust")
            .arg(self.path("trust.yaml"))
            .args(self.books_args())
            .args(["--at", at])
            .args(extra))
    }
}

fn keygen(dir: &Path) {
    let o = run(bin().args(["keygen", "--out"]).arg(dir));
    assert_eq!(code(&o), 0, "keygen: {}", text(&o));
}

/// Each cluster runs `frontier` on 2048 H100s for `days` days (34 d ≈ 5.95e24
/// FLOP) and a small `notes` model, and signs a report every day.
fn lab(days: u32) -> Lab {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("policy.yaml"), POLICY).expect("policy");
    let mut trust = String::from("clusters:\n");
    for c in CLUSTERS {
        let trace = format!(
            "start: 2026-01-05T00:00:00Z
namespaces: {{lab: {{team: lab}}}}
events:
  - at: 1h
    submit: {{name: {c}-frontier, namespace: lab, submitter: ana, groups: [lab], model: {{name: frontier}},
             accelerator: {{type: nvidia-h100-sxm}}, count: 2048, maxDuration: {days}d, runtime: {days}d}}
  - at: 2h
    submit: {{name: {c}-notes, namespace: lab, submitter: ana, groups: [lab], model: {{name: notes}},
             accelerator: {{type: nvidia-h100-sxm}}, count: 64, maxDuration: 2d, runtime: 2d}}
"
        );
        std::fs::write(dir.join(format!("trace-{c}.yaml")), trace).expect("trace");
        keygen(&dir.join(format!("keys/{c}")));
        let o = run(bin()
            .arg("simulate")
            .arg("--trace")
            .arg(dir.join(format!("trace-{c}.yaml")))
            .arg("--policy")
            .arg(dir.join("policy.yaml"))
            .arg("--out")
            .arg(dir.join(format!("books/{c}")))
            .arg("--key")
            .arg(dir.join(format!("keys/{c}/signing-key.pem")))
            .args(["--report-every", "1d"]));
        assert_eq!(code(&o), 0, "simulate {c}: {}", text(&o));
        trust.push_str(&format!(
            "  - {{name: {c}, reportEvery: 1d, keys: [keys/{c}/public-key.pem]}}\n"
        ));
    }
    std::fs::write(dir.join("trust.yaml"), trust).expect("trust");
    Lab { _tmp: tmp, dir }
}

fn reports_of(lab: &Lab, cluster: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(lab.path(&format!("books/{cluster}/reports")))
        .expect("reports dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn the_split_lineage_is_found_in_text_and_json_and_exits_1() {
    let lab = lab(34);
    assert_eq!(reports_of(&lab, "eu-west").len(), 35);
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("3 verified, 0 failed"), "{out}");
    assert!(
        out.contains("lineage frontier: the union of 3 clusters crossed 1e25 FLOP (EU AI Act Art. 52(1)) at 2026-01-05T01:00:00Z"),
        "{out}"
    );
    assert!(out.contains("notify by 2026-01-19T01:00:00Z"), "{out}");

    let o = lab.audit(&["-o", "json"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json on stdout");
    assert_eq!(v["summary"]["exitCode"], 1);
    assert_eq!(v["summary"]["unionCrossings"], 1);
    let finding = &v["findings"][0]["detail"];
    assert_eq!(finding["kind"], "unionCrossing");
    let crossing = &finding["crossing"];
    assert_eq!(crossing["lineage"], "frontier");
    // Plain numbers, not strings.
    assert_eq!(crossing["threshold"].as_f64(), Some(1e25));
    let at_crossing = crossing["chargedAtCrossing"].as_f64().expect("number");
    assert!(at_crossing > 1e25 && at_crossing < 1.2e25, "{at_crossing}");
    // The small lineage is under every threshold in the union: listed, not found.
    let notes = v["lineages"]
        .as_array()
        .expect("lineages")
        .iter()
        .find(|l| l["lineage"] == "notes")
        .expect("notes merged");
    assert!(notes["total"]["charged"].as_f64().expect("number") < 1e25);
    assert!(notes.get("crossings").is_none());
}

#[test]
fn a_lineage_under_the_threshold_in_the_union_exits_0() {
    // 3 × 2048 H100 × 10 d ≈ 5.25e24 < 1e25.
    let lab = lab(10);
    let o = lab.audit_at("2026-01-16T12:00:00Z", &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("0 findings"), "{}", text(&o));
}

#[test]
fn a_tampered_ledger_byte_exits_3_naming_the_cluster() {
    let lab = lab(34);
    let path = lab.path("books/us-east/ledger.jsonl");
    let mut bytes = std::fs::read(&path).expect("ledger");
    // The first digit of the first admission's charged FLOP.
    let at = bytes
        .windows(10)
        .position(|w| w == b"\"charged\":")
        .expect("a charge")
        + 10;
    assert!(bytes[at].is_ascii_digit());
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, bytes).expect("write");
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("FAIL  us-east: ledger chain: cluster us-east:"),
        "{out}"
    );
    assert!(out.contains("seq"), "{out}");
    assert!(
        out.contains("ok    eu-west") && out.contains("ok    ap-south"),
        "{out}"
    );
}

#[test]
fn a_tampered_report_byte_exits_3_naming_the_report() {
    let lab = lab(34);
    let report = reports_of(&lab, "ap-south")[12].clone();
    let s = std::fs::read_to_string(&report).expect("report");
    let altered = s.replacen("\"admitted\":1", "\"admitted\":2", 1);
    assert_ne!(s, altered);
    std::fs::write(&report, altered).expect("write");
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("FAIL  ap-south: signature"), "{out}");
    assert!(out.contains(&report.display().to_string()), "{out}");
}

#[test]
fn a_missing_report_in_the_middle_is_a_finding() {
    let lab = lab(34);
    let gone = reports_of(&lab, "eu-west")[17].clone();
    std::fs::remove_file(&gone).expect("remove");
    // Reports only, so the ledger does not stand in for the missing report.
    std::fs::remove_file(lab.path("books/eu-west/ledger.jsonl")).expect("remove ledger");
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("[missing reports] cluster eu-west"), "{out}");
    assert!(
        out.contains("the time from 2026-01-22T00:00:00Z to 2026-01-23T00:00:00Z"),
        "{out}"
    );
}

#[test]
fn a_key_rotation_mid_year_verifies_and_a_foreign_key_fails() {
    let lab = lab(34);
    let dir = &lab.dir;
    keygen(&dir.join("keys/eu-west-2"));
    // Re-sign eu-west's books, rotating to the new key for reports ending after 20 January.
    std::fs::remove_dir_all(dir.join("books/eu-west")).expect("clear");
    let o = run(bin()
        .arg("simulate")
        .arg("--trace")
        .arg(dir.join("trace-eu-west.yaml"))
        .arg("--policy")
        .arg(dir.join("policy.yaml"))
        .arg("--out")
        .arg(dir.join("books/eu-west"))
        .arg("--key")
        .arg(dir.join("keys/eu-west/signing-key.pem"))
        .args(["--report-every", "1d", "--rotate-key"])
        .arg(format!(
            "2026-01-20T00:00:00Z={}",
            dir.join("keys/eu-west-2/signing-key.pem").display()
        )));
    assert_eq!(code(&o), 0, "{}", text(&o));
    let trust = |old_until: &str| {
        format!(
            "clusters:
  - name: eu-west
    reportEvery: 1d
    keys:
      - {{key: keys/eu-west/public-key.pem, validUntil: {old_until}}}
      - {{key: keys/eu-west-2/public-key.pem, validFrom: 2026-01-20T00:00:01Z}}
  - {{name: us-east, reportEvery: 1d, keys: [keys/us-east/public-key.pem]}}
  - {{name: ap-south, reportEvery: 1d, keys: [keys/ap-south/public-key.pem]}}
"
        )
    };
    std::fs::write(dir.join("trust.yaml"), trust("2026-01-20T00:00:01Z")).expect("trust");
    let o = lab.audit(&["-o", "json"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["clusters"][0]["verified"], true, "{v}");
    assert_eq!(v["clusters"][0]["keyIds"].as_array().map(Vec::len), Some(2));

    // Without the new key in the trust file, the first report it signed fails.
    std::fs::write(
        dir.join("trust.yaml"),
        "clusters:
  - {name: eu-west, reportEvery: 1d, keys: [keys/eu-west/public-key.pem]}
  - {name: us-east, reportEvery: 1d, keys: [keys/us-east/public-key.pem]}
  - {name: ap-south, reportEvery: 1d, keys: [keys/ap-south/public-key.pem]}
",
    )
    .expect("trust");
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("FAIL  eu-west: key"), "{out}");
    assert!(out.contains("which the trust file does not list"), "{out}");
}

#[test]
fn the_signed_audit_verifies_with_verify_and_check_and_a_changed_byte_does_not() {
    let lab = lab(34);
    keygen(&lab.path("auditor"));
    let audit_json = lab.path("audit.json");
    let o = lab.audit(&[
        "--key",
        &lab.path("auditor/signing-key.pem").display().to_string(),
        "--out",
        &audit_json.display().to_string(),
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let verify = || {
        run(bin()
            .arg("verify")
            .arg("--report")
            .arg(&audit_json)
            .arg("--key")
            .arg(lab.path("auditor/public-key.pem")))
    };
    let o = verify();
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("auditor's key"), "{}", text(&o));
    let check = |books: &[String]| {
        run(bin()
            .arg("audit")
            .arg("--trust")
            .arg(lab.path("trust.yaml"))
            .args(books)
            .arg("--check")
            .arg(&audit_json)
            .arg("--auditor-key")
            .arg(lab.path("auditor/public-key.pem")))
    };
    let o = check(&lab.books_args());
    assert_eq!(code(&o), 0, "{}", text(&o));
    // Re-run on fewer books: it differs from the signed audit.
    let o = check(&lab.books_args()[..4]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("field audit."), "{}", text(&o));

    // One changed digit: the signature no longer holds.
    let s = std::fs::read_to_string(&audit_json).expect("audit.json");
    let at = s.find("\"chargedAtCrossing\":").expect("field") + "\"chargedAtCrossing\":".len();
    let mut b = s.into_bytes();
    b[at] = if b[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&audit_json, b).expect("write");
    let o = verify();
    assert_eq!(code(&o), 3, "{}", text(&o));
    let o = check(&lab.books_args());
    assert_eq!(code(&o), 3, "{}", text(&o));
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let lab = lab(2);
    let o = run(bin()
        .arg("audit")
        .arg("--trust")
        .arg(lab.path("trust.yaml"))
        .arg("--books")
        .arg(format!("mars={}", lab.path("books/eu-west").display())));
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains("cluster \"mars\" is not in the trust file"),
        "{}",
        text(&o)
    );

    std::fs::write(
        lab.path("trust.yaml"),
        "clusters:\n  - {name: eu-west, reportEvery: 1d, keys: [keys/nowhere.pem]}\n",
    )
    .expect("trust");
    let o = lab.audit(&[]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("clusters[0].keys[0]"), "{}", text(&o));

    let o = run(bin()
        .arg("simulate")
        .arg("--trace")
        .arg(lab.path("trace-eu-west.yaml"))
        .arg("--out")
        .arg(lab.path("x"))
        .args(["--report-every", "0s"]));
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("--report-every 0s"), "{}", text(&o));
}

#[test]
fn silence_of_a_cluster_is_a_finding() {
    let lab = lab(2);
    // The books end on 8 January; audited on 20 January.
    let o = lab.audit_at("2026-01-20T00:00:00Z", &[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let out = text(&o);
    for c in CLUSTERS {
        assert!(
            out.contains(&format!("[silent] cluster {c}: silent since")),
            "{out}"
        );
    }
}
