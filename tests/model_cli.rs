//! `mtmed3d model summary`: the numbers a user reads off the command line.

use std::process::{Command, Output};

fn mtmed3d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtmed3d"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = mtmed3d(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn part<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no part `{name}` in {v}"))
}

#[test]
fn reference_summary_has_the_reference_parameter_counts() {
    let v = json(&["model", "summary", "--preset", "reference", "--json"]);
    assert_eq!(v["input"], serde_json::json!([4, 96, 96, 96]));
    // the reference implementation's counts (encoder = the paper's 8.063M)
    assert_eq!(part(&v, "encoder")["parameters"], 8_063_154);
    assert_eq!(part(&v, "segmentation")["parameters"], 54_128_787);
    assert_eq!(part(&v, "classification")["parameters"], 11_288_578);
    // the patch embedding alone (4→48, k=2, 48³ outputs) is 48³·48·4·8 MACs; the encoder has more
    let embed: u64 = 48 * 48 * 48 * 48 * 4 * 8;
    assert!(part(&v, "encoder")["macs"].as_u64().unwrap() > embed);
    // DenseNet stem alone: 7³ conv 3→64 on 48³ outputs
    let stem: u64 = 48 * 48 * 48 * 64 * 3 * 343;
    assert!(part(&v, "classification")["macs"].as_u64().unwrap() > stem);

    let parts = v["parts"].as_array().unwrap();
    let sum = |key: &str| parts.iter().map(|p| p[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(v["total_parameters"].as_u64().unwrap(), sum("parameters"));
    assert_eq!(v["total_macs"].as_u64().unwrap(), sum("macs"));
    let m = &v["memory"];
    let weights = 4 * sum("parameters");
    assert_eq!(m["weights_bytes"].as_u64().unwrap(), weights);
    assert_eq!(m["optimizer_bytes"].as_u64().unwrap(), 2 * weights);
    assert_eq!(
        m["total_bytes"].as_u64().unwrap(),
        4 * weights + 4 * sum("activations")
    );
}

#[test]
fn summary_table_names_every_part() {
    let out = mtmed3d(&["model", "summary", "--preset", "tiny"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("model `tiny`, input [4, 32, 32, 32]"),
        "{text}"
    );
    for name in [
        "encoder",
        "segmentation",
        "classification",
        "detection",
        "total",
    ] {
        assert!(text.contains(name), "missing `{name}` in:\n{text}");
    }
    assert!(text.contains("training step (f32, AdamW)"), "{text}");
}

#[test]
fn an_unknown_preset_is_named_with_the_known_ones() {
    let out = mtmed3d(&["model", "summary", "--preset", "huge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("huge") && err.contains("reference, tiny"),
        "{err}"
    );
}
