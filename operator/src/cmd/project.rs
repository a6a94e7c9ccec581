//! `komptroller project -f job.yaml [--policy p.yaml …] [-o text|json]`:
//! one decision, offline, with every figure of the projection named.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::{Engine, Event};
use komptroller_engine::manifest::parse_training_job;
use komptroller_engine::units::sci;
use serde_json::json;

use super::{Output, fail, load_policies, print_out, read_file};
use crate::crd::TrainingJobSpec;

#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    /// A TrainingJob manifest, or a batch/v1 Job for a Kueue queue
    /// (`kueue.x-k8s.io/queue-name`), as `kubectl apply -f` takes it.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// ComputePolicy manifests (may hold several documents). None: no policy governs.
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Labels of the job's namespace, for policies' namespaceSelector (k=v).
    #[arg(long = "namespace-label", value_name = "KEY=VALUE")]
    pub namespace_labels: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(args: ProjectArgs) -> ExitCode {
    match project(&args) {
        Ok(text) => print_out(&text),
        Err(message) => fail(&message),
    }
}

fn project(args: &ProjectArgs) -> Result<String, String> {
    let policies = load_policies(&args.policies)?;
    let mut catalog = Catalog::builtin();
    for p in &policies {
        catalog = catalog.with_overrides(&p.spec.accelerators);
    }
    let name = args.file.display().to_string();
    let text = read_file(&args.file)?;
    // A Kueue-managed batch/v1 Job reads as the Workload Kueue would make
    // for it; anything else as a TrainingJob.
    let doc = serde_saphyr::from_str::<serde_json::Value>(&text).ok();
    let kueue_job = doc
        .as_ref()
        .filter(|v| v["kind"] == "Job" && v["apiVersion"] == "batch/v1");
    let (kind, mut job) = match kueue_job {
        Some(doc) => (
            "Job (Kueue)",
            crate::kueue::workload::job_manifest_request(doc, &catalog)
                .map_err(|e| format!("{name}: {e}"))?,
        ),
        None => {
            let mut job = parse_training_job(&text, &catalog, &name).map_err(|e| e.to_string())?;
            // The spec hash as the controller computes it once the cluster
            // stores the job (quantities such as `nvidia.com/gpu: 8` read
            // as strings).
            if let Some(hash) = doc
                .as_ref()
                .and_then(|d| d.get("spec"))
                .and_then(TrainingJobSpec::spec_hash_of)
            {
                job.spec_hash = hash;
            }
            ("TrainingJob", job)
        }
    };
    let mut labels = BTreeMap::new();
    for l in &args.namespace_labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("--namespace-label: {l:?} must be KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    job.namespace_labels = labels.into();
    let mut engine = Engine::new(Catalog::builtin());
    let now = Timestamp::now();
    for p in &policies {
        engine
            .apply(now, Event::UpsertPolicy(p.clone()))
            .map_err(|e| e.to_string())?;
    }
    let id = job.id.clone();
    engine
        .apply(now, Event::Submit(job.clone()))
        .map_err(|e| e.to_string())?;
    let decision = engine
        .decision(&id)
        .cloned()
        .ok_or_else(|| format!("{name}: the engine made no decision"))?;
    match args.output {
        Output::Json => {
            let out = json!({
                "job": id,
                "accelerators": job.count,
                "specHash": job.spec_hash,
                "policies": policies.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
                "projection": decision.projection,
                "decision": decision,
            });
            serde_json::to_string_pretty(&out)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())
        }
        Output::Text => {
            let mut s = format!("{kind} {id}\n");
            if let Some(p) = &decision.projection {
                s.push_str(&format!(
                    "  accelerators        {} × {} at {}\n",
                    p.count, p.accelerator, p.precision
                ));
                s.push_str(&format!("  rate                {}\n", p.rate));
                s.push_str(&format!(
                    "  upper bound         {}  (rate × maxDuration {})\n",
                    p.upper_bound, job.max_duration
                ));
                s.push_str(&format!(
                    "  expected            {}  (utilization {})\n",
                    p.expected, p.utilization
                ));
                s.push_str(&format!(
                    "  adversarial ceiling {}  (at {}, the fastest precision the hardware supports)\n",
                    p.adversarial_ceiling, p.ceiling_precision
                ));
                match p.opcount {
                    Some(op) => s.push_str(&format!("  opcount 6·N·D       {op}\n")),
                    None => s.push_str(
                        "  opcount 6·N·D       — (declare spec.model.parameters and tokens)\n",
                    ),
                }
            }
            s.push_str(&format!(
                "  policies            {}\n",
                if policies.is_empty() {
                    "none given (--policy FILE)".to_string()
                } else {
                    policies
                        .iter()
                        .map(|p| p.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
            s.push_str(&format!(
                "  governing           {}; lineage {} after this job: {} FLOP\n",
                decision.governing,
                job.lineage(),
                sci(decision.lineage_total.0)
            ));
            s.push_str(&format!("verdict: {}\n", decision.verdict));
            if decision.enforced_verdict != decision.verdict {
                s.push_str(&format!("enforce would: {}\n", decision.enforced_verdict));
            }
            if let Some(r) = &decision.rule {
                s.push_str(&format!(
                    "rule: {}{}\n",
                    decision.policy.as_deref().unwrap_or("-"),
                    format_args!("/{r}")
                ));
            }
            s.push_str(&format!("reason: {}\n", decision.reason));
            for w in &decision.warnings {
                s.push_str(&format!("warning: {w}\n"));
            }
            if let Some(a) = &decision.approvals {
                s.push_str(&format!(
                    "approvals: {} distinct approver(s) from {}, not the submitter\n",
                    a.required,
                    if a.groups.is_empty() {
                        "any group".to_string()
                    } else {
                        a.groups.join(", ")
                    }
                ));
            }
            Ok(s)
        }
    }
}
