//! README.md's metrics list stays equal to the metrics reference, which is
//! itself generated from `operator/src/metrics.rs` (see the test there).

use std::collections::BTreeSet;

fn read(rel: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_owned() + "/" + rel;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Metric names in the first column of the markdown table rows of `text`.
fn names_in_table(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("komptroller_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_lists_exactly_the_generated_metrics() {
    let readme = read("README.md");
    let begin = readme
        .find("<!-- metrics:begin -->")
        .expect("README.md has a <!-- metrics:begin --> marker");
    let end = readme
        .find("<!-- metrics:end -->")
        .expect("README.md has a <!-- metrics:end --> marker");
    assert!(begin < end, "metrics markers out of order in README.md");
    let in_readme = names_in_table(&readme[begin..end]);
    let generated = names_in_table(&read("docs/metrics.md"));
    assert!(
        generated.len() >= 10,
        "docs/metrics.md lists only {} metrics; did its table format change?",
        generated.len()
    );
    let missing: Vec<_> = generated.difference(&in_readme).collect();
    let extra: Vec<_> = in_readme.difference(&generated).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md's metrics reference differs from docs/metrics.md (generated from the code): \
         missing from README {missing:?}, not exported {extra:?}"
    );
}
