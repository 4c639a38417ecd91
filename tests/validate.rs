//! `validate`: every kind of mistake is reported at the right line and column, with a fix,
//! and all mistakes of a file come out in one run.

use std::path::Path;

use mtmed3d_pipeline::{Diagnostic, DiagnosticKind as K, config};

fn errors(yaml: &str) -> Vec<Diagnostic> {
    match config::parse_str(yaml, Path::new("p.yaml"), &[], &mtmed3d_stages::registry()) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(d) => d.items,
    }
}

fn only(yaml: &str) -> Diagnostic {
    let mut all = errors(yaml);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

fn at(d: &Diagnostic) -> (K, u64, u64) {
    (d.kind, d.line, d.column)
}

const SOURCE: &str = "source:\n  synthetic: {cases: 2}\n";

#[test]
fn unknown_stage_is_located_with_the_nearest_name() {
    let d = only(&format!(
        "{SOURCE}stages:\n  - scale: {{factor: 2}}\n  - rand_nois: {{std: 0.1}}\n"
    ));
    assert_eq!(at(&d), (K::UnknownStage, 5, 5));
    assert_eq!(d.message, "unknown stage `rand_nois`");
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .starts_with("did you mean `rand_noise`?"),
        "{:?}",
        d.help
    );
}

#[test]
fn unknown_field_is_located_at_the_key() {
    let d = only(&format!(
        "{SOURCE}stages:\n  - scale:\n      factor: 2\n      fieldd: x\n"
    ));
    assert_eq!(at(&d), (K::UnknownField, 6, 7));
    assert_eq!(d.message, "unknown parameter `fieldd` for `scale`");
    assert_eq!(d.help.as_deref(), Some("did you mean `field`?"));
    // A misspelt required parameter is both unknown and missing: both are said.
    let all = errors(&format!("{SOURCE}stages:\n  - scale:\n      factr: 2\n"));
    let found: Vec<_> = all.iter().map(at).collect();
    assert_eq!(
        found,
        vec![(K::MissingField, 4, 5), (K::UnknownField, 5, 7)]
    );
    let d = &all[1];
    assert_eq!(d.message, "unknown parameter `factr` for `scale`");
    assert_eq!(d.help.as_deref(), Some("did you mean `factor`?"));
}

#[test]
fn wrong_type_is_located_at_the_value() {
    let d = only(&format!("{SOURCE}stages:\n  - scale: {{factor: big}}\n"));
    assert_eq!(at(&d), (K::WrongType, 4, 21));
    assert_eq!(
        d.message,
        "`scale`: wrong type: found the string `big`, expected a number"
    );

    let d = only("source:\n  synthetic: {cases: 2, shape: [4, 4]}\nsinks:\n  - discard: {}\n");
    assert_eq!(at(&d), (K::InvalidValue, 2, 32));
    assert!(
        d.message.contains("wrong number of elements"),
        "{}",
        d.message
    );

    let d = only(&format!(
        "{SOURCE}stages:\n  - scale: {{factor: 2, workers: two}}\n"
    ));
    assert_eq!(at(&d), (K::WrongType, 4, 33));
    assert!(d.message.starts_with("`workers`"), "{}", d.message);
}

#[test]
fn missing_field_points_at_the_stage() {
    let d = only(&format!("{SOURCE}stages:\n  - delay: {{}}\n"));
    assert_eq!(at(&d), (K::MissingField, 4, 5));
    assert_eq!(d.message, "`delay`: missing field `ms`");
    assert!(d.help.as_deref().unwrap().contains("delay: {ms: ...}"));
}

#[test]
fn a_field_nothing_upstream_writes_is_reported_where_it_is_named() {
    let d = only(&format!(
        "{SOURCE}stages:\n  - scale: {{field: lable, factor: 2}}\nsinks:\n  - json_write: {{path: out/a.jsonl, fields: [image]}}\n"
    ));
    assert_eq!(at(&d), (K::UnsatisfiedField, 4, 20));
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .contains("fields available here: image")
    );
    assert_eq!(
        d.message,
        "`scale` reads field `lable`, but nothing before it writes it"
    );
    let all = errors(&format!(
        "{SOURCE}sinks:\n  - json_write: {{path: out/a.jsonl, fields: [image, mask]}}\n"
    ));
    assert_eq!(all.len(), 1);
    assert_eq!(at(&all[0]), (K::UnsatisfiedField, 4, 53));
    assert!(
        all[0]
            .help
            .as_deref()
            .unwrap()
            .contains("fields available here: image"),
        "{:?}",
        all[0].help
    );
}

#[test]
fn two_sinks_on_one_path_are_reported_at_the_second() {
    let d = only(&format!(
        "{SOURCE}sinks:\n  - json_write: {{path: out/a.jsonl}}\n  - json_write: {{path: ./out/a.jsonl}}\n"
    ));
    assert_eq!(at(&d), (K::DuplicateOutput, 5, 24));
    assert!(
        d.message.contains("at line 4 already writes"),
        "{}",
        d.message
    );
}

#[test]
fn an_empty_pipeline_is_an_error() {
    let d = only("");
    assert_eq!(d.kind, K::EmptyPipeline);
    let d = only(&format!("{SOURCE}stages: []\nsinks: []\n"));
    assert_eq!(at(&d), (K::EmptyPipeline, 3, 1));
    let d = only(SOURCE);
    assert_eq!(at(&d), (K::EmptyPipeline, 1, 1));
}

#[test]
fn syntax_errors_and_misplaced_components_are_located() {
    let d = only("source:\n  synthetic: {cases: 2\nsinks: []\n");
    assert_eq!(d.kind, K::Syntax);
    assert!(d.line >= 2, "{d:?}");

    let d = only(&format!(
        "{SOURCE}stages:\n  - json_write: {{path: a.jsonl}}\n"
    ));
    assert_eq!(at(&d), (K::MisplacedStage, 4, 5));
    assert_eq!(d.help.as_deref(), Some("move it under `sinks`"));

    let d = only(&format!(
        "{SOURCE}stages:\n  - scale: {{factor: 2}}\nsink:\n  - discard: {{}}\n"
    ));
    assert_eq!(at(&d), (K::UnknownField, 5, 1));
    assert_eq!(d.help.as_deref(), Some("did you mean `sinks`?"));
}

#[test]
fn value_checks_point_at_the_parameter() {
    let d = only(&format!("{SOURCE}stages:\n  - rand_noise: {{std: -1}}\n"));
    assert_eq!(at(&d), (K::InvalidValue, 4, 23));
    assert!(d.message.contains("`std` must be"), "{}", d.message);
}

#[test]
fn three_mistakes_give_three_errors_in_one_run() {
    let yaml = "\
source:
  synthetic: {cases: 2}
stages:
  - scael: {factor: 2}
  - rand_noise: {std: high}
sinks:
  - json_write: {path: out/x.jsonl, colour: red}
";
    let all = errors(yaml);
    let found: Vec<_> = all.iter().map(at).collect();
    assert_eq!(
        found,
        vec![
            (K::UnknownStage, 4, 5),
            (K::WrongType, 5, 23),
            (K::UnknownField, 7, 37),
        ]
    );
}

#[test]
fn overrides_change_values_and_bad_ones_are_reported() {
    let registry = mtmed3d_stages::registry();
    let yaml = format!("{SOURCE}stages:\n  - scale: {{factor: 2}}\nsinks:\n  - discard: {{}}\n");
    let plan = config::parse_str(
        &yaml,
        Path::new("p.yaml"),
        &[
            "seed=9".into(),
            "stages.scale.factor=3.5".into(),
            "source.synthetic.cases=5".into(),
        ],
        &registry,
    )
    .unwrap();
    assert_eq!(plan.seed, 9);
    assert_eq!(plan.stages[0].params_json()["factor"], 3.5);
    assert_eq!(plan.source.params_json()["cases"], 5);

    let Err(err) = config::parse_str(
        &yaml,
        Path::new("p.yaml"),
        &[
            "stages.scale.factor=oops".into(),
            "stages.flip.prob=1".into(),
        ],
        &registry,
    ) else {
        panic!("bad overrides must be reported");
    };
    let kinds = err.kinds();
    assert_eq!(kinds.len(), 2, "{err}");
    assert!(err.to_string().contains("no entry named `flip`"), "{err}");
    assert!(err.to_string().contains("expected a number"), "{err}");
}

#[test]
fn prediction_files_may_share_a_folder_but_not_overlap_it() {
    // NIfTI files and a file of another kind side by side (configs/demo-test.yaml puts the
    // label maps and box files of `mtmed3d evaluate` in one folder)
    let shared = format!(
        "{SOURCE}sinks:\n  - nifti_write: {{dir: pred, fields: [image], plain_names: true}}\n  - json_write: {{path: pred/cases.jsonl}}\n"
    );
    let parsed = config::parse_str(
        &shared,
        Path::new("p.yaml"),
        &[],
        &mtmed3d_stages::registry(),
    );
    assert!(parsed.is_ok(), "{:?}", parsed.err());
    // a whole folder (a store) and a file inside it overlap
    let d = only(&format!(
        "{SOURCE}sinks:\n  - zarr_write: {{path: out}}\n  - json_write: {{path: out/cases.jsonl}}\n"
    ));
    assert_eq!(at(&d), (K::DuplicateOutput, 5, 24));
    assert!(d.message.contains("`out/cases.jsonl`"), "{}", d.message);
    // two writers of the same kind of file in one folder clash
    let d = only(&format!(
        "{SOURCE}sinks:\n  - nifti_write: {{dir: pred, fields: [image]}}\n  - nifti_write: {{dir: ./pred, fields: [image]}}\n"
    ));
    assert_eq!(d.kind, K::DuplicateOutput, "{d:?}");
}

#[test]
fn wiring_mistakes_are_reported_next_to_a_broken_stage() {
    let yaml = "\
source:
  synthetic: {cases: 2}
stages:
  - scale: {field: mask, factor: 2}
  - scael: {factor: 2}
  - rand_noise: {field: other}
sinks:
  - json_write: {path: out/x}
  - json_write: {path: out/x}
";
    let found: Vec<_> = errors(yaml).iter().map(at).collect();
    // `rand_noise` after the unparsed `scael` is not checked: `scael` might have written `other`.
    assert_eq!(
        found,
        vec![
            (K::UnsatisfiedField, 4, 20),
            (K::UnknownStage, 5, 5),
            (K::DuplicateOutput, 9, 24),
        ]
    );
}
