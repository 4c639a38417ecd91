//! `mtmed3d model …`: facts about the MTMed3D model that need no data (parameters, MACs, memory).

use anyhow::{Context, Result};
use clap::Subcommand;
use mtmed3d_model::ModelConfig;
use mtmed3d_model::summary::summary;

/// What `mtmed3d model` can do.
#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameters and multiply-accumulates (one multiply-add = one MAC) per part, and the memory of one
    /// training step (f32, AdamW), computed from the preset without building the model.
    Summary {
        /// Preset: `reference` (96³, the reference code's structure) or `tiny` (32³).
        #[arg(long, default_value = "reference")]
        preset: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `model` subcommand; returns the exit status.
pub fn run(command: ModelCommand) -> Result<u8> {
    match command {
        ModelCommand::Summary { preset, json } => {
            let config = ModelConfig::preset(&preset).context("mtmed3d model summary --preset")?;
            let s = summary(&config)?;
            if json {
                println!("{}", s.to_json()?);
            } else {
                print!("{s}");
            }
            Ok(0)
        }
    }
}
