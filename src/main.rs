//! `streamjob`: one thin binary for every role. `crd` prints the CustomResourceDefinition; the other
//! subcommands (local mode, worker, operator) are added by their crates as they land.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "streamjob",
    version,
    about = "Stateful streaming jobs with Flink-style fault tolerance on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StreamJob CustomResourceDefinition as YAML (`crds/streamjob.yaml` is this output).
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = serde_yaml::to_string(&streamjob_api::v1alpha1::crd())
                .context("failed to render the StreamJob CRD as YAML")?;
            print!("{yaml}");
        }
    }
    Ok(())
}
