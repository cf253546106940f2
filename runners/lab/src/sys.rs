//! The lab's edge to the operating system: signalling a guest's process group and finding
//! its processes in /proc. rustix has every call needed, so there is no unsafe code here
//! (the crate denies it); a call rustix lacks would go here, with its `# Safety` reasoning.

use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// Send `sig` to process group `pgid`. Groups 0 and 1 (the caller's own, init's) are never
/// signalled; a group that is already gone is not an error.
fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return;
    }
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = kill_process_group(pid, sig);
    }
}

/// SIGTERM, then SIGKILL, to a whole process group.
pub fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    signal_group(pgid, Signal::TERM);
    let t0 = Instant::now();
    while group_alive(pgid) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if group_alive(pgid) {
        signal_group(pgid, Signal::KILL);
    }
}

/// Whether any process is left in process group `pgid` (zombies excepted).
pub fn group_alive(pgid: i32) -> bool {
    group_members(pgid).next().is_some()
}

/// Every process id in /proc.
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
}

/// Whether process `pid`'s command line mentions `marker`.
pub fn cmdline_mentions(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// The live (not zombie) processes of process group `pgid`.
pub fn group_members(pgid: i32) -> impl Iterator<Item = i32> {
    pids().filter(move |pid| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Fields after the command (which may hold spaces) in parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn a_process_group_is_found_and_killed_whole() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 600 & sleep 600; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let t0 = Instant::now();
        // The shell and both sleeps, once the shell has started them.
        while group_members(pgid).count() < 3 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(group_members(pgid).count() >= 2);
        assert!(cmdline_mentions(pgid, "sleep 600"));
        kill_group(pgid);
        let _ = child.wait();
        assert!(
            !group_alive(pgid),
            "{:?}",
            group_members(pgid).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_callers_group_and_init_are_never_signalled() {
        // Would kill this test process (group 0 is the caller's) if it were sent.
        kill_group(0);
        kill_group(1);
        kill_group(-5);
    }
}
