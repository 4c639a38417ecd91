//! `mtmed3d cache list|verify|finalise STORE`: inspect, check and seal a Zarr case store.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use clap::Subcommand;
use mtmed3d_stages::io::zarr::CaseStore;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Every case: complete or not, key, config hash, arrays with shapes and dtypes.
    List {
        store: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read every array of every case and compare shapes and checksums; exit 1 when a case
    /// is damaged or incomplete.
    Verify { store: PathBuf },
    /// Write the manifest of complete cases into the root group and remove leftovers of
    /// interrupted writes. Run it once every writer (every shard) has finished.
    Finalise { store: PathBuf },
}

fn open(store: &Path) -> Result<CaseStore> {
    CaseStore::open(store).map_err(|e| anyhow!("{e}"))
}

/// Runs a `cache` subcommand; returns the exit status.
pub fn run(command: CacheCommand) -> Result<u8> {
    match command {
        CacheCommand::List { store, json } => {
            let cases = open(&store)?.list().map_err(|e| anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cases)?);
                return Ok(0);
            }
            let complete = cases.iter().filter(|c| c.complete).count();
            for c in &cases {
                let arrays: Vec<String> = c
                    .arrays
                    .iter()
                    .map(|a| format!("{} {:?} {}", a.field, a.shape, a.dtype))
                    .collect();
                println!(
                    "{:<10} {}  {}{}",
                    if c.complete { "complete" } else { "INCOMPLETE" },
                    c.id,
                    arrays.join(", "),
                    c.key
                        .as_ref()
                        .map(|k| format!("  key {k}"))
                        .unwrap_or_default()
                );
            }
            eprintln!(
                "{}: {complete} complete, {} incomplete",
                store.display(),
                cases.len() - complete
            );
            Ok(0)
        }
        CacheCommand::Verify { store } => {
            let handle = open(&store)?;
            let cases = handle.list().map_err(|e| anyhow!("{e}"))?;
            let complete: std::collections::BTreeSet<&str> = cases
                .iter()
                .filter(|c| c.complete)
                .map(|c| c.id.as_str())
                .collect();
            let (mut bad, mut leftovers) = (0, 0);
            for c in &cases {
                if !c.complete && complete.contains(c.id.as_str()) {
                    // An interrupted attempt at a case that was later written whole.
                    leftovers += 1;
                    continue;
                }
                let problems = if c.complete {
                    handle.verify_case(&c.id).map_err(|e| anyhow!("{e}"))?
                } else {
                    vec![format!(
                        "incomplete (left by an interrupted write: {})",
                        c.group
                    )]
                };
                if problems.is_empty() {
                    println!("ok       {}", c.id);
                } else {
                    bad += 1;
                    println!("DAMAGED  {}: {}", c.id, problems.join("; "));
                }
            }
            eprintln!(
                "{}: {} complete cases checked, {bad} damaged or incomplete{}",
                store.display(),
                complete.len(),
                if leftovers > 0 {
                    format!(
                        ", {leftovers} leftovers of interrupted writes (`cache finalise` removes them)"
                    )
                } else {
                    String::new()
                }
            );
            Ok(if bad == 0 { 0 } else { 1 })
        }
        CacheCommand::Finalise { store } => {
            let cases = open(&store)?.finalise().map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "{}: manifest of {} complete cases written",
                store.display(),
                cases.len()
            );
            Ok(0)
        }
    }
}
