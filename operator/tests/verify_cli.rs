//! End-to-end tests of `komptroller keygen`, `report` and `verify` through
//! the real binary, including the openssl path an auditor without our
//! binary would use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use komptroller_engine::ledger::{Ledger, sample::sample_records};
use komptroller_engine::report::{Period, build_report, parse_report};
use komptroller_engine::signing::parse_private_key_pem;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_komptroller"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run komptroller")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const POLICY: &str = r#"apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata:
  name: eu-ai-act
spec:
  tiers:
    - name: gpai
      threshold: 1e23
      action: Admit
      reporting:
        regulation: "EU AI Act Art. 53"
        notifyWithin: 14d
    - name: eu-systemic-risk
      threshold: 1e25
      action: Admit
      reporting:
        regulation: "EU AI Act Art. 52(1)"
        notifyWithin: 14d
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// keygen + a ledger of `n` sample entries + `report` (through the CLI).
fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let o = run(bin().args(["keygen", "--out"]).arg(&d));
    assert_eq!(code(&o), 0, "keygen: {}", stderr(&o));
    let mut ledger = Ledger::new();
    for r in sample_records(n, 42, "2026-03-01T00:00:00Z".parse().expect("time")) {
        ledger.append(r).expect("append");
    }
    let mut f = std::fs::File::create(d.join("ledger.jsonl")).expect("create");
    ledger.write_jsonl(&mut f).expect("write");
    std::fs::write(d.join("policy.yaml"), POLICY).expect("policy");
    let o = run(bin()
        .arg("report")
        .arg("--ledger")
        .arg(d.join("ledger.jsonl"))
        .arg("--policy")
        .arg(d.join("policy.yaml"))
        .arg("--key")
        .arg(d.join("signing-key.pem"))
        .arg("--out")
        .arg(d.join("report.json")));
    assert_eq!(code(&o), 0, "report: {}", stderr(&o));
    Fixture { _dir: dir, dir: d }
}

fn verify(f: &Fixture, extra: &[&str]) -> Output {
    run(bin()
        .arg("verify")
        .arg("--report")
        .arg(f.path("report.json"))
        .arg("--key")
        .arg(f.path("public-key.pem"))
        .args(extra))
}

fn with_ledger(f: &Fixture) -> Vec<String> {
    vec![
        "--ledger".into(),
        f.path("ledger.jsonl").display().to_string(),
    ]
}

#[test]
fn an_untouched_bundle_verifies_with_exit_0() {
    let f = fixture(200);
    let args = with_ledger(&f);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = verify(&f, &args);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("signature"), "{out}");
    assert!(out.contains("totals"), "{out}");
    let report = parse_report(&std::fs::read(f.path("report.json")).expect("read")).expect("parse");
    assert!(
        !report.report.threshold_crossings.is_empty(),
        "the sample ledger should cross the 1e23 threshold"
    );
}

#[test]
fn an_altered_entry_exits_4_naming_it() {
    let f = fixture(50);
    let text = std::fs::read_to_string(f.path("ledger.jsonl")).expect("read");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[17] = lines[17].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    std::fs::write(f.path("ledger.jsonl"), lines.join("\n") + "\n").expect("write");
    let args = with_ledger(&f);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = verify(&f, &args);
    assert_eq!(code(&o), 4, "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("seq 17"), "{}", stderr(&o));
}

#[test]
fn a_report_checked_against_another_key_exits_3() {
    let f = fixture(20);
    let other = f.path("other");
    let o = run(bin().args(["keygen", "--out"]).arg(&other));
    assert_eq!(code(&o), 0);
    let o = run(bin()
        .arg("verify")
        .arg("--report")
        .arg(f.path("report.json"))
        .arg("--key")
        .arg(other.join("public-key.pem")));
    assert_eq!(code(&o), 3, "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("signed by key"), "{}", stderr(&o));
}

#[test]
fn bad_inputs_exit_2_naming_the_file_and_never_panic() {
    let f = fixture(10);
    // Malformed report.
    std::fs::write(f.path("bad.json"), b"{not json").expect("write");
    let o = run(bin()
        .arg("verify")
        .arg("--report")
        .arg(f.path("bad.json"))
        .arg("--key")
        .arg(f.path("public-key.pem")));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));
    // Private key given where the public key is expected.
    let o = verify_with_key(&f, &f.path("signing-key.pem"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("signing-key.pem") && stderr(&o).contains("private key"),
        "{}",
        stderr(&o)
    );
    // Garbage key.
    std::fs::write(f.path("garbage.pem"), [0xff, 0xfe, 0x00]).expect("write");
    let o = verify_with_key(&f, &f.path("garbage.pem"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // Missing file.
    let o = verify_with_key(&f, &f.path("missing.pem"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.pem"), "{}", stderr(&o));
    // Malformed ledger line.
    std::fs::write(f.path("ledger.jsonl"), b"{\"seq\":0}\n").expect("write");
    let args = with_ledger(&f);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = verify(&f, &args);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ledger.jsonl") && stderr(&o).contains("line 1"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

fn verify_with_key(f: &Fixture, key: &Path) -> Output {
    run(bin()
        .arg("verify")
        .arg("--report")
        .arg(f.path("report.json"))
        .arg("--key")
        .arg(key))
}

#[test]
fn entry_inclusion_proof_is_printed_and_checked() {
    let f = fixture(37);
    let mut args = with_ledger(&f);
    args.extend(["--entry".to_string(), "23".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = verify(&f, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"auditPath\""), "{out}");
    assert!(out.contains("inclusion: entry seq 23"), "{out}");
    // Out of range.
    let mut args = with_ledger(&f);
    args.extend(["--entry".to_string(), "37".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = verify(&f, &args);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn a_continuing_report_links_to_its_predecessor_and_a_wrong_one_exits_7() {
    let f = fixture(60);
    // The first report covers 60 entries; extend the ledger and report again.
    let text = std::fs::read(f.path("ledger.jsonl")).expect("read");
    let entries = komptroller_engine::ledger::verify_jsonl(&text).expect("chain");
    let mut ledger = Ledger::from_entries(entries).expect("ledger");
    let last = ledger
        .entries()
        .last()
        .map(|e| e.record.time)
        .expect("time");
    for mut r in sample_records(40, 7, last) {
        r.time = r.time.max(last);
        ledger.append(r).expect("append");
    }
    let mut file = std::fs::File::create(f.path("ledger2.jsonl")).expect("create");
    ledger.write_jsonl(&mut file).expect("write");
    let o = run(bin()
        .arg("report")
        .arg("--ledger")
        .arg(f.path("ledger2.jsonl"))
        .arg("--policy")
        .arg(f.path("policy.yaml"))
        .arg("--key")
        .arg(f.path("signing-key.pem"))
        .arg("--previous")
        .arg(f.path("report.json"))
        .arg("--out")
        .arg(f.path("report2.json")));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = |prev: &Path| {
        run(bin()
            .arg("verify")
            .arg("--report")
            .arg(f.path("report2.json"))
            .arg("--key")
            .arg(f.path("public-key.pem"))
            .arg("--ledger")
            .arg(f.path("ledger2.jsonl"))
            .arg("--previous")
            .arg(prev))
    };
    let o = v(&f.path("report.json"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("consistency"));
    // A different, validly signed report as "previous": exit 7.
    let key =
        parse_private_key_pem(&std::fs::read_to_string(f.path("signing-key.pem")).expect("key"))
            .expect("parse key");
    let first60 = &ledger.entries()[..59];
    let other = build_report(first60, &[], Period::covering(first60), None)
        .expect("build")
        .sign(&key)
        .expect("sign");
    std::fs::write(
        f.path("other.json"),
        other.canonical_bytes().expect("bytes"),
    )
    .expect("write");
    let o = v(&f.path("other.json"));
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("previous"), "{}", stderr(&o));
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// The auditor's path without our binary: the documented commands in
/// docs/ledger.md, run through `sh`.
#[test]
fn openssl_verifies_the_signature_without_our_binary() {
    if !have("openssl") {
        eprintln!(
            "SKIPPED LOUDLY: openssl is not installed, so the documented openssl verification was NOT tested"
        );
        return;
    }
    let f = fixture(30);
    let script = r#"set -e
cd "$1"
sed 's/,"signature":"[^"]*"}$/}/' report.json > signed.json
sed 's/.*,"signature":"\([^"]*\)"}$/\1/' report.json | base64 -d > report.sig
openssl pkeyutl -verify -pubin -inkey public-key.pem -rawin -in signed.json -sigfile report.sig
test "$(openssl pkey -pubin -in public-key.pem -outform DER | sha256sum | cut -d' ' -f1)" = "$(sed 's/.*"keyId":"\([0-9a-f]*\)".*/\1/' report.json)"
"#;
    let o = run(Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&f.dir));
    assert!(
        o.status.success(),
        "openssl path failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Signature Verified Successfully"));
    // The bytes sed cut out are the ones `report --signed-bytes` prints.
    let o2 = run(bin()
        .arg("report")
        .arg("--signed-bytes")
        .arg(f.path("report.json")));
    assert_eq!(code(&o2), 0, "{}", stderr(&o2));
    assert_eq!(
        o2.stdout,
        std::fs::read(f.path("signed.json")).expect("read")
    );
    // A tampered report fails under openssl too.
    let tampered = std::fs::read_to_string(f.path("report.json"))
        .expect("read")
        .replacen("\"entries\":30", "\"entries\":31", 1);
    assert!(tampered.contains("\"entries\":31"));
    std::fs::write(f.path("report.json"), tampered).expect("write");
    let o = run(Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&f.dir));
    assert!(!o.status.success(), "openssl accepted a tampered report");
}

#[test]
fn report_renders_every_format() {
    let f = fixture(80);
    for (fmt, needle) in [
        ("csv", "scope,key,charged_flop"),
        ("markdown", "# Compute report"),
        ("openreports", "apiVersion: openreports.io/v1alpha1"),
        ("json", "\"apiVersion\":\"komptroller.dev/v1alpha1\""),
    ] {
        let o = run(bin()
            .arg("report")
            .arg("--render")
            .arg(f.path("report.json"))
            .arg("--format")
            .arg(fmt));
        assert_eq!(code(&o), 0, "{fmt}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(needle), "{fmt}: {out}");
    }
}

/// docs/ledger.md: any entry's hash can be recomputed with coreutils.
#[test]
fn coreutils_recompute_an_entry_hash() {
    let f = fixture(12);
    let text = std::fs::read_to_string(f.path("ledger.jsonl")).expect("read");
    for (n, line) in text.lines().enumerate().take(5) {
        let script = format!(
            "sed -n '{}p' ledger.jsonl | sed 's/\"hash\":\"[0-9a-f]\\{{64\\}}\",//' | tr -d '\\n' | sha256sum | cut -d' ' -f1",
            n + 1
        );
        let o = run(Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&f.dir));
        assert!(o.status.success(), "{}", stderr(&o));
        let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(
            line.contains(&format!("\"hash\":\"{got}\"")),
            "line {}: shell hash {got} not in {line}",
            n + 1
        );
    }
}

/// `simulate --out DIR` writes its bundle through `bundle::write_outputs`.
#[test]
fn the_bundle_holds_every_file_and_verifies() {
    use komptroller::cmd::bundle::write_outputs;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("out");
    let mut ledger = Ledger::new();
    for r in sample_records(120, 5, "2026-04-01T00:00:00Z".parse().expect("time")) {
        ledger.append(r).expect("append");
    }
    let policies = komptroller_engine::manifest::parse_policies(POLICY, "policy").expect("policy");
    let first = &ledger.entries()[..70];
    let out = write_outputs(&d, first, &policies, None, None, None).expect("bundle");
    let names: Vec<String> = out
        .files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "ledger.jsonl",
        "report.json",
        "report.csv",
        "report.md",
        "openreport.yaml",
        "signing-key.pem",
        "public-key.pem",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
        assert!(d.join(want).exists(), "{want} not written");
    }
    let key = out.generated_key.clone().expect("a key was generated");
    assert!(out.to_string().contains("public-key.pem"));
    let o = run(bin()
        .arg("verify")
        .arg("--report")
        .arg(d.join("report.json"))
        .arg("--key")
        .arg(&key.public_key)
        .arg("--ledger")
        .arg(d.join("ledger.jsonl")));
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // A second bundle continuing the first reuses the key and links to it.
    std::fs::copy(d.join("report.json"), dir.path().join("first.json")).expect("copy");
    let out2 = write_outputs(
        &d,
        ledger.entries(),
        &policies,
        None,
        None,
        Some(&out.report),
    )
    .expect("bundle 2");
    assert_eq!(out2.generated_key.expect("key").key_id, key.key_id);
    assert_eq!(out2.report.report.range.from, 70);
    let o = run(bin()
        .arg("verify")
        .arg("--report")
        .arg(d.join("report.json"))
        .arg("--key")
        .arg(&key.public_key)
        .arg("--ledger")
        .arg(d.join("ledger.jsonl"))
        .arg("--previous")
        .arg(dir.path().join("first.json")));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Key rotation: the first report is signed by the old key, the next by a
/// new one. `--key` repeated, a directory of public keys, or one PEM bundle
/// all verify the pair; a report signed by none of the given keys exits 3
/// naming its key id.
#[test]
fn verify_selects_among_several_keys_by_key_id() {
    let f = fixture(30);
    let text = std::fs::read(f.path("ledger.jsonl")).expect("read");
    let entries = komptroller_engine::ledger::verify_jsonl(&text).expect("chain");
    let mut ledger = Ledger::from_entries(entries).expect("ledger");
    let last = ledger
        .entries()
        .last()
        .map(|e| e.record.time)
        .expect("time");
    for mut r in sample_records(20, 9, last) {
        r.time = r.time.max(last);
        ledger.append(r).expect("append");
    }
    let mut file = std::fs::File::create(f.path("ledger2.jsonl")).expect("create");
    ledger.write_jsonl(&mut file).expect("write");
    let new_dir = f.path("new");
    let o = run(bin().args(["keygen", "--out"]).arg(&new_dir));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(bin()
        .arg("report")
        .arg("--ledger")
        .arg(f.path("ledger2.jsonl"))
        .arg("--policy")
        .arg(f.path("policy.yaml"))
        .arg("--key")
        .arg(new_dir.join("signing-key.pem"))
        .arg("--previous")
        .arg(f.path("report.json"))
        .arg("--out")
        .arg(f.path("report2.json")));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let verify_keys = |keys: &[PathBuf]| {
        let mut cmd = bin();
        cmd.arg("verify")
            .arg("--report")
            .arg(f.path("report2.json"));
        for k in keys {
            cmd.arg("--key").arg(k);
        }
        run(cmd
            .arg("--ledger")
            .arg(f.path("ledger2.jsonl"))
            .arg("--previous")
            .arg(f.path("report.json")))
    };
    let old_pub = f.path("public-key.pem");
    let new_pub = new_dir.join("public-key.pem");
    // --key twice.
    let o = verify_keys(&[old_pub.clone(), new_pub.clone()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A directory of public keys (keygen's directory also holds the private key, which is skipped).
    let keys_dir = f.path("keys");
    std::fs::create_dir(&keys_dir).expect("mkdir");
    std::fs::copy(&old_pub, keys_dir.join("2026-old.pem")).expect("copy");
    std::fs::copy(&new_pub, keys_dir.join("2026-new.pem")).expect("copy");
    let o = verify_keys(std::slice::from_ref(&keys_dir));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = verify_keys(&[f.path("."), new_dir.clone()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // One PEM bundle.
    let bundle = std::fs::read_to_string(&new_pub).expect("read")
        + &std::fs::read_to_string(&old_pub).expect("read");
    std::fs::write(f.path("bundle.pem"), bundle).expect("write");
    let o = verify_keys(&[f.path("bundle.pem")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Only the new key: the previous report (old key) cannot be checked: exit 7.
    let o = verify_keys(std::slice::from_ref(&new_pub));
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    // Signed by neither of two given keys: exit 3, naming the report's key id.
    let stranger = f.path("stranger");
    let o = run(bin().args(["keygen", "--out"]).arg(&stranger));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report2 =
        parse_report(&std::fs::read(f.path("report2.json")).expect("read")).expect("parse");
    let o = run(bin()
        .arg("verify")
        .arg("--report")
        .arg(f.path("report2.json"))
        .arg("--key")
        .arg(&old_pub)
        .arg("--key")
        .arg(stranger.join("public-key.pem")));
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&report2.key_id.to_hex())
            && stderr(&o).contains("none of the 2 given keys"),
        "{}",
        stderr(&o)
    );
    // A directory with no public key is bad input.
    let empty = f.path("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let o = verify_keys(&[empty]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no *.pem file"), "{}", stderr(&o));
}
