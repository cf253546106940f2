//! KTAP (the kernel's test output format, Documentation/dev-tools/ktap.rst): each run is a
//! subtest, each probe cell, storm oracle and lifecycle fact a test line, notrun cells
//! `ok N name # SKIP reason`.

use std::fmt::Write;

use super::{cases, Status};
use crate::catalog::LoadedRun;

/// Test names and directives are single lines, and `#` starts a directive.
fn clean(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('#', "no.")
}

pub fn render(runs: &[&LoadedRun]) -> String {
    let mut out = String::from("KTAP version 1\n");
    let _ = writeln!(out, "1..{}", runs.len());
    for (i, run) in runs.iter().enumerate() {
        let r = &run.result;
        let cs = cases(r);
        let _ = writeln!(out, "    KTAP version 1");
        let _ = writeln!(
            out,
            "    # pinstorm run {} on kernel {}, scenario {}{}",
            r.run_id,
            clean(&r.environment.kernel_release),
            clean(&r.scenario.name),
            r.label
                .as_deref()
                .map(|l| format!(", label {}", clean(l)))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "    1..{}", cs.len());
        let mut failed = false;
        for (j, c) in cs.iter().enumerate() {
            let n = j + 1;
            let name = clean(&c.name);
            match &c.status {
                Status::Pass => {
                    if let Some(note) = &c.note {
                        let _ = writeln!(out, "    # {name}: {}", clean(note));
                    }
                    let _ = writeln!(out, "    ok {n} {name}");
                }
                Status::Fail(why) => {
                    failed = true;
                    let _ = writeln!(out, "    # {name}: {}", clean(why));
                    let _ = writeln!(out, "    not ok {n} {name}");
                }
                Status::Skip(why) => {
                    let _ = writeln!(out, "    ok {n} {name} # SKIP {}", clean(why));
                }
            }
        }
        let name = clean(&format!(
            "pinstorm {} {}",
            r.environment.kernel_release, r.run_id
        ));
        let _ = writeln!(
            out,
            "{}ok {} {name}",
            if failed { "not " } else { "" },
            i + 1
        );
    }
    out
}
