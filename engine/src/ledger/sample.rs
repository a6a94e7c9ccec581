//! A deterministic generator of realistic ledger records (job lifecycles on
//! a virtual clock), for property tests, benchmarks and documentation
//! examples. Not used by the operator.

use jiff::Timestamp;

use super::record::{AcceleratorUse, LedgerEvent, LedgerRecord};
use crate::catalog::Precision;
use crate::decision::Verdict;
use crate::job::JobId;
use crate::policy::Mode;
use crate::projection::Projection;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};

/// SplitMix64: tiny, deterministic, good enough to vary test data.
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64) -> SampleRng {
        SampleRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const NAMESPACES: [&str; 4] = ["research", "prod-llm", "vision", "team-ü"];
const LINEAGES: [&str; 6] = [
    "atlas",
    "atlas-chat",
    "borealis",
    "cirrus",
    "delta-7b",
    "echo",
];
const ACCELERATORS: [(&str, f64); 3] = [
    ("nvidia-h100-sxm", 989e12),
    ("nvidia-a100-sxm-80gb", 312e12),
    ("amd-mi300x", 1307.4e12),
];

/// `n` records: job lifecycles (Decided, sometimes Approved, Started,
/// Finished / DeadlineExceeded / Deleted) interleaved with policy changes,
/// starting at `start`, a few minutes apart.
pub fn sample_records(n: usize, seed: u64, start: Timestamp) -> Vec<LedgerRecord> {
    let mut rng = SampleRng::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut t = start;
    let mut job_no = 0u64;
    while out.len() < n {
        job_no += 1;
        let ns = NAMESPACES[rng.below(4) as usize];
        let lineage = LINEAGES[rng.below(6) as usize].to_string();
        let base = (lineage == "atlas-chat").then(|| "atlas".to_string());
        let (acc, peak) = ACCELERATORS[rng.below(3) as usize];
        let count = 8 * (1 + rng.below(64) as u32);
        let hours = 1 + rng.below(200);
        let rate = peak * f64::from(count);
        let upper = rate * (hours as f64) * 3600.0;
        let job = JobId {
            namespace: ns.to_string(),
            name: format!("train-{job_no}"),
            uid: format!("{:08x}-{:04x}", rng.next_u64() as u32, job_no & 0xffff),
        };
        let accel = AcceleratorUse {
            kind: acc.to_string(),
            count,
        };
        let base_rec = |time: Timestamp, actor: &str, event: LedgerEvent| LedgerRecord {
            time,
            job: Some(job.clone()),
            lineage: Some(lineage.clone()),
            base_lineage: base.clone(),
            accelerator: Some(accel.clone()),
            actor: actor.to_string(),
            event,
        };
        let verdict = match rng.below(10) {
            0 => Verdict::Reject,
            1 => Verdict::Throttle,
            2 => Verdict::Escalate,
            _ => Verdict::Admit,
        };
        let admitted = verdict == Verdict::Admit;
        let mut charged_lineages = vec![lineage.clone()];
        if let Some(b) = &base {
            charged_lineages.push(b.clone());
        }
        let projection = Projection {
            accelerator: acc.to_string(),
            count,
            precision: Precision::Bf16,
            rate: FlopPerSecond(rate),
            upper_bound: Flop(upper),
            utilization: 0.4,
            expected: Flop(upper * 0.4),
            opcount: None,
            ceiling_precision: Precision::Fp8,
            adversarial_ceiling: Flop(upper * 2.0),
            max_duration: Seconds(hours as f64 * 3600.0),
            accelerator_seconds: AcceleratorSeconds(f64::from(count) * hours as f64 * 3600.0),
        };
        t += jiff::SignedDuration::from_secs(60 + rng.below(600) as i64);
        out.push(base_rec(
            t,
            "alice@example.com",
            LedgerEvent::Decided {
                verdict,
                enforced_verdict: verdict,
                mode: Mode::Enforce,
                policy: Some("eu-ai-act".into()),
                rule: Some(
                    if admitted {
                        "tier/below-gpai"
                    } else {
                        "budget/namespace-30d"
                    }
                    .into(),
                ),
                tier: Some(if upper > 1e23 { "gpai" } else { "small" }.into()),
                reason: format!(
                    "projected {:.3e} FLOP on {count} × {acc} for {hours}h \"quoted\"\n",
                    upper
                ),
                projection: Some(projection),
                governing: Flop(upper),
                charged: Flop(if admitted { upper } else { 0.0 }),
                charged_lineages: if admitted {
                    charged_lineages
                } else {
                    Vec::new()
                },
                // Every shape: absent (entries written before the field
                // existed; job 1, the docs/ledger.md example), none, one, two.
                selected_by: match job_no % 4 {
                    1 => None,
                    2 => Some(Vec::new()),
                    3 => Some(vec!["eu-ai-act".into()]),
                    _ => Some(vec!["eu-ai-act".into(), "lab-budgets".into()]),
                },
            },
        ));
        if rng.below(20) == 0 {
            out.push(LedgerRecord {
                time: t,
                job: None,
                lineage: None,
                base_lineage: None,
                accelerator: None,
                actor: "platform-admin".into(),
                event: LedgerEvent::PolicyChanged {
                    policy: "eu-ai-act".into(),
                    content_hash: format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                },
            });
        }
        if !admitted {
            continue;
        }
        if rng.below(8) == 0 {
            if count.is_multiple_of(3) {
                // An earlier approval taken back before this one (no draw
                // from the generator, so the rest of the sample is unchanged).
                out.push(base_rec(
                    t,
                    "komptroller",
                    LedgerEvent::ApprovalWithdrawn {
                        approver: "carol@example.com".into(),
                    },
                ));
            }
            out.push(base_rec(
                t,
                "bob@example.com",
                LedgerEvent::Approved {
                    approver: "bob@example.com".into(),
                    groups: vec!["safety".into()],
                    spec_hash: format!("{:016x}", rng.next_u64()),
                },
            ));
        }
        out.push(base_rec(t, "komptroller", LedgerEvent::Started));
        let ran = 0.2 + (rng.below(80) as f64) / 100.0;
        let secs = hours as f64 * 3600.0 * ran;
        t += jiff::SignedDuration::from_secs(30);
        let acc_s = AcceleratorSeconds(f64::from(count) * secs);
        let consumed = Flop(rate * secs * 0.4);
        let event = match rng.below(10) {
            0 => LedgerEvent::DeadlineExceeded {
                accelerator_seconds: acc_s,
                consumed,
            },
            1 => LedgerEvent::Deleted {
                accelerator_seconds: acc_s,
                consumed,
            },
            _ => LedgerEvent::Finished {
                succeeded: rng.below(5) != 0,
                accelerator_seconds: acc_s,
                consumed,
            },
        };
        out.push(base_rec(t, "komptroller", event));
    }
    out.truncate(n);
    out
}
