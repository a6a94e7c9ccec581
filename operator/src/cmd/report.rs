//! `komptroller report`: build and sign a compute report from a ledger, or
//! render / extract the signed bytes of an existing one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;
use komptroller_engine::ledger::verify_jsonl;
use komptroller_engine::report::{
    Period, build_report, parse_report, to_csv, to_markdown, to_openreports_yaml,
};

use super::bundle::load_signing_key;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// The signed canonical JSON (report.json).
    Json,
    /// Totals as CSV.
    Csv,
    /// A readable summary.
    Markdown,
    /// An OpenReports (openreports.io/v1alpha1) ClusterReport.
    Openreports,
}

/// Build a signed report from a ledger, or render an existing report.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
komptroller report --ledger ledger.jsonl --policy policy.yaml --key signing-key.pem --out report.json\n  \
komptroller report --render report.json --format markdown\n  \
komptroller report --signed-bytes report.json > signed.json   # the exact bytes the signature covers")]
pub struct ReportArgs {
    /// Ledger (JSON Lines) from seq 0; the report covers up to its last entry.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["render", "signed_bytes"])]
    pub ledger: Option<PathBuf>,
    /// ComputePolicy manifests whose reporting thresholds apply (repeatable).
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Ed25519 private key (PKCS#8 PEM) to sign with.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The report this one continues (its range ends where this one starts).
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Start of the period (RFC 3339). Default: the previous report's end, else the first entry's time.
    #[arg(long, value_name = "TIME")]
    pub from: Option<Timestamp>,
    /// End of the period (RFC 3339). Default: the last entry's time.
    #[arg(long, value_name = "TIME")]
    pub to: Option<Timestamp>,
    /// Render this existing signed report instead of building one.
    #[arg(long, value_name = "REPORT")]
    pub render: Option<PathBuf>,
    /// Print the exact bytes the signature of this report covers (for openssl).
    #[arg(long, value_name = "REPORT", conflicts_with = "render")]
    pub signed_bytes: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: ReportFormat,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn emit(out: &Option<PathBuf>, bytes: &[u8]) -> ExitCode {
    let res = match out {
        Some(p) => std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display())),
        None => std::io::stdout()
            .write_all(bytes)
            .and_then(|()| std::io::stdout().flush())
            .map_err(|e| format!("standard output: {e}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

pub fn run(args: ReportArgs) -> ExitCode {
    match build(&args) {
        Ok(bytes) => emit(&args.out, &bytes),
        Err(e) => super::fail(&e),
    }
}

fn build(args: &ReportArgs) -> Result<Vec<u8>, String> {
    if let Some(path) = &args.signed_bytes {
        let r = parse_report(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        return r
            .signed_bytes()
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    let report = if let Some(path) = &args.render {
        parse_report(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let Some(ledger_path) = &args.ledger else {
            return Err(
                "give --ledger FILE to build a report, or --render REPORT to render one".into(),
            );
        };
        let Some(key_path) = &args.key else {
            return Err(
                "--key: a report is signed; give the PKCS#8 private key (komptroller keygen makes one)"
                    .into(),
            );
        };
        let entries = verify_jsonl(&read(ledger_path)?)
            .map_err(|e| format!("{}: {e}", ledger_path.display()))?;
        let policies = super::load_policies(&args.policies)?;
        let key = load_signing_key(key_path)?;
        let previous = match &args.previous {
            Some(p) => Some(parse_report(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        let start = usize::try_from(previous.as_ref().map_or(0, |p| p.report.range.to))
            .unwrap_or(usize::MAX)
            .min(entries.len());
        let covering = Period::covering(&entries[start..]);
        let from = args
            .from
            .or(previous.as_ref().map(|p| p.report.period.to))
            .unwrap_or(covering.from);
        let to = args.to.unwrap_or(covering.to.max(from));
        let body = build_report(&entries, &policies, Period { from, to }, previous.as_ref())
            .map_err(|e| e.to_string())?;
        body.sign(&key).map_err(|e| e.to_string())?
    };
    Ok(match args.format {
        ReportFormat::Json => report.canonical_bytes().map_err(|e| e.to_string())?,
        ReportFormat::Csv => to_csv(&report).into_bytes(),
        ReportFormat::Markdown => to_markdown(&report)
            .map_err(|e| e.to_string())?
            .into_bytes(),
        ReportFormat::Openreports => to_openreports_yaml(&report)?.into_bytes(),
    })
}
