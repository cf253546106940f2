//! Finding and undoing what killed runs left behind: with the scratch root locked, every run
//! directory in it belongs to a dead run; its journal says what to unmount, detach and
//! restore.

use pinstorm_workloads::scratch::{clean_leftover_run, ScratchRoot};

/// Clean every leftover run under `root`; returns one line per action or problem.
pub fn clean_leftovers(root: &ScratchRoot) -> Vec<String> {
    let mut lines = Vec::new();
    for dir in root.leftover_runs() {
        lines.push(format!(
            "cleaning up after a run that did not finish: {}",
            dir.display()
        ));
        let c = clean_leftover_run(&dir);
        lines.extend(c.actions.into_iter().map(|a| format!("  {a}")));
        lines.extend(c.problems.into_iter().map(|p| format!("  PROBLEM: {p}")));
    }
    lines
}
