//! `komptroller verify`: the auditor's offline check of a signed report,
//! its ledger and its predecessor. Exit 0 only when every check holds;
//! otherwise one sentence naming the first broken entry or field, and an
//! exit code per failure class.

use std::path::PathBuf;
use std::process::ExitCode;

use komptroller_engine::audit::{check_audit_consistency, is_audit_report, parse_audit_report};
use komptroller_engine::report::{
    FailureClass, NamedInput, ReportParseError, VerifyRequest, verify_report,
};
use komptroller_engine::signing::parse_public_keys_pem;

/// Verify a signed compute report offline.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Checks, in order: the report's canonical form and Ed25519 signature; \
its link and consistency proof to the previous report; the ledger's hash chain; \
the ledger's head hash and Merkle root against the report; every total, threshold crossing \
and deadline recomputed from the entries; the inclusion proof of --entry.
An audit report (kind ComputeAuditReport, from komptroller audit --out) is checked for its \
canonical form, the auditor's signature and what it states about itself (totals, crossings, \
deadlines, counts); komptroller audit --check re-runs it on the books.

Exit codes:
  0  every check holds
  2  bad input: a file is missing or malformed (not JSON, not a PEM public key, ...)
  3  signature: the report was altered, is not canonical, or was signed by another key
  4  chain: a ledger entry was altered, deleted, inserted or reordered
  5  ledger mismatch: the ledger is intact but is not the one the report signed
  6  totals: a total, crossing or deadline differs from what the entries give
  7  previous: the link or consistency proof to the previous report fails
  8  inclusion: the entry's inclusion proof does not reach the signed root"
)]
pub struct VerifyArgs {
    /// The signed report (report.json).
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,
    /// The signer's public key (SPKI PEM, public-key.pem). Repeat it, give a
    /// PEM bundle of several keys, or a directory (its `*.pem` files holding a
    /// public key) to verify across a key rotation: the report's keyId selects the key.
    #[arg(long, value_name = "FILE|DIR", required = true)]
    pub key: Vec<PathBuf>,
    /// The ledger (JSON Lines) from seq 0 to the report's last entry.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// The previous report, to check the link and consistency.
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Print and check the Merkle inclusion proof of the entry with this seq (needs --ledger).
    #[arg(long, value_name = "SEQ")]
    pub entry: Option<u64>,
    /// Accept a ledger with entries after the report's range (they are chain-checked only).
    #[arg(long)]
    pub allow_longer_ledger: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

fn class_name(c: FailureClass) -> &'static str {
    match c {
        FailureClass::Input => "bad input",
        FailureClass::Signature => "signature",
        FailureClass::Chain => "chain",
        FailureClass::LedgerMismatch => "ledger mismatch",
        FailureClass::Totals => "totals",
        FailureClass::Previous => "previous report",
        FailureClass::Inclusion => "inclusion",
    }
}

/// The key files named by `--key`: each file as given, and for a directory
/// its `*.pem` files (sorted) that hold a public key, so a `keygen --out`
/// directory (which also holds the private key) can be passed as is.
fn read_keys(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            out.push((p.display().to_string(), bytes));
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "pem") && f.is_file())
            .collect();
        files.sort();
        let before = out.len();
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            const BEGIN: &[u8] = b"-----BEGIN PUBLIC KEY-----";
            if bytes.windows(BEGIN.len()).any(|w| w == BEGIN) {
                out.push((f.display().to_string(), bytes));
            }
        }
        if out.len() == before {
            return Err(format!(
                "{}: the directory holds no *.pem file with a public key (-----BEGIN PUBLIC KEY-----)",
                p.display()
            ));
        }
    }
    Ok(out)
}

pub fn run(args: VerifyArgs) -> ExitCode {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let load = |p: &Option<PathBuf>| p.as_ref().map(read).transpose();
    let (report, keys, ledger, previous) = match (|| {
        Ok::<_, String>((
            read(&args.report)?,
            read_keys(&args.key)?,
            load(&args.ledger)?,
            load(&args.previous)?,
        ))
    })() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("verify failed (exit 2, bad input): {e}");
            return ExitCode::from(2);
        }
    };
    if is_audit_report(&report) {
        return verify_audit(&args, &report, &keys);
    }
    let key_inputs: Vec<NamedInput<'_>> = keys
        .iter()
        .map(|(name, bytes)| NamedInput { name, bytes })
        .collect();
    let names = (
        args.report.display().to_string(),
        args.ledger.as_ref().map(|p| p.display().to_string()),
        args.previous.as_ref().map(|p| p.display().to_string()),
    );
    let req = VerifyRequest {
        report: NamedInput {
            name: &names.0,
            bytes: &report,
        },
        public_keys: &key_inputs,
        ledger: ledger.as_deref().map(|bytes| NamedInput {
            name: names.1.as_deref().unwrap_or("ledger"),
            bytes,
        }),
        previous: previous.as_deref().map(|bytes| NamedInput {
            name: names.2.as_deref().unwrap_or("previous report"),
            bytes,
        }),
        entry: args.entry,
        allow_longer_ledger: args.allow_longer_ledger,
    };
    match verify_report(&req) {
        Ok(v) => {
            if !args.quiet {
                for c in &v.checks {
                    println!("ok  {c}");
                }
                if let Some(p) = &v.inclusion {
                    match serde_json::to_string_pretty(p) {
                        Ok(s) => println!("{s}"),
                        Err(e) => eprintln!("warning: cannot print the inclusion proof: {e}"),
                    }
                }
                println!(
                    "verified: {} entries, report signed by key {}",
                    v.report.report.range.to, v.report.key_id
                );
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!(
                "verify failed (exit {}, {}): {}",
                f.class.exit_code(),
                class_name(f.class),
                f.message
            );
            ExitCode::from(f.class.exit_code())
        }
    }
}

/// A signed audit report (`komptroller audit --key … --out audit.json`):
/// its canonical form, the auditor's signature (the report's keyId selects
/// among the given keys) and what it states about itself. Exit codes as for
/// a report: 2 bad input, 3 signature, 6 an inconsistent figure.
fn verify_audit(args: &VerifyArgs, bytes: &[u8], keys: &[(String, Vec<u8>)]) -> ExitCode {
    let name = args.report.display().to_string();
    let failed = |class: FailureClass, message: String| {
        eprintln!(
            "verify failed (exit {}, {}): {message}",
            class.exit_code(),
            class_name(class)
        );
        ExitCode::from(class.exit_code())
    };
    if args.ledger.is_some() || args.previous.is_some() || args.entry.is_some() {
        return failed(
            FailureClass::Input,
            format!(
                "{name} is an audit report: --ledger, --previous and --entry apply to cluster reports; re-run the audit with komptroller audit --check to check it against the books"
            ),
        );
    }
    let signed = match parse_audit_report(bytes) {
        Ok(s) => s,
        Err(e @ ReportParseError::NotCanonical { .. }) => {
            return failed(FailureClass::Signature, format!("{name} is {e}"));
        }
        Err(e) => return failed(FailureClass::Input, format!("{name}: {e}")),
    };
    let mut parsed = Vec::new();
    for (file, key) in keys {
        let text = String::from_utf8_lossy(key);
        match parse_public_keys_pem(&text) {
            Ok(ks) => parsed.extend(ks.into_iter().map(|k| (file.as_str(), k))),
            Err(e) => return failed(FailureClass::Input, format!("{file}: {e}")),
        }
    }
    let chosen = parsed
        .iter()
        .find(|(_, k)| komptroller_engine::signing::key_id(k) == signed.key_id)
        .or(parsed.first().filter(|_| parsed.len() == 1));
    let Some((file, key)) = chosen else {
        return failed(
            FailureClass::Signature,
            format!(
                "{name}: the audit was signed by key {}, which is none of the {} given keys",
                signed.key_id,
                parsed.len()
            ),
        );
    };
    if let Err(e) = signed.verify_signature(key) {
        return failed(FailureClass::Signature, format!("{name}: {e}"));
    }
    let checks = match check_audit_consistency(&signed.audit) {
        Ok(c) => c,
        Err(e) => return failed(FailureClass::Totals, format!("{name}: {e}")),
    };
    if !args.quiet {
        println!(
            "ok  signature: valid Ed25519 signature by the auditor's key {} ({file})",
            signed.key_id
        );
        for c in checks {
            println!("ok  {c}");
        }
        println!(
            "verified: audit as of {} of {} clusters ({} failed, {} findings; the audit's exit code was {})",
            signed.audit.as_of,
            signed.audit.summary.clusters,
            signed.audit.summary.failed,
            signed.audit.summary.findings,
            signed.audit.summary.exit_code
        );
    }
    ExitCode::SUCCESS
}
