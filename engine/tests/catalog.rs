//! The built-in accelerator catalog against DOMAIN.md table C, GPU Feature
//! Discovery labels and every hardware name in Epoch AI's training-runs data.

use std::collections::BTreeMap;
use std::path::Path;

use komptroller_engine::catalog::{AcceleratorEntry, Catalog, PeakTflops, Precision};

const TRAINING_RUNS: &str = "tests/data/training-runs.csv";

const ALLOWED_RESOURCES: [&str; 6] = [
    "nvidia.com/gpu",
    "amd.com/gpu",
    "google.com/tpu",
    "aws.amazon.com/neuron",
    "habana.ai/gaudi",
    "huawei.com/Ascend910",
];

fn tflops(c: &Catalog, name: &str, p: Precision) -> Option<f64> {
    c.get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .peak_tflops
        .get(p)
}

#[test]
fn at_least_25_entries() {
    let c = Catalog::builtin();
    assert!(c.len() >= 25, "only {} entries", c.len());
}

/// DOMAIN.md table C, dense TFLOP/s per chip: (key, fp64, tf32, fp16/bf16, fp8, fp4).
/// fp64 is the tensor/matrix figure where the table gives "vector/tensor".
/// `None` means the table gives no figure ("—" or "n/p").
#[allow(clippy::type_complexity)]
const TABLE_C: &[(
    &str,
    Option<f64>,
    Option<f64>,
    f64,
    Option<f64>,
    Option<f64>,
)] = &[
    (
        "nvidia-a100-sxm4-80gb",
        Some(19.5),
        Some(156.0),
        312.0,
        None,
        None,
    ),
    (
        "nvidia-h100-sxm",
        Some(67.0),
        Some(494.5),
        989.0,
        Some(1979.0),
        None,
    ),
    (
        "nvidia-h100-pcie",
        Some(51.0),
        Some(378.0),
        756.0,
        Some(1513.0),
        None,
    ),
    (
        "nvidia-h200-sxm",
        Some(67.0),
        Some(494.5),
        989.0,
        Some(1979.0),
        None,
    ),
    (
        "nvidia-b200",
        Some(37.0),
        Some(1100.0),
        2250.0,
        Some(4500.0),
        Some(9000.0),
    ),
    (
        "nvidia-gb200",
        Some(40.0),
        Some(1250.0),
        2500.0,
        Some(5000.0),
        Some(10000.0),
    ),
    ("nvidia-l40s", None, Some(183.0), 362.0, Some(733.0), None),
    ("nvidia-a10g", None, Some(35.0), 70.0, None, None),
    ("amd-mi250x", Some(95.7), None, 383.0, None, None),
    (
        "amd-mi300x",
        Some(163.4),
        Some(653.7),
        1307.4,
        Some(2614.9),
        None,
    ),
    (
        "amd-mi325x",
        Some(163.4),
        Some(653.7),
        1307.4,
        Some(2614.9),
        None,
    ),
    ("google-tpu-v4", None, None, 275.0, None, None),
    ("google-tpu-v5e", None, None, 197.0, None, None),
    ("google-tpu-v5p", None, None, 459.0, None, None),
    ("google-tpu-v6e", None, None, 918.0, None, None),
    ("intel-gaudi2", None, None, 432.0, Some(865.0), None),
    ("intel-gaudi3", None, None, 1835.0, Some(1835.0), None),
    ("aws-trainium1", None, Some(190.0), 190.0, Some(190.0), None),
    (
        "aws-trainium2",
        None,
        Some(667.0),
        667.0,
        Some(1299.0),
        None,
    ),
];

#[test]
fn table_c_rows_present_with_domain_figures() {
    let c = Catalog::builtin();
    for &(key, fp64, tf32, half, fp8, fp4) in TABLE_C {
        let e = c
            .get(key)
            .unwrap_or_else(|| panic!("table C row {key} missing"));
        assert_eq!(e.name, key);
        let p = &e.peak_tflops;
        assert_eq!(p.fp64, fp64, "{key} fp64");
        // Intel Gaudi 3 publishes a TF32 figure table C does not list.
        if key != "intel-gaudi3" {
            assert_eq!(p.tf32, tf32, "{key} tf32");
        }
        assert_eq!(p.bf16, Some(half), "{key} bf16");
        if !key.starts_with("google-tpu") {
            assert_eq!(p.fp16, Some(half), "{key} fp16");
        }
        assert_eq!(p.fp8, fp8, "{key} fp8");
        assert_eq!(p.fp4, fp4, "{key} fp4");
    }
    // Trainium FP32 is in table C too.
    assert_eq!(tflops(&c, "aws-trainium1", Precision::Fp32), Some(47.5));
    assert_eq!(tflops(&c, "aws-trainium2", Precision::Fp32), Some(181.0));
}

#[test]
fn brief_extras_present() {
    let c = Catalog::builtin();
    for key in [
        "nvidia-v100-sxm2",
        "nvidia-a100-sxm4-40gb",
        "nvidia-a100-pcie",
        "nvidia-h800-sxm",
        "nvidia-a800-sxm4-80gb",
        "nvidia-a800-pcie",
        "google-tpu-v3",
        "google-tpu-v2",
    ] {
        assert!(c.get(key).is_some(), "{key} missing");
    }
    // V100 tensor FP16 is 125 dense (Volta has no sparsity).
    assert_eq!(tflops(&c, "NVIDIA V100", Precision::Fp16), Some(125.0));
    // Consumer Pascal runs FP16 at 1/64 of FP32; the fastest is FP32.
    let gtx = c.get("NVIDIA GeForce GTX 1080 Ti").unwrap();
    assert_eq!(gtx.fastest().unwrap().0, Precision::Fp32);
    let (fp16, fp32) = (gtx.peak_tflops.fp16.unwrap(), gtx.peak_tflops.fp32.unwrap());
    assert!((fp32 / fp16 - 64.0).abs() < 1.0, "{fp32}/{fp16}");
    // P100 (GP100) runs FP16 at twice FP32.
    let p100 = c.get("NVIDIA P100").unwrap();
    assert_eq!(
        p100.peak_tflops.fp16,
        p100.peak_tflops.fp32.map(|x| x * 2.0)
    );
    // Kepler and Maxwell have no FP16 arithmetic rate.
    assert_eq!(tflops(&c, "NVIDIA Tesla K80", Precision::Fp16), None);
    assert_eq!(tflops(&c, "NVIDIA M40", Precision::Fp16), None);
    // TPUs train in bf16.
    for k in ["google-tpu-v2", "google-tpu-v3", "google-tpu-v4"] {
        assert_eq!(
            c.get(k).unwrap().fastest().unwrap().0,
            Precision::Bf16,
            "{k}"
        );
    }
    // H800 keeps H100's tensor rates but not its FP64.
    assert_eq!(tflops(&c, "nvidia-h800-sxm", Precision::Bf16), Some(989.0));
    assert_eq!(tflops(&c, "nvidia-h800-sxm", Precision::Fp64), Some(1.0));
}

/// Sparse ("with sparsity") headline figures are exactly twice the dense
/// ones; none of them may appear in the catalog.
#[test]
fn no_sparse_figures() {
    let c = Catalog::builtin();
    let sparse: &[(&str, Precision, f64)] = &[
        ("nvidia-h100-sxm", Precision::Bf16, 1979.0),
        ("nvidia-h100-sxm", Precision::Fp8, 3958.0),
        ("nvidia-h100-sxm", Precision::Tf32, 989.0),
        ("nvidia-h100-pcie", Precision::Bf16, 1513.0),
        ("nvidia-h200-sxm", Precision::Bf16, 1979.0),
        ("nvidia-a100-sxm4-80gb", Precision::Bf16, 624.0),
        ("nvidia-a100-sxm4-80gb", Precision::Tf32, 312.0),
        ("nvidia-b200", Precision::Bf16, 4500.0),
        ("nvidia-b200", Precision::Fp4, 18000.0),
        ("nvidia-gb200", Precision::Fp4, 20000.0),
        ("nvidia-l40s", Precision::Bf16, 733.0),
        ("amd-mi300x", Precision::Fp16, 2614.9),
        ("amd-mi325x", Precision::Fp8, 5229.8),
        ("aws-trainium2", Precision::Fp8, 2563.0),
        ("nvidia-rtx-a5000", Precision::Bf16, 222.2),
    ];
    for &(key, p, fig) in sparse {
        let got = tflops(&c, key, p).unwrap();
        assert!(
            (got - fig).abs() > 1.0,
            "{key} {p} = {got}, the sparse figure"
        );
        // Within 2%: NVIDIA rounds (L40S: 362.05 dense, 733 sparse).
        assert!(
            (got * 2.0 - fig).abs() < 0.02 * fig,
            "{key} {p} = {got} is not half of {fig}"
        );
    }
    // Generic sanity: within one entry, fp8 never exceeds 2x bf16 and bf16
    // never exceeds 2x tf32 (a doubled figure would break the ladder).
    for e in c.entries() {
        let t = &e.peak_tflops;
        if let (Some(a), Some(b)) = (t.fp8, t.bf16) {
            assert!(a <= 2.05 * b, "{} fp8 {a} > 2 x bf16 {b}", e.name);
        }
        if let (Some(a), Some(b)) = (t.fp4, t.fp8) {
            assert!(a <= 2.05 * b, "{} fp4 {a} > 2 x fp8 {b}", e.name);
        }
    }
}

#[test]
fn every_entry_has_source_resource_and_utilization() {
    let c = Catalog::builtin();
    for e in c.entries() {
        assert!(e.source.len() > 20, "{} has no source", e.name);
        assert!(
            e.source.contains('[') || e.source.contains("Epoch") || e.source.contains("datasheet"),
            "{} source cites nothing: {}",
            e.name,
            e.source
        );
        assert!(
            ALLOWED_RESOURCES.contains(&e.resource_name.as_str()),
            "{}: resourceName {}",
            e.name,
            e.resource_name
        );
        let vendor_ok = match e.resource_name.as_str() {
            "nvidia.com/gpu" => e.name.starts_with("nvidia-"),
            "amd.com/gpu" => e.name.starts_with("amd-"),
            "google.com/tpu" => e.name.starts_with("google-tpu-"),
            "aws.amazon.com/neuron" => e.name.starts_with("aws-trainium"),
            "habana.ai/gaudi" => e.name.starts_with("intel-gaudi"),
            "huawei.com/Ascend910" => e.name.starts_with("huawei-ascend-"),
            _ => false,
        };
        assert!(vendor_ok, "{} does not match {}", e.name, e.resource_name);
        assert!(
            e.name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'),
            "key {} is not lower-case dashed",
            e.name
        );
        let u = e
            .default_utilization
            .expect("every entry sets defaultUtilization");
        assert!((0.1..=0.6).contains(&u), "{} utilization {u}", e.name);
        assert!(e.fastest().is_some(), "{} has no peak", e.name);
        for p in Precision::ALL {
            if let Some(v) = e.peak_tflops.get(p) {
                assert!(
                    v.is_finite() && v > 0.0 && v < 50_000.0,
                    "{} {p} {v}",
                    e.name
                );
            }
        }
    }
}

#[test]
fn hopper_is_the_tuned_default_volta_the_low_one() {
    let c = Catalog::builtin();
    let u = |k: &str| c.get(k).unwrap().default_utilization.unwrap();
    assert_eq!(u("nvidia-h100-sxm"), 0.4);
    assert_eq!(u("nvidia-a100-sxm4-40gb"), 0.3);
    assert_eq!(u("nvidia-v100-sxm2"), 0.2);
    assert_eq!(u("google-tpu-v4"), 0.3);
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// An alias shared by two entries would silently resolve to whichever was
/// inserted last.
#[test]
fn aliases_are_unambiguous() {
    let c = Catalog::builtin();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for e in c.entries() {
        for a in std::iter::once(&e.name).chain(e.aliases.iter()) {
            if let Some(prev) = seen.insert(normalize(a), &e.name) {
                assert_eq!(prev, e.name, "alias {a:?} names both {prev} and {}", e.name);
            }
        }
    }
}

#[test]
fn gpu_feature_discovery_labels_resolve() {
    let c = Catalog::builtin();
    let labels = [
        ("NVIDIA-H100-80GB-HBM3", "nvidia-h100-sxm"),
        ("NVIDIA-H100-PCIe", "nvidia-h100-pcie"),
        ("NVIDIA-H100-NVL", "nvidia-h100-nvl"),
        ("NVIDIA-H200", "nvidia-h200-sxm"),
        ("NVIDIA-H800", "nvidia-h800-sxm"),
        ("NVIDIA-B200", "nvidia-b200"),
        ("NVIDIA-GB200", "nvidia-gb200"),
        ("NVIDIA-A100-SXM4-80GB", "nvidia-a100-sxm4-80gb"),
        ("NVIDIA-A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
        ("NVIDIA-A100-PCIE-40GB", "nvidia-a100-pcie"),
        ("NVIDIA-A100-80GB-PCIe", "nvidia-a100-pcie"),
        ("NVIDIA-A800-SXM4-80GB", "nvidia-a800-sxm4-80gb"),
        ("NVIDIA-A30", "nvidia-a30"),
        ("NVIDIA-A10", "nvidia-a10"),
        ("NVIDIA-A10G", "nvidia-a10g"),
        ("NVIDIA-L40S", "nvidia-l40s"),
        ("NVIDIA-L4", "nvidia-l4"),
        ("Tesla-T4", "nvidia-t4"),
        ("Tesla-V100-SXM2-16GB", "nvidia-v100-sxm2"),
        ("Tesla-V100-SXM2-32GB", "nvidia-v100-sxm2"),
        ("Tesla-V100-PCIE-16GB", "nvidia-v100-pcie"),
        ("Tesla-V100S-PCIE-32GB", "nvidia-v100s-pcie"),
        ("Tesla-V100-DGXS-32GB", "nvidia-v100-dgxs"),
        ("Tesla-P100-PCIE-16GB", "nvidia-p100-pcie"),
        ("Tesla-P100-SXM2-16GB", "nvidia-p100-sxm2"),
        ("Tesla-K80", "nvidia-tesla-k80"),
        ("NVIDIA-GeForce-RTX-3090", "nvidia-geforce-rtx-3090"),
        ("NVIDIA-RTX-A5000", "nvidia-rtx-a5000"),
        ("AMD_Instinct_MI300X_OAM", "amd-mi300x"),
        ("tpu-v4-podslice", "google-tpu-v4"),
        ("tpu-v5-lite-podslice", "google-tpu-v5e"),
        ("tpu-v5p-slice", "google-tpu-v5p"),
        ("tpu-v6e-slice", "google-tpu-v6e"),
        ("HL-225", "intel-gaudi2"),
        ("trn2", "aws-trainium2"),
    ];
    for (label, key) in labels {
        assert_eq!(
            c.resolve(label).map(|e| e.name.as_str()),
            Ok(key),
            "{label}"
        );
    }
}

#[test]
fn epoch_generic_names_choose_a_part() {
    let c = Catalog::builtin();
    assert_eq!(c.get("NVIDIA A100").unwrap().name, "nvidia-a100-sxm4-40gb");
    assert_eq!(c.get("NVIDIA V100").unwrap().name, "nvidia-v100-sxm2");
    assert_eq!(c.get("NVIDIA P100").unwrap().name, "nvidia-p100-sxm2");
    assert_eq!(c.get("Amazon Trainium1").unwrap().name, "aws-trainium1");
    assert_eq!(c.get("Google TPU v3").unwrap().name, "google-tpu-v3");
    assert_eq!(
        c.get("Huawei Ascend 910").unwrap().name,
        "huawei-ascend-910"
    );
    assert_eq!(
        c.get("NVIDIA A100 SXM4 40 GB").unwrap().name,
        "nvidia-a100-sxm4-40gb"
    );
}

/// Every hardware name Epoch AI's training-runs data uses (the column may
/// list several, comma-separated) resolves to a catalog entry.
#[test]
fn every_training_runs_hardware_resolves() {
    let c = Catalog::builtin();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TRAINING_RUNS);
    let mut rdr = csv::Reader::from_path(&path).expect("training-runs.csv");
    let col = rdr
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "Training hardware")
        .expect("Training hardware column");
    let mut names = std::collections::BTreeSet::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        for h in rec[col].split(',').map(str::trim).filter(|h| !h.is_empty()) {
            names.insert(h.to_string());
        }
    }
    assert!(
        names.len() >= 38,
        "only {} hardware names read",
        names.len()
    );
    let missing: Vec<_> = names.iter().filter(|n| c.get(n).is_none()).collect();
    assert!(missing.is_empty(), "not in the catalog: {missing:?}");
}

#[test]
fn policy_override_replaces_and_adds() {
    let c = Catalog::builtin();
    let mut h100 = c.get("nvidia-h100-sxm").unwrap().clone();
    h100.peak_tflops.bf16 = Some(500.0);
    h100.default_utilization = Some(0.5);
    let custom = AcceleratorEntry {
        name: "acme-npu-1".into(),
        resource_name: "acme.example/npu".into(),
        aliases: vec!["ACME NPU".into()],
        peak_tflops: PeakTflops {
            bf16: Some(100.0),
            ..PeakTflops::default()
        },
        default_utilization: None,
        source: "vendor sheet".into(),
    };
    let o = c.with_overrides(&[h100, custom]);
    assert_eq!(o.len(), c.len() + 1);
    // Replaced, also when reached through an alias.
    let e = o.resolve("NVIDIA-H100-80GB-HBM3").unwrap();
    assert_eq!(e.peak_tflops.bf16, Some(500.0));
    assert_eq!(e.default_utilization, Some(0.5));
    assert_eq!(
        o.peak("nvidia-h100-sxm", Precision::Bf16).unwrap().0,
        500e12
    );
    // The built-in catalog is untouched.
    assert_eq!(
        c.peak("nvidia-h100-sxm", Precision::Bf16).unwrap().0,
        989e12
    );
    assert_eq!(o.resolve("acme npu").unwrap().name, "acme-npu-1");
    assert!(o.resource_names().contains(&"acme.example/npu"));
    assert!(c.get("acme-npu-1").is_none());
}

#[test]
fn policy_yaml_entry_parses_as_the_crd_holds_it() {
    let yaml = r#"
- name: nvidia-h100-sxm
  resourceName: nvidia.com/gpu
  aliases: [NVIDIA-H100-80GB-HBM3]
  peakTflops: {bf16: 900, fp8: 1800}
  defaultUtilization: 0.35
  source: "measured"
"#;
    let overrides = Catalog::from_yaml(yaml).unwrap();
    let e: Vec<AcceleratorEntry> = overrides.entries().cloned().collect();
    let c = Catalog::builtin().with_overrides(&e);
    let h = c.get("NVIDIA-H100-80GB-HBM3").unwrap();
    assert_eq!(h.peak_tflops.bf16, Some(900.0));
    assert_eq!(
        h.peak_tflops.fp64, None,
        "an override replaces the whole entry"
    );
    assert_eq!(h.fastest().unwrap().0, Precision::Fp8);
}

#[test]
fn unknown_precision_and_name_errors_are_clear() {
    let c = Catalog::builtin();
    let err = c
        .peak("google-tpu-v4", Precision::Fp8)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bf16") && err.contains("google-tpu-v4"),
        "{err}"
    );
    let err = c.resolve("nvidia-h100-sxm6").unwrap_err().to_string();
    assert!(err.contains("nvidia-h100-sxm"), "{err}");
    let err = c.resolve("tpu v4").map(|e| e.name.clone());
    assert_eq!(err.as_deref(), Ok("google-tpu-v4"));
}
