//! The command line: one file per verb. `main.rs` parses [`Cli`] and calls [`dispatch`].

pub mod check;
pub mod new;
pub mod run;
pub mod runs;
pub mod tui;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// A terminal research notebook for DeepSeek-R1-style multi-stage training of small language models.
#[derive(Debug, Parser)]
#[command(name = "stageloop", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the notebook on a folder of experiments (default: ./experiments).
    Tui {
        /// Folder holding experiment folders (or one experiment folder).
        dir: Option<PathBuf>,
    },
    /// Validate an experiment; prints a one-line summary, or every error as file:line:col.
    Check {
        /// Experiment folder or its experiment.toml.
        exp: PathBuf,
        /// Override a value for this check, e.g. `stage.sft.lr=1e-4`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Scaffold experiments/NAME/experiment.toml from a template.
    New {
        /// Name of the new experiment folder.
        name: String,
        /// Template: one of the bundled experiments.
        #[arg(long, short, default_value = "r1-arith")]
        template: String,
        /// Folder to create the experiment in.
        #[arg(long, default_value = "experiments")]
        dir: PathBuf,
    },
    /// Run stages headless (all of them in order when no --stage is given).
    Run {
        /// Experiment folder or its experiment.toml.
        exp: PathBuf,
        /// Run only these stages (repeatable), in pipeline order.
        #[arg(long = "stage", value_name = "NAME")]
        stage: Vec<String>,
        /// Override a value of the spec for this run, e.g. `stage.grpo.lr=1e-4`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Override the experiment's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Start new runs even where an unfinished run of the stage could be resumed.
        #[arg(long)]
        fresh: bool,
    },
    /// List an experiment's runs: id, stage, status, steps, last metrics.
    Runs {
        /// Experiment folder or its experiment.toml.
        exp: PathBuf,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Run a parsed command line. Errors are reported by `main` as one line each.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => tui::run(None),
        Some(Command::Tui { dir }) => tui::run(dir),
        Some(Command::Check { exp, set }) => check::run(&exp, &set),
        Some(Command::New {
            name,
            template,
            dir,
        }) => new::run(&name, &template, &dir),
        Some(Command::Run {
            exp,
            stage,
            set,
            seed,
            fresh,
        }) => run::run(&exp, &stage, &set, seed, fresh),
        Some(Command::Runs { exp, json }) => runs::run(&exp, json),
    }
}
