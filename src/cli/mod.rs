//! The command line: one file per verb. `main.rs` parses [`Cli`] and calls [`dispatch`].

#[macro_use]
mod print {
    /// `println!` through [`super::stdout`].
    macro_rules! outln {
        ($($t:tt)*) => {
            $crate::cli::stdout(format_args!("{}\n", format_args!($($t)*)))
        };
    }

    /// `print!` through [`super::stdout`].
    macro_rules! out {
        ($($t:tt)*) => {
            $crate::cli::stdout(format_args!($($t)*))
        };
    }
}

pub mod bench;
pub mod check;
pub mod data;
pub mod diff;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod new;
pub mod report;
pub mod run;
pub mod runs;
pub mod sample;
pub mod score;
pub mod tui;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Write to standard output as `print!` does, without its panic: a closed pipe (`| head`) ends
/// the command quietly with the status a shell gives a command a pipe closed on (141); any other
/// failure (a full disk) ends it with the error on standard error and status 1.
///
/// Everything printed passes [`crate::untrusted::printable`]: no escape sequence from a run
/// folder, a dataset or a spec reaches the terminal, whatever printed it.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = args.to_string();
    let text = crate::untrusted::printable(&text);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

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
        /// Folder holding experiment folders, one experiment folder, a folder of runs (any
        /// framework's: TRL, verl, prime-rl, TensorBoard) or one run.
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
    Run(run::Args),
    /// Two eval runs problem by problem: what one solves and the other does not.
    Diff {
        /// An eval run folder.
        a: PathBuf,
        /// Another eval run folder (e.g. the same eval stage after RL).
        b: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List an experiment's runs: id, stage, status, steps, last metrics.
    Runs {
        /// Experiment folder or its experiment.toml.
        exp: PathBuf,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The per-stage eval table (pass@1, pass@k, maj@k, format rate, length, compute) of an
    /// experiment, over seeds; for a folder of other frameworks' runs, each run's headline and
    /// validation metrics.
    Report {
        /// Experiment folder or its experiment.toml (or a folder of runs, or one run).
        exp: PathBuf,
        /// Same as `--format json`: one object per finished eval run, in pipeline order.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// `text` (the table), `json`, `md` (tables for a write-up) or `svg` (the pass@k and
        /// compute charts; redirect to a file).
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
    },
    /// Complete a prompt with a checkpoint (a checkpoint folder, or a run folder's latest).
    Sample(sample::Args),
    /// Score a checkpoint on its task's held-out set (pass@1, greedy, pass@k, maj@k, format, length).
    Eval(eval::Args),
    /// Read {prompt, completion} JSON lines on stdin and print each one's reward components.
    Score {
        /// Task whose verifier scores `{prompt, completion}` lines.
        #[arg(
            long,
            required_unless_present = "verifier",
            conflicts_with = "verifier"
        )]
        task: Option<String>,
        /// Or a dataset verifier (numeric, exact, choice, regex, countdown) scoring
        /// `{completion, answer}` lines.
        #[arg(long)]
        verifier: Option<String>,
        /// The `regex` verifier's pattern.
        #[arg(long, requires = "verifier")]
        pattern: Option<String>,
        /// The `exact` verifier compares case too.
        #[arg(long, requires = "verifier")]
        case_sensitive: bool,
    },
    /// Describe a model file (GGUF): architecture, hyperparameters, tensors and their types.
    Inspect {
        file: PathBuf,
        /// One JSON line per tensor: name, shape, type, and the count, sum, sum of squares and
        /// first values of its dequantised f32 values (to compare with another reader).
        #[arg(long)]
        stats: bool,
    },
    /// Export a run's charts (svg) and metrics (csv, parquet), or its model as a Hugging Face
    /// folder (hf); or hand a stage of an experiment to TRL (`EXP --stage NAME --to trl`).
    Export {
        /// Run folder (hf: also a checkpoint, a Hugging Face folder or a .gguf file; --to: an
        /// experiment).
        run: PathBuf,
        /// Hand this stage over (with --to).
        #[arg(long, requires = "to")]
        stage: Option<String>,
        /// The framework to hand the stage to: trl (a folder with train.py for TRL's
        /// GRPOTrainer / SFTTrainer, its data and model) or verl (run.sh for its main_ppo, a
        /// GRPO stage of a pretrained chat model).
        #[arg(long, requires = "stage", conflicts_with = "format")]
        to: Option<String>,
        /// With --to: the model to start from (default: the stage's `init` checkpoint, or
        /// `[model] from`).
        #[arg(long, requires = "to")]
        model: Option<PathBuf>,
        /// Formats, repeatable or comma-separated: svg, csv, parquet; or hf alone.
        #[arg(long = "format", value_delimiter = ',', default_values_t = vec!["svg".to_string(), "csv".to_string()])]
        format: Vec<String>,
        /// Output folder (default: RUN/export).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate task data.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Measure speed and memory: `bench train` (one model shape), `bench notebook` (the TUI).
    Bench {
        #[command(subcommand)]
        command: bench::Args,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write N generated examples as JSONL (or Parquet when --out ends in .parquet).
    Gen {
        #[arg(long)]
        task: String,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long)]
        out: PathBuf,
        /// sft (clean pairs), corpus (the pretraining mix) or heldout.
        #[arg(long, default_value = "sft")]
        kind: String,
        #[arg(long, default_value_t = 1)]
        difficulty: u32,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
    /// A dataset file: rows, fields, a few examples, and how many rows' answers the verifier
    /// accepts from their own reference (their answer parses).
    Show {
        file: PathBuf,
        /// numeric, exact, choice, regex, countdown.
        #[arg(long, default_value = "numeric")]
        verifier: String,
        /// The regex verifier's pattern.
        #[arg(long)]
        pattern: Option<String>,
        #[arg(long, default_value = "prompt")]
        prompt_field: String,
        #[arg(long, default_value = "answer")]
        answer_field: String,
        /// Rows to show.
        #[arg(long, default_value_t = 3)]
        n: usize,
    },
    /// An experiment's dataset task: every row parses, the splits and their overlap.
    Check { exp: PathBuf },
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
        Some(Command::Run(a)) => run::main(a),
        Some(Command::Runs { exp, json }) => runs::run(&exp, json),
        Some(Command::Diff { a, b, json }) => diff::run(&a, &b, json),
        Some(Command::Report { exp, json, format }) => {
            report::run(&exp, if json { report::Format::Json } else { format })
        }
        Some(Command::Sample(a)) => sample::run(&a),
        Some(Command::Eval(a)) => eval::main(a),
        Some(Command::Score {
            task,
            verifier,
            pattern,
            case_sensitive,
        }) => match (task, verifier) {
            (Some(t), _) => score::run(&t),
            (None, Some(v)) => score::run_verifier(&v, pattern.as_deref(), case_sensitive),
            (None, None) => anyhow::bail!("give --task or --verifier"),
        },
        Some(Command::Export {
            run,
            format,
            out,
            stage,
            to,
            model,
        }) => match (stage, to) {
            (Some(stage), Some(to)) => export::handoff(&run, &stage, &to, out, model.as_deref()),
            _ => export::run(&run, &format, out),
        },
        Some(Command::Data {
            command:
                DataCommand::Gen {
                    task,
                    n,
                    out,
                    kind,
                    difficulty,
                    seed,
                },
        }) => data::generate(&task, n, &out, &kind, difficulty, seed),
        Some(Command::Data {
            command:
                DataCommand::Show {
                    file,
                    verifier,
                    pattern,
                    prompt_field,
                    answer_field,
                    n,
                },
        }) => data::show(
            &file,
            &verifier,
            pattern.as_deref(),
            &prompt_field,
            &answer_field,
            n,
        ),
        Some(Command::Data {
            command: DataCommand::Check { exp },
        }) => data::check(&exp),
        Some(Command::Bench { command }) => bench::dispatch(command),
        Some(Command::Inspect { file, stats }) => inspect::run(&file, stats),
    }
}
