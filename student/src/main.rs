//! `meal-student`: Stage 2 of MEAL V2 distillation: train the student and the discriminator from the cached soft labels.
//!
//! Not implemented yet: this binary only parses `--help`/`--version` and exits with
//! an error saying so. The data pipeline it will wire up lives in `meal-data`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "meal-student",
    version,
    about = "Stage 2 of MEAL V2 distillation: train the student and the discriminator from the cached soft labels (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!(
        "meal-student is not implemented yet (tracked by the meal-student issue); see README.md"
    )
}
