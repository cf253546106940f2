//! `pinstorm`: a thin command line over the workloads, runners and analysis libraries.
//! This file parses the command line and hands each command to its module under `cmd/`.

// Unsafe code lives only in the libraries' `sys` edges and the verbs FFI.
#![deny(unsafe_code)]

mod cli;
mod cmd;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use pinstorm_analysis::check::EXIT_ABORT as ABORT;

use cli::{BenchCommand, Cli, Command, Format};
use cmd::common::BadInput;
use pinstorm_workloads::scratch;

fn real_main(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    if g.format == Format::Markdown && !matches!(cli.command, Command::Compare(_)) {
        bail!(BadInput(anyhow::anyhow!(
            "--format markdown is for pinstorm compare; use text or json here"
        )));
    }
    match &cli.command {
        Command::Run(a) => cmd::run::scenario(g, a),
        Command::Probe(a) => cmd::run::probe(g, a),
        Command::Bench(BenchCommand::Pin(a)) => cmd::run::bench_pin(g, a),
        Command::List => cmd::list::run(g),
        Command::Lab(a) => cmd::lab::run(g, a),
        Command::Cleanup(a) => cmd::cleanup::run(g, a),
        Command::Compare(a) => cmd::compare::run(g, a),
        Command::Plot(a) => cmd::plot::run(g, a),
        Command::Report(a) => cmd::report::run(g, a),
        Command::Export(a) => cmd::export::run(g, a),
    }
}

fn main() -> ExitCode {
    // The lease holder: a process of its own that pinstorm starts (not for people to call).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__lease-holder") {
        let code =
            pinstorm_workloads::lease::holder_main(args.get(2).map(String::as_str).unwrap_or(""));
        return ExitCode::from(code as u8);
    }
    // The lab's guest agent: runs inside a QEMU guest that `pinstorm lab` booted.
    if args.get(1).map(String::as_str) == Some("__lab-guest") {
        let plan = std::path::PathBuf::from(args.get(2).map(String::as_str).unwrap_or(""));
        return match pinstorm_lab::guest::main(&plan) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("pinstorm lab guest: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // With --check, pinstorm answers `git bisect run`, which takes 1-127 (but 125) for
    // "bad": a usage or tool error must abort the bisection instead (128), clap's included.
    let checking = cmd::check::given(&args);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if checking && e.use_stderr() => {
            let _ = e.print();
            eprintln!("pinstorm: with --check, a usage error exits {ABORT} (git bisect aborts)");
            return ExitCode::from(ABORT);
        }
        Err(e) => e.exit(),
    };
    match real_main(cli) {
        Ok(c) => c,
        Err(e) if checking => {
            eprintln!("pinstorm: error: {e:#}");
            eprintln!("pinstorm: with --check, an error exits {ABORT} (git bisect aborts)");
            ExitCode::from(ABORT)
        }
        Err(e) => {
            eprintln!("pinstorm: error: {e:#}");
            // A scratch root or directory that is not provably ours is refused like bad
            // input: the user names another path, nothing ran.
            if e.downcast_ref::<BadInput>().is_some()
                || e.chain().any(|c| c.is::<scratch::Untrusted>())
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
