//! `runner`: starts containers from images in a strata store (not yet available).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!(
            "runner: start, ps, stop, rm and commit containers from a strata store\n\nnot available in this build yet"
        );
        return ExitCode::SUCCESS;
    }
    eprintln!("error: runner is not available in this build yet");
    ExitCode::FAILURE
}
