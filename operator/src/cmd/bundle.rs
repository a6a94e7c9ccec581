//! The audit bundle `komptroller simulate --out DIR` writes: the ledger, the
//! signed report and its views, and (when no key is given) a fresh key pair.
//! Also the key-file helpers `keygen` and `report` share.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use komptroller_engine::ledger::{LedgerEntry, write_jsonl};
use komptroller_engine::policy::Policy;
use komptroller_engine::report::{
    Period, SignedReport, build_report, sign_report_chain, to_csv, to_markdown, to_openreports_yaml,
};
use komptroller_engine::signing::{
    Ed25519SigningKey, key_id, parse_private_key_pem, private_key_pem, public_key_pem,
    signing_key_from_seed,
};

/// File names inside the bundle directory.
pub const LEDGER_FILE: &str = "ledger.jsonl";
pub const REPORT_FILE: &str = "report.json";
pub const CSV_FILE: &str = "report.csv";
pub const MARKDOWN_FILE: &str = "report.md";
pub const OPENREPORT_FILE: &str = "openreport.yaml";
pub const PRIVATE_KEY_FILE: &str = "signing-key.pem";
pub const PUBLIC_KEY_FILE: &str = "public-key.pem";

/// A failure writing the bundle, naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError(pub String);

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BundleError {}

/// A key pair generated because none was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    /// SHA-256 of the public key (SPKI DER), hex.
    pub key_id: String,
}

/// What [`write_outputs`] wrote.
#[derive(Debug, Clone)]
pub struct BundleOutputs {
    /// Every file written, in order (key files last when generated).
    pub files: Vec<PathBuf>,
    /// Set when a key pair was generated (or reused from DIR) because none was given.
    pub generated_key: Option<GeneratedKey>,
    pub report: SignedReport,
}

impl fmt::Display for BundleOutputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.files {
            writeln!(f, "wrote {}", p.display())?;
        }
        if let Some(k) = &self.generated_key {
            writeln!(
                f,
                "no signing key given: signed with {} (key id {}); verify with --key {}",
                k.private_key.display(),
                k.key_id,
                k.public_key.display()
            )?;
        }
        Ok(())
    }
}

/// 32 random bytes from the operating system, as an Ed25519 key.
pub fn generate_key() -> Result<Ed25519SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(signing_key_from_seed(&seed))
}

fn write_new(path: &Path, bytes: &[u8], private: bool, force: bool) -> Result<(), String> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{}: already exists; refusing to overwrite a key (pass --force to replace it)",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Generates a key pair and writes it: PKCS#8 PEM (mode 0600) and SPKI PEM.
pub fn write_key_pair(
    private: &Path,
    public: &Path,
    force: bool,
) -> Result<(Ed25519SigningKey, String), String> {
    let key = generate_key()?;
    let private_pem = private_key_pem(&key).map_err(|e| e.to_string())?;
    let public_pem = public_key_pem(&key.verifying_key()).map_err(|e| e.to_string())?;
    write_new(private, private_pem.as_bytes(), true, force)?;
    write_new(public, public_pem.as_bytes(), false, force)?;
    let id = key_id(&key.verifying_key()).to_hex();
    Ok((key, id))
}

/// Reads a PKCS#8 PEM private key, naming the file in errors.
pub fn load_signing_key(path: &Path) -> Result<Ed25519SigningKey, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_private_key_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    files: &mut Vec<PathBuf>,
) -> Result<(), BundleError> {
    let path = dir.join(name);
    fs::write(&path, bytes).map_err(|e| BundleError(format!("{}: {e}", path.display())))?;
    files.push(path);
    Ok(())
}

/// Writes `ledger.jsonl`, `report.json` (signed), `report.csv`, `report.md`
/// and `openreport.yaml` into `dir` (created if missing).
///
/// - `entries`: the ledger from seq 0, e.g. `ledger.entries()`.
/// - `signing_key`: a PKCS#8 PEM private key. When `None`, the key pair
///   `signing-key.pem` / `public-key.pem` in `dir` is reused if both exist,
///   else generated there; [`BundleOutputs::generated_key`] says which files.
/// - `period`: defaults to the span of the entries' times (for a continuing
///   report: from the previous report's end to the last entry).
/// - `previous`: the report this one continues, if any.
pub fn write_outputs(
    dir: &Path,
    entries: &[LedgerEntry],
    policies: &[Policy],
    signing_key: Option<&Path>,
    period: Option<Period>,
    previous: Option<&SignedReport>,
) -> Result<BundleOutputs, BundleError> {
    fs::create_dir_all(dir).map_err(|e| BundleError(format!("{}: {e}", dir.display())))?;
    let (key, generated_key) = bundle_key(dir, signing_key)?;
    let period = period.unwrap_or_else(|| match previous {
        // A continuing report starts where the previous one ended and covers the new entries.
        Some(p) => {
            let start = usize::try_from(p.report.range.to)
                .unwrap_or(usize::MAX)
                .min(entries.len());
            let new = Period::covering(&entries[start..]);
            let from = p.report.period.to;
            Period {
                from,
                to: if start < entries.len() {
                    new.to.max(from)
                } else {
                    from
                },
            }
        }
        None => Period::covering(entries),
    });
    let body = build_report(entries, policies, period, previous)
        .map_err(|e| BundleError(format!("cannot build the report: {e}")))?;
    let report = body
        .sign(&key)
        .map_err(|e| BundleError(format!("cannot sign the report: {e}")))?;
    finish(dir, entries, report, Vec::new(), generated_key)
}

/// Sub-directory of the bundle holding the chain of periodic reports.
pub const REPORTS_DIR: &str = "reports";

/// A periodic chain: one report every `every` from `start`, as the
/// operator writes them, into `dir/reports/report-<period end>.json`; the
/// bundle's `report.json` (and its views) is the newest of them.
#[derive(Clone, Debug)]
pub struct ChainOptions<'a> {
    pub start: Timestamp,
    pub every: Duration,
    /// From each time on (exclusive: reports whose period ends after it),
    /// reports are signed with the key in that file: a key rotation.
    pub rotations: &'a [(Timestamp, PathBuf)],
}

/// [`write_outputs`] with a chain of periodic reports instead of one report.
pub fn write_chained_outputs(
    dir: &Path,
    entries: &[LedgerEntry],
    policies: &[Policy],
    signing_key: Option<&Path>,
    chain: &ChainOptions<'_>,
) -> Result<BundleOutputs, BundleError> {
    fs::create_dir_all(dir).map_err(|e| BundleError(format!("{}: {e}", dir.display())))?;
    let (key, generated_key) = bundle_key(dir, signing_key)?;
    let mut rotations: Vec<(Timestamp, Ed25519SigningKey)> = Vec::new();
    for (at, path) in chain.rotations {
        rotations.push((*at, load_signing_key(path).map_err(BundleError)?));
    }
    rotations.sort_by_key(|(at, _)| *at);
    let reports = sign_report_chain(
        entries,
        policies,
        chain.start,
        chain.every,
        chain.start,
        |end| {
            rotations
                .iter()
                .rev()
                .find(|(at, _)| end > *at)
                .map_or(&key, |(_, k)| k)
        },
    )
    .map_err(|e| BundleError(format!("cannot build the report chain: {e}")))?;
    let reports_dir = dir.join(REPORTS_DIR);
    fs::create_dir_all(&reports_dir)
        .map_err(|e| BundleError(format!("{}: {e}", reports_dir.display())))?;
    let mut files = Vec::new();
    for r in &reports {
        let bytes = r
            .canonical_bytes()
            .map_err(|e| BundleError(format!("cannot encode a report: {e}")))?;
        let name = format!(
            "report-{}.json",
            r.report.period.to.strftime("%Y%m%dT%H%M%SZ")
        );
        write_file(&reports_dir, &name, &bytes, &mut files)?;
    }
    let Some(report) = reports.last().cloned() else {
        return Err(BundleError("the report chain is empty".into()));
    };
    finish(dir, entries, report, files, generated_key)
}

/// The key given, or the bundle's own pair (reused from `dir`, else generated there).
fn bundle_key(
    dir: &Path,
    signing_key: Option<&Path>,
) -> Result<(Ed25519SigningKey, Option<GeneratedKey>), BundleError> {
    if let Some(path) = signing_key {
        return Ok((load_signing_key(path).map_err(BundleError)?, None));
    }
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    let key = if private.exists() && public.exists() {
        load_signing_key(&private).map_err(BundleError)?
    } else {
        write_key_pair(&private, &public, true)
            .map_err(BundleError)?
            .0
    };
    let generated = GeneratedKey {
        private_key: private,
        public_key: public,
        key_id: key_id(&key.verifying_key()).to_hex(),
    };
    Ok((key, Some(generated)))
}

/// Writes the views of `report` after `files` and lists the key files last.
fn finish(
    dir: &Path,
    entries: &[LedgerEntry],
    report: SignedReport,
    mut files: Vec<PathBuf>,
    generated_key: Option<GeneratedKey>,
) -> Result<BundleOutputs, BundleError> {
    write_views(dir, entries, &report, &mut files)?;
    if let Some(k) = &generated_key {
        files.push(k.private_key.clone());
        files.push(k.public_key.clone());
    }
    Ok(BundleOutputs {
        files,
        generated_key,
        report,
    })
}

/// Writes the ledger, `report.json` and its CSV, Markdown and OpenReports views.
fn write_views(
    dir: &Path,
    entries: &[LedgerEntry],
    report: &SignedReport,
    files: &mut Vec<PathBuf>,
) -> Result<(), BundleError> {
    let mut ledger = Vec::with_capacity(entries.len() * 700);
    write_jsonl(entries, &mut ledger)
        .map_err(|e| BundleError(format!("cannot encode the ledger: {e}")))?;
    write_file(dir, LEDGER_FILE, &ledger, files)?;
    let json = report
        .canonical_bytes()
        .map_err(|e| BundleError(format!("cannot encode the report: {e}")))?;
    write_file(dir, REPORT_FILE, &json, files)?;
    write_file(dir, CSV_FILE, to_csv(report).as_bytes(), files)?;
    let md =
        to_markdown(report).map_err(|e| BundleError(format!("cannot render the report: {e}")))?;
    write_file(dir, MARKDOWN_FILE, md.as_bytes(), files)?;
    let yaml = to_openreports_yaml(report)
        .map_err(|e| BundleError(format!("cannot render the OpenReports view: {e}")))?;
    write_file(dir, OPENREPORT_FILE, yaml.as_bytes(), files)
}
