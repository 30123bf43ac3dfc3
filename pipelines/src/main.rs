//! `ocellus`: run, check and replay perception pipelines; curate recordings; import weights.

use std::process::ExitCode;

use clap::Parser;
use ocellus_pipelines::cli::Command;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "ocellus", version, about = "Eyes and judgement for robots and camera rigs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    match Cli::parse().command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
