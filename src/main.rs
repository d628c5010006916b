//! The `stageloop` binary: parse the command line and hand over to a command.

use clap::Parser;

fn main() {
    let cli = stageloop::cli::Cli::parse();
    if let Err(e) = stageloop::cli::dispatch(cli) {
        if let Some(spec_errors) = e.downcast_ref::<stageloop::spec::SpecErrors>() {
            for err in &spec_errors.0 {
                eprintln!("error: {err}");
            }
        } else {
            eprintln!("error: {e:#}");
        }
        std::process::exit(1);
    }
}
