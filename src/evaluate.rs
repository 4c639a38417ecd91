//! `mtmed3d evaluate`: scores a folder of predictions against a BraTS-layout truth folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mtmed3d_stages::eval::folders::{truth_cases, unmatched_predictions};
use mtmed3d_stages::eval::report::write_atomic;
use mtmed3d_stages::eval::{EvaluateOptions, evaluate_folders};
use mtmed3d_stages::labels::BratsConvention;

#[derive(Args)]
pub struct EvaluateArgs {
    /// Predictions: <case>.nii.gz (label map in the truth's space) and optionally <case>.json
    /// ({"boxes": [{"box": [x1,y1,z1,x2,y2,z2], "score": s}], "grade": "HGG", "p_hgg": p}).
    #[arg(long)]
    pred: PathBuf,
    /// Truth: HGG/<case>/<case>_seg.nii.gz and LGG/… (BraTS layout).
    #[arg(long)]
    truth: PathBuf,
    /// Write the metrics JSON here (default: print it).
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Also write one CSV row per case and a `mean` row.
    #[arg(long, value_name = "FILE.csv")]
    csv: Option<PathBuf>,
    /// Score a truth case without prediction as an empty prediction instead of failing.
    #[arg(long)]
    missing_as_empty: bool,
    /// Enhancing tumour is 4 (brats2018, 2018–2020) or 3 (brats2023).
    #[arg(long, value_enum, default_value_t = Convention::Brats2018)]
    label_convention: Convention,
    /// Detections kept per case, highest scores first.
    #[arg(long, default_value_t = 100)]
    max_detections: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Convention {
    Brats2018,
    Brats2023,
}

pub fn run(args: EvaluateArgs) -> Result<u8> {
    anyhow::ensure!(
        args.max_detections > 0,
        "--max-detections must be at least 1"
    );
    let options = EvaluateOptions {
        convention: match args.label_convention {
            Convention::Brats2018 => BratsConvention::Brats2018,
            Convention::Brats2023 => BratsConvention::Brats2023,
        },
        missing_as_empty: args.missing_as_empty,
        max_detections: args.max_detections,
        ..EvaluateOptions::default()
    };
    let report = evaluate_folders(&args.pred, &args.truth, &options).map_err(anyhow::Error::msg)?;
    if let Ok(truth) = truth_cases(&args.truth) {
        let extra = unmatched_predictions(&args.pred, &truth);
        if !extra.is_empty() {
            eprintln!(
                "note: {} prediction files have no truth case and were not scored: {}",
                extra.len(),
                extra.join(", ")
            );
        }
    }
    if !report.settings.missing_as_empty.is_empty() {
        eprintln!(
            "note: {} cases had no prediction and were scored as empty: {}",
            report.settings.missing_as_empty.len(),
            report.settings.missing_as_empty.join(", ")
        );
    }
    let json = serde_json::to_string_pretty(&report.to_json(true))? + "\n";
    match &args.out {
        Some(path) => write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{json}"),
    }
    if let Some(path) = &args.csv {
        write_atomic(path, report.to_csv().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let value = |k: &str| {
        report
            .get(k)
            .map_or_else(|| "–".to_string(), |v| format!("{v:.4}"))
    };
    eprintln!("{} cases", report.cases.len());
    eprintln!(
        "  Dice  WT {}  TC {}  ET {}",
        value("dice_wt"),
        value("dice_tc"),
        value("dice_et")
    );
    eprintln!(
        "  HD95  WT {}  TC {}  ET {} mm",
        value("hd95_wt"),
        value("hd95_tc"),
        value("hd95_et")
    );
    eprintln!(
        "  grade accuracy {}  sensitivity {}  specificity {}",
        value("accuracy"),
        value("sensitivity"),
        value("specificity")
    );
    eprintln!(
        "  boxes mAP {}  mAR {} (IoU 0.10:0.50)  AP {}  AR {} (IoU 0.50)",
        value("map_10_50"),
        value("mar_10_50"),
        value("map_50"),
        value("mar_50")
    );
    Ok(0)
}
