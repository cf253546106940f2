//! Finding and undoing what killed runs left behind: with the scratch root locked, every run
//! directory in it belongs to a dead run; its journal says what to unmount, detach and
//! restore. A directory or journal that is not provably ours is reported and left alone.

use pinstorm_workloads::scratch::ScratchRoot;

/// Clean every leftover run under `root`; returns one line per action or problem.
pub fn clean_leftovers(root: &ScratchRoot) -> Vec<String> {
    let mut lines = Vec::new();
    for leftover in root.leftover_runs() {
        if let pinstorm_workloads::scratch::Leftover::Ours { dir, .. } = &leftover {
            lines.push(format!(
                "cleaning up after a run that did not finish: {}",
                dir.path().display()
            ));
        }
        let c = root.clean(leftover);
        lines.extend(c.actions.into_iter().map(|a| format!("  {a}")));
        lines.extend(c.problems.into_iter().map(|p| format!("  PROBLEM: {p}")));
    }
    lines
}
