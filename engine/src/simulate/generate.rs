//! Reproducible synthetic traces for benchmarks (`komptroller gen-trace`).

/// A small deterministic generator (SplitMix64), so a generated trace is the
/// same on every machine for the same seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The policy embedded in generated traces: EU-style tiers with approvals,
/// 30-day budgets on half the namespaces, cluster and namespace caps.
const GENERATED_POLICY: &str = r#"{"apiVersion":"komptroller.dev/v1alpha1","kind":"ComputePolicy","metadata":{"name":"generated"},"spec":{"tiers":[{"name":"gpai","threshold":1e23,"action":"Admit"},{"name":"systemic","threshold":1e25,"action":"Escalate","approvals":{"required":2,"groups":["safety"]},"reporting":{"regulation":"EU AI Act Art. 52(1)","notifyWithin":"14d"}},{"name":"frontier","threshold":1e26,"action":"Reject"}],"capacity":{"cluster":{"maxAccelerators":180000},"perNamespace":{"maxAccelerators":12000}}}}"#;
const GENERATED_BUDGETS: &str = r#"{"apiVersion":"komptroller.dev/v1alpha1","kind":"ComputePolicy","metadata":{"name":"generated-budgets"},"spec":{"namespaceSelector":{"matchLabels":{"budgeted":"true"}},"budgets":[{"name":"ns-30d","scope":"Namespace","window":"30d","limit":8e24,"action":"Throttle"}]}}"#;

/// Writes a JSON Lines trace of `submissions` jobs (plus approvals and a few
/// deletions) arriving on average every 30 s: 60 namespaces, 3,000
/// lineages, H100/A100/MI300X jobs of 8–512 accelerators for 1–48 h.
/// `komptroller gen-trace` exposes it; BENCHMARKS.md uses it.
pub fn generate_trace<W: std::io::Write>(
    submissions: u64,
    seed: u64,
    mut out: W,
) -> std::io::Result<()> {
    let mut rng = SplitMix(seed);
    let mut namespaces = serde_json::Map::new();
    for n in 0..60 {
        let mut labels = serde_json::Map::new();
        labels.insert("team".into(), format!("team-{n}").into());
        labels.insert(
            "budgeted".into(),
            (if n % 2 == 0 { "true" } else { "false" }).into(),
        );
        namespaces.insert(format!("team-{n}"), serde_json::Value::Object(labels));
    }
    let policies: Vec<serde_json::Value> = [GENERATED_POLICY, GENERATED_BUDGETS]
        .iter()
        .map(|p| serde_json::from_str(p))
        .collect::<Result<_, _>>()?;
    let header = serde_json::json!({
        "start": "2026-01-01T00:00:00Z",
        "title": format!("generated trace: {submissions} submissions, seed {seed}"),
        "namespaces": namespaces,
        "policies": policies,
    });
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let accelerators = ["nvidia-h100-sxm", "nvidia-a100-sxm4-80gb", "amd-mi300x"];
    let mut t_ms: i64 = 0;
    // Approvals and deletions due later, written once the clock reaches them.
    let mut later: Vec<(i64, serde_json::Value)> = Vec::new();
    let flush = |until: i64,
                 later: &mut Vec<(i64, serde_json::Value)>,
                 out: &mut W|
     -> std::io::Result<()> {
        later.sort_by_key(|(at, _)| *at);
        let due = later.partition_point(|(at, _)| *at <= until);
        for (_, ev) in later.drain(..due) {
            serde_json::to_writer(&mut *out, &ev)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    for i in 0..submissions {
        // Exponential inter-arrival times, mean 30 s.
        t_ms += (-(1.0 - rng.unit()).ln() * 30_000.0) as i64;
        flush(t_ms, &mut later, &mut out)?;
        let ns = rng.below(60);
        let frontier = ns == 0 && rng.below(20) == 0;
        let count = if frontier {
            4096
        } else {
            8u64 << rng.below(7).min(rng.below(7))
        };
        let hours = if frontier { 72 } else { 1 + rng.below(48) };
        let runtime_min = (hours as f64 * 60.0 * (0.3 + 0.8 * rng.unit())) as u64;
        let lineage = if frontier {
            format!("frontier-{}", rng.below(3))
        } else {
            format!("lineage-{}", rng.below(3000))
        };
        let name = format!("job-{i}");
        let job = format!("team-{ns}/{name}");
        let mut model = serde_json::json!({"name": lineage});
        if !frontier && rng.below(10) == 0 {
            model["baseModel"] = format!("lineage-{}", rng.below(3000)).into();
        }
        let ev = serde_json::json!({
            "at": format!("{t_ms}ms"),
            "submit": {
                "name": name,
                "namespace": format!("team-{ns}"),
                "submitter": format!("user-{}", rng.below(500)),
                "priority": rng.below(3),
                "model": model,
                "accelerator": {"type": accelerators[rng.below(3) as usize]},
                "count": count,
                "maxDuration": format!("{hours}h"),
                "runtime": format!("{runtime_min}m"),
            }
        });
        serde_json::to_writer(&mut out, &ev)?;
        out.write_all(b"\n")?;
        if frontier {
            let at = t_ms + 3_600_000;
            for approver in ["safety-dana", "safety-erin"] {
                later.push((
                    at,
                    serde_json::json!({"at": format!("{at}ms"), "approve": {"job": job, "approver": approver, "groups": ["safety"]}}),
                ));
            }
        } else if rng.below(500) == 0 {
            let at = t_ms + 60_000;
            later.push((
                at,
                serde_json::json!({"at": format!("{at}ms"), "delete": job}),
            ));
        }
    }
    flush(i64::MAX, &mut later, &mut out)?;
    Ok(())
}
