//! `meal-precompute`: Stage 1 of MEAL V2 distillation: run the teacher ensemble once over a fixed crop pool and write the soft-label store.
//!
//! Not implemented yet: this binary only parses `--help`/`--version` and exits with
//! an error saying so. The data pipeline it will wire up lives in `meal-data`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "meal-precompute",
    version,
    about = "Stage 1 of MEAL V2 distillation: run the teacher ensemble once over a fixed crop pool and write the soft-label store (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("meal-precompute is not implemented yet (tracked by the meal-precompute issue); see README.md")
}
