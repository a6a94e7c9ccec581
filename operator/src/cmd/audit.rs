//! `komptroller audit`: the treaty auditor's command. Reads the trust file,
//! the alias file and each cluster's books from disk (directories as
//! `simulate --out` writes them or as reports pulled from `/reports`), runs
//! the engine's audit, prints it, and signs it with the auditor's key; or
//! checks a signed audit by re-running it on the same books.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jiff::Timestamp;
use komptroller_engine::audit::{
    AUDIT_KIND, Aliases, AuditRequest, ClusterBooks, EXIT_BOOKS_FAILED, audit, audit_difference,
    check_audit_consistency, parse_aliases, parse_audit_report, parse_trust,
};
use komptroller_engine::ledger::Sha256Digest;
use komptroller_engine::report::NamedInput;
use komptroller_engine::signing::parse_public_keys_pem;

use super::bundle::load_signing_key;
use super::{EXIT_BAD_INPUT, Output, print_out};

/// Audit many clusters' signed books and merge what they show.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  komptroller audit --trust trust.yaml --books eu-west=books/eu-west --books us-east=books/us-east
  komptroller audit --trust trust.yaml --books eu-west=books/eu-west -o json --key auditor-key.pem --out audit.json
  komptroller audit --trust trust.yaml --books eu-west=books/eu-west --check audit.json --auditor-key auditor-public.pem

Books: a directory is read recursively; *.json files are reports (other JSON kinds, such as the
/reports index, are skipped), the *.jsonl file is the ledger (at most one per cluster), other files
are ignored. A cluster of the trust file without --books is silent.

Exit codes:
  0  every cluster's books verified and nothing was found
  1  findings: a threshold crossed only in the union, missing reports, a late report, silence
  2  bad input: the trust file, alias file or a flag is wrong (the message names the field)
  3  a cluster's books fail verification (the message names the cluster, the file and the entry or field);
     with --check: the signed audit does not verify or differs from the re-run")]
pub struct AuditArgs {
    /// The trust file (YAML): clusters with their public keys (and validity
    /// periods) and how often each reports; see docs/audit.md.
    #[arg(long, value_name = "FILE")]
    pub trust: PathBuf,
    /// A cluster's books, NAME=PATH: NAME as in the trust file, PATH a
    /// directory or a file. Repeat for every cluster (and for more paths of one).
    #[arg(long = "books", value_name = "NAME=PATH", value_parser = parse_books)]
    pub books: Vec<(String, PathBuf)>,
    /// Alias file (YAML): one model under different names in different clusters.
    #[arg(long, value_name = "FILE")]
    pub aliases: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The audit time (RFC 3339) at which continuity is judged. Default: now.
    #[arg(long, value_name = "TIME")]
    pub at: Option<Timestamp>,
    /// Merged lineages to list in text output (largest first).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Sign the audit with the auditor's Ed25519 private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE", requires = "out")]
    pub key: Option<PathBuf>,
    /// Write the signed audit report (audit.json) here.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub out: Option<PathBuf>,
    /// Check a signed audit report: its signature, its consistency, and a
    /// re-run of the audit on these books at its asOf, field by field.
    #[arg(long, value_name = "AUDIT", conflicts_with_all = ["key", "out", "at"], requires = "auditor_key")]
    pub check: Option<PathBuf>,
    /// The auditor's public key (SPKI PEM) for --check.
    #[arg(long, value_name = "FILE", requires = "check")]
    pub auditor_key: Option<PathBuf>,
}

/// `NAME=PATH` of --books.
fn parse_books(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| {
        format!("--books {s:?}: expected NAME=PATH, e.g. eu-west=books/eu-west (NAME as in the trust file)")
    })?;
    if name.is_empty() || path.is_empty() {
        return Err(format!(
            "--books {s:?}: both NAME and PATH are needed, e.g. eu-west=books/eu-west"
        ));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// A cluster's files, read.
struct LoadedBooks {
    cluster: String,
    reports: Vec<(String, Vec<u8>)>,
    ledger: Option<(String, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every file below `path` (itself when a file), sorted.
fn files_below(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    entries.sort();
    for e in entries {
        files_below(&e, out)?;
    }
    Ok(())
}

fn load_books(args: &AuditArgs) -> Result<Vec<LoadedBooks>, String> {
    let mut out: Vec<LoadedBooks> = Vec::new();
    for (name, path) in &args.books {
        let i = match out.iter().position(|b| &b.cluster == name) {
            Some(i) => i,
            None => {
                out.push(LoadedBooks {
                    cluster: name.clone(),
                    reports: Vec::new(),
                    ledger: None,
                });
                out.len() - 1
            }
        };
        let mut files = Vec::new();
        files_below(path, &mut files)
            .map_err(|e| format!("--books {name}={}: {e}", path.display()))?;
        let given_file = files.len() == 1 && files[0] == *path;
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            let shown = f.display().to_string();
            match ext {
                "jsonl" => {
                    let b = &mut out[i];
                    if let Some((first, _)) = &b.ledger {
                        return Err(format!(
                            "--books {name}: two ledgers, {first} and {shown}; a cluster has one ledger (JSON Lines from seq 0)"
                        ));
                    }
                    b.ledger = Some((shown, read(&f)?));
                }
                "json" => out[i].reports.push((shown, read(&f)?)),
                _ if given_file => {
                    return Err(format!(
                        "--books {name}={shown}: neither a report (*.json) nor a ledger (*.jsonl)"
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn digest_of(path: &Path) -> Result<(String, Sha256Digest), String> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: not a UTF-8 text file", path.display()))?;
    let digest = Sha256Digest::of(text.as_bytes());
    Ok((text, digest))
}

pub fn run(args: AuditArgs) -> ExitCode {
    match audit_cmd(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("audit failed (exit 2, bad input): {message}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn audit_cmd(args: &AuditArgs) -> Result<ExitCode, String> {
    let (trust_text, trust_digest) = digest_of(&args.trust)?;
    let base = args
        .trust
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let trust = parse_trust(&trust_text, &args.trust.display().to_string(), |p| {
        let path = base.join(p);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .map_err(|e| e.to_string())?;
    let (aliases, aliases_digest) = match &args.aliases {
        Some(p) => {
            let (text, digest) = digest_of(p)?;
            let a = parse_aliases(&text, &p.display().to_string(), &trust)
                .map_err(|e| e.to_string())?;
            (a, Some(digest))
        }
        None => (Aliases::none(), None),
    };
    let loaded = load_books(args)?;
    let books: Vec<ClusterBooks<'_>> = loaded
        .iter()
        .map(|b| ClusterBooks {
            cluster: &b.cluster,
            reports: b
                .reports
                .iter()
                .map(|(name, bytes)| NamedInput { name, bytes })
                .collect(),
            ledger: b
                .ledger
                .as_ref()
                .map(|(name, bytes)| NamedInput { name, bytes }),
        })
        .collect();
    let signed_check = match &args.check {
        Some(path) => match load_check(path, args.auditor_key.as_deref())? {
            Ok(signed) => Some(signed),
            Err(message) => {
                eprintln!("audit check failed (exit 3): {message}");
                return Ok(ExitCode::from(EXIT_BOOKS_FAILED));
            }
        },
        None => None,
    };
    let as_of = match &signed_check {
        Some(s) => s.audit.as_of,
        None => args.at.unwrap_or_else(Timestamp::now),
    };
    let report = audit(&AuditRequest {
        trust: &trust,
        aliases: &aliases,
        books: &books,
        as_of,
        trust_digest: Some(trust_digest),
        aliases_digest,
    })
    .map_err(|e| e.to_string())?;

    if let (Some(signed), Some(path)) = (&signed_check, &args.check) {
        let name = path.display();
        if let Err(e) = check_audit_consistency(&signed.audit) {
            eprintln!("audit check failed (exit 3): {name}: {e}");
            return Ok(ExitCode::from(EXIT_BOOKS_FAILED));
        }
        if let Some((field, stated, rerun)) = audit_difference(&signed.audit, &report) {
            eprintln!(
                "audit check failed (exit 3): {name}: field {field} says {stated} but the audit re-run on these books at {as_of} gives {rerun}"
            );
            return Ok(ExitCode::from(EXIT_BOOKS_FAILED));
        }
        return Ok(print_out(&format!(
            "ok  signature: valid Ed25519 signature by the auditor's key {}\nok  consistency: totals, crossings, deadlines and counts agree\nok  re-run: the audit of these books at {as_of} gives exactly the signed report\n",
            signed.key_id
        )));
    }

    let mut written = String::new();
    if let (Some(key_path), Some(out)) = (&args.key, &args.out) {
        let key = load_signing_key(key_path)?;
        let signed = report
            .clone()
            .sign(&key)
            .map_err(|e| format!("cannot sign the audit: {e}"))?;
        let bytes = signed
            .canonical_bytes()
            .map_err(|e| format!("cannot encode the audit: {e}"))?;
        std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
        written = format!(
            "wrote {} ({AUDIT_KIND}, signed by key {}); check it with komptroller verify --report {} --key <auditor public key>\n",
            out.display(),
            signed.key_id,
            out.display()
        );
    }
    let text = match args.output {
        Output::Text => {
            let mut t = report.render_text(args.limit);
            t.push_str(&format!(
                "\nexit {}: {}\n",
                report.exit_code(),
                exit_meaning(report.exit_code())
            ));
            t.push_str(&written);
            t
        }
        Output::Json => {
            // Keep stdout machine-readable: the file path goes to stderr.
            eprint!("{written}");
            serde_json::to_string_pretty(&report)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())?
        }
    };
    let printed = print_out(&text);
    if printed != ExitCode::SUCCESS {
        return Ok(printed);
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn exit_meaning(code: u8) -> &'static str {
    match code {
        0 => "every cluster verified, nothing found",
        1 => "findings",
        _ => "a cluster's books fail verification",
    }
}

/// Reads a signed audit report and checks its signature: the inner
/// `Err` is a signature that does not hold (exit 3), the outer one bad input.
fn load_check(
    path: &Path,
    key: Option<&Path>,
) -> Result<Result<komptroller_engine::audit::SignedAuditReport, String>, String> {
    let name = path.display();
    let Some(key_path) = key else {
        return Err("--check needs --auditor-key, the auditor's public key (SPKI PEM)".into());
    };
    let text = String::from_utf8(read(key_path)?)
        .map_err(|_| format!("{}: not a PEM text file", key_path.display()))?;
    let keys = parse_public_keys_pem(&text).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let signed = match parse_audit_report(&read(path)?) {
        Ok(s) => s,
        Err(e @ komptroller_engine::report::ReportParseError::NotCanonical { .. }) => {
            return Ok(Err(format!("{name} is {e}")));
        }
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let mut last = None;
    for k in &keys {
        match signed.verify_signature(k) {
            Ok(()) => return Ok(Ok(signed)),
            Err(e) => last = Some(e),
        }
    }
    Ok(Err(format!(
        "{name}: {}",
        last.map_or("no key given".to_string(), |e| e.to_string())
    )))
}
