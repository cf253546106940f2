//! `--check` on the command line: the expressions parsed and their pins and backings checked
//! against the ones pinstorm has (a misspelt backing would make every commit "skip"), and
//! the checks' report turned into the exit status `git bisect run` reads.
//!
//! With `--check` given, every usage or tool error exits [`check::EXIT_ABORT`] (128) so that
//! `git bisect run` aborts instead of marking the commit bad (main.rs applies it, clap's own
//! errors included).

use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::cmd::common::bad;
use pinstorm_analysis::check::{self, Check, Report};
use pinstorm_workloads::backing::BackingKind;
use pinstorm_workloads::pin::PinKind;

/// Whether the command line has `--check` (before clap has parsed it: its own errors must
/// exit 128 too).
pub fn given(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--check" || a.starts_with("--check="))
}

/// The checks, each parsed and its pin path and backing known.
pub fn parse(exprs: &[String]) -> Result<Vec<Check>> {
    exprs
        .iter()
        .map(|e| {
            let c = bad(Check::parse(e))?;
            let (pin, backing) = c.pin_and_backing();
            bad(PinKind::parse(pin).map_err(|why| anyhow!("--check {e:?}: {why}")))?;
            bad(BackingKind::parse(backing).map_err(|why| anyhow!("--check {e:?}: {why}")))?;
            Ok(c)
        })
        .collect()
}

/// Print the report on stderr (stdout keeps the command's own output) and give its status.
pub fn exit(report: &Report) -> ExitCode {
    eprint!("{}", report.render());
    ExitCode::from(report.exit_code())
}

/// A run stopped by a signal: git bisect must stop too (128 + N aborts it).
pub fn interrupted(code: i32) -> Option<ExitCode> {
    (code > i32::from(check::EXIT_ABORT)).then(|| ExitCode::from(code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn check_is_seen_before_clap_parses_the_command_line() {
        assert!(given(&args(&["pinstorm", "probe", "--check", "x"])));
        assert!(given(&args(&["pinstorm", "probe", "--check=x"])));
        assert!(!given(&args(&["pinstorm", "probe", "--checks"])));
        assert!(!given(&args(&[
            "pinstorm",
            "lab",
            "--guest-exec",
            "--",
            "--check"
        ])));
    }

    #[test]
    fn pins_and_backings_pinstorm_does_not_have_are_usage_errors() {
        assert!(parse(&args(&["io_uring:xfs-dax:shared:rw=ok"])).is_ok());
        let e = format!(
            "{:#}",
            parse(&args(&["io_uring:xfsdax:shared:rw=ok"])).unwrap_err()
        );
        assert!(e.contains("xfsdax"), "{e}");
        let e = format!(
            "{:#}",
            parse(&args(&["iouring:xfs:shared:rw=ok"])).unwrap_err()
        );
        assert!(e.contains("iouring"), "{e}");
    }

    #[test]
    fn only_a_signal_status_passes_through() {
        assert!(interrupted(130).is_some());
        assert!(interrupted(3).is_none());
        assert!(interrupted(1).is_none());
    }
}
