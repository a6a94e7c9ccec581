//! `komptroller simulate`: replay a trace through the engine on a virtual
//! clock. With no arguments it replays the bundled quarter of a research
//! organisation under the bundled policies.

use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;
use komptroller_engine::GoDuration;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::simulate::{
    SimulateOptions, generate_trace, parse_trace, read_jsonl_trace, simulate, simulate_stream,
};

use super::{Output, fail, load_policies, print_out, read_file};

const DEFAULT_POLICY: &str = include_str!("../../assets/default-policy.yaml");
const DEFAULT_TRACE: &str = include_str!("../../assets/default-trace.yaml");

#[derive(clap::Args, Debug)]
#[command(after_long_help = TRACE_HELP)]
pub struct SimulateArgs {
    /// ComputePolicy manifests. None: the bundled policies (unless the trace carries its own).
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// A trace (YAML or JSON). None: the bundled quarter.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Lines of timeline, queue waits and lineages to print in text output.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Skip the timeline, the ledger records and the worded reasons (for very
    /// large traces): the summary, its counts and totals are the same.
    #[arg(long, conflicts_with = "out")]
    pub summary_only: bool,
    /// Write the books to DIR: ledger.jsonl, report.json (signed), report.csv,
    /// report.md and openreport.yaml.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Ed25519 signing key (PKCS#8 PEM) for the report. None with --out: one is
    /// generated in DIR (signing-key.pem, public-key.pem) and its paths printed.
    #[arg(long, value_name = "FILE", requires = "out")]
    pub key: Option<PathBuf>,
    /// With --out: sign a chain of reports, one every DURATION from the
    /// trace's start (as the operator's --report-interval), into
    /// DIR/reports/report-<period end>.json; report.json is the newest.
    #[arg(long, value_name = "DURATION", requires = "out")]
    pub report_every: Option<GoDuration>,
    /// With --report-every: sign the reports whose period ends after TIME
    /// (RFC 3339) with the PKCS#8 private key in FILE, a key rotation (repeatable).
    #[arg(long, value_name = "TIME=FILE", requires = "report_every", value_parser = parse_rotation)]
    pub rotate_key: Vec<(Timestamp, PathBuf)>,
}

/// `TIME=FILE` of --rotate-key.
fn parse_rotation(s: &str) -> Result<(Timestamp, PathBuf), String> {
    let (time, file) = s.split_once('=').ok_or_else(|| {
        format!("--rotate-key {s:?}: expected TIME=FILE, e.g. 2026-07-01T00:00:00Z=new-key.pem")
    })?;
    let at: Timestamp = time.parse().map_err(|e| {
        format!(
            "--rotate-key {s:?}: {time:?} is not an RFC 3339 time such as 2026-07-01T00:00:00Z: {e}"
        )
    })?;
    if file.is_empty() {
        return Err(format!(
            "--rotate-key {s:?}: the key FILE after '=' is empty"
        ));
    }
    Ok((at, PathBuf::from(file)))
}

const TRACE_HELP: &str = "\
Trace format (YAML or JSON):
  start: 2026-01-05T09:00:00Z          virtual time zero
  namespaces: {research: {team: research}}   namespace labels
  policies: [ComputePolicy documents]  optional, applied at time zero
  events:                              each with `at` (offset, e.g. 3d4h) and one of:
    - {at: 1d, submit: {name, namespace, submitter, groups, priority, model: {name, baseModel,
        parameters, tokens}, accelerator: {type, precision}, count, maxDuration, runtime, fails}}
    - {at: 2d, approve: {job: ns/name, approver, groups}}
    - {at: 3d, delete: ns/name}
    - {at: 4d, policy: ComputePolicy document}
    - {at: 5d, removePolicy: name}
Admitted jobs start at once and end after `runtime` (absent: at maxDuration, DeadlineExceeded).";

pub fn run(args: SimulateArgs) -> ExitCode {
    match simulate_cmd(&args) {
        Ok(text) => print_out(&text),
        Err(message) => fail(&message),
    }
}

fn simulate_cmd(args: &SimulateArgs) -> Result<String, String> {
    if let Some(every) = args.report_every.filter(|d| d.is_zero()) {
        return Err(format!(
            "--report-every {every}: must be positive, e.g. 1d (one report a day)"
        ));
    }
    let options = SimulateOptions {
        timeline: !args.summary_only,
        records: !args.summary_only,
    };
    if let Some(path) = args
        .trace
        .as_ref()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
    {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let (header, events) =
            read_jsonl_trace(std::io::BufReader::new(file), &name).map_err(|e| e.to_string())?;
        let policies = if args.policies.is_empty() && header.policies.is_empty() {
            parse_policies(DEFAULT_POLICY, "bundled policy").map_err(|e| e.to_string())?
        } else {
            load_policies(&args.policies)?
        };
        let sim = simulate_stream(Catalog::builtin(), policies, &header, events, &options)?;
        return render(&sim, args, header.start);
    }
    let trace = match &args.trace {
        Some(p) => {
            parse_trace(&read_file(p)?, &p.display().to_string()).map_err(|e| e.to_string())?
        }
        None => parse_trace(DEFAULT_TRACE, "bundled trace").map_err(|e| e.to_string())?,
    };
    let policies = if !args.policies.is_empty() {
        load_policies(&args.policies)?
    } else if trace.policies.is_empty() {
        parse_policies(DEFAULT_POLICY, "bundled policy").map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let sim = simulate(Catalog::builtin(), policies, &trace, &options)?;
    render(&sim, args, Some(trace.start))
}

fn render(
    sim: &komptroller_engine::simulate::Simulation,
    args: &SimulateArgs,
    start: Option<Timestamp>,
) -> Result<String, String> {
    let written = match &args.out {
        Some(dir) => {
            let mut ledger = komptroller_engine::ledger::Ledger::new();
            for r in &sim.records {
                ledger
                    .append(r.clone())
                    .map_err(|e| format!("ledger: {e}"))?;
            }
            let outputs = match (args.report_every, start) {
                (Some(every), Some(start)) => super::bundle::write_chained_outputs(
                    dir,
                    ledger.entries(),
                    &sim.policies,
                    args.key.as_deref(),
                    &super::bundle::ChainOptions {
                        start,
                        every: every.0,
                        rotations: &args.rotate_key,
                    },
                ),
                _ => super::bundle::write_outputs(
                    dir,
                    ledger.entries(),
                    &sim.policies,
                    args.key.as_deref(),
                    None,
                    None,
                ),
            }
            .map_err(|e| e.to_string())?;
            format!("{outputs}")
        }
        None => String::new(),
    };
    let mut text = render_sim(sim, args)?;
    if !written.is_empty() {
        match args.output {
            // Keep stdout machine-readable: file paths go to stderr.
            Output::Json => eprint!("{written}"),
            Output::Text => {
                text.push('\n');
                text.push_str(&written);
            }
        }
    }
    Ok(text)
}

fn render_sim(
    sim: &komptroller_engine::simulate::Simulation,
    args: &SimulateArgs,
) -> Result<String, String> {
    match args.output {
        Output::Text => Ok(sim.render_text(args.limit)),
        Output::Json => {
            let out = serde_json::json!({
                "summary": sim.summary,
                "timeline": sim.timeline,
                "jobs": sim.jobs,
            });
            serde_json::to_string_pretty(&out)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())
        }
    }
}

/// `komptroller gen-trace`: a reproducible synthetic trace for benchmarks.
#[derive(clap::Args, Debug)]
pub struct GenTraceArgs {
    /// Number of submissions.
    #[arg(long, default_value_t = 1_000_000)]
    pub submissions: u64,
    /// Seed of the deterministic generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file (JSON Lines; use the .jsonl extension so `simulate --trace` streams it).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
}

pub fn gen_trace(args: GenTraceArgs) -> ExitCode {
    let result = std::fs::File::create(&args.out).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        generate_trace(args.submissions, args.seed, &mut w)?;
        std::io::Write::flush(&mut w)
    });
    match result {
        Ok(()) => {
            println!(
                "wrote {} ({} submissions, seed {})",
                args.out.display(),
                args.submissions,
                args.seed
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{}: {e}", args.out.display())),
    }
}
