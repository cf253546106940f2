//! Where one kernel's lab run spent its time. The host times what it sees (preparing the
//! kernel, QEMU's whole life, the moment the guest's first step appears); the guest times its
//! set-up steps and the scenario; the result times each job. This module puts them on one
//! line whose phases follow one another and never add up to more than the total, whatever
//! the two clocks and the 200 ms polling did.

use std::time::Duration;

use pinstorm_analysis::schema::{LabPhase, LabTimings, RunResult};

use crate::guest::GuestReport;

/// What was measured of one kernel.
pub(crate) struct Measured<'a> {
    /// Fetching or finding the kernel and choosing the accelerator.
    pub prepare: Duration,
    /// QEMU start to QEMU gone.
    pub wall: Duration,
    /// QEMU start to the host seeing the guest's first step.
    pub first_step: Option<Duration>,
    pub report: Option<&'a GuestReport>,
    pub result: Option<&'a RunResult>,
}

/// The phases of one kernel's run.
pub(crate) fn account(m: &Measured) -> LabTimings {
    let wall = m.wall.as_secs_f64();
    let mut setup = m.report.and_then(|r| r.setup_s);
    let mut run = m.report.and_then(|r| r.run_s);
    // The guest's clock is the host's under TCG and KVM alike, but should it ever run fast,
    // its phases are scaled into QEMU's life rather than exceed it.
    let guest = setup.unwrap_or(0.0) + run.unwrap_or(0.0);
    if guest > wall && guest > 0.0 {
        let k = wall / guest;
        setup = setup.map(|s| s * k);
        run = run.map(|s| s * k);
    }
    let guest = setup.unwrap_or(0.0) + run.unwrap_or(0.0);
    // The first step is seen up to one poll late: what the guest timed after it wins.
    let boot = m
        .first_step
        .map(|b| b.as_secs_f64().min((wall - guest).max(0.0)));
    let end = match (boot, run) {
        (Some(b), Some(_)) => Some((wall - b - guest).max(0.0)),
        _ => None,
    };
    let jobs: Vec<LabPhase> = m
        .result
        .and_then(|r| r.disturbance.as_ref())
        .map(|d| {
            d.jobs
                .iter()
                .map(|j| LabPhase {
                    name: j.job.clone(),
                    seconds: j.measured.wall_s,
                })
                .collect()
        })
        .unwrap_or_default();
    // The first job's end in the run (the run's own set-up of its backings and job one).
    let first_job_end = m
        .result
        .and_then(|r| r.disturbance.as_ref())
        .and_then(|d| d.jobs.first())
        .and_then(|j| j.ended_s);
    let first_result = match (boot, setup, first_job_end) {
        (Some(b), Some(s), Some(e)) => Some(b + s + e),
        _ => None,
    };
    LabTimings {
        prepare_s: m.prepare.as_secs_f64(),
        boot_s: boot,
        setup_s: setup,
        setup: m.report.map(|r| r.setup.clone()).unwrap_or_default(),
        run_s: run,
        beside: m.report.map(|r| r.beside.clone()).unwrap_or_default(),
        jobs,
        end_s: end,
        to_scenario_s: boot.zip(setup).map(|(b, s)| b + s),
        first_result_s: first_result,
        total_s: m.prepare.as_secs_f64() + wall,
    }
}

/// One readable line (see [`LabTimings::describe`]).
pub fn describe(t: &LabTimings) -> String {
    t.describe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinstorm_analysis::disturbance::{Disturbance, JobDisturbance, RunDisturbance};
    use pinstorm_analysis::schema::{Environment, ScenarioRecord};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn report(setup: f64, run: Option<f64>) -> GuestReport {
        GuestReport {
            setup: vec![
                LabPhase {
                    name: "pmem".into(),
                    seconds: setup / 2.0,
                },
                LabPhase {
                    name: "rxe".into(),
                    seconds: setup / 2.0,
                },
            ],
            setup_s: Some(setup),
            run_s: run,
            ..GuestReport::default()
        }
    }

    fn top_level_sum(t: &LabTimings) -> f64 {
        t.prepare_s
            + t.boot_s.unwrap_or(0.0)
            + t.setup_s.unwrap_or(0.0)
            + t.run_s.unwrap_or(0.0)
            + t.end_s.unwrap_or(0.0)
    }

    #[test]
    fn phases_follow_one_another_and_add_up_to_the_total() {
        let r = report(5.0, Some(12.0));
        let t = account(&Measured {
            prepare: secs(1.0),
            wall: secs(30.0),
            first_step: Some(secs(10.0)),
            report: Some(&r),
            result: None,
        });
        assert_eq!(t.boot_s, Some(10.0));
        assert_eq!(t.end_s, Some(3.0));
        assert_eq!(t.to_scenario_s, Some(15.0));
        assert_eq!(t.total_s, 31.0);
        assert!((top_level_sum(&t) - t.total_s).abs() < 1e-9, "{t:?}");
        assert_eq!(t.setup.len(), 2);
        let line = describe(&t);
        assert!(
            line.contains("boot 10.0s, set-up 5.0s (pmem 2.5, rxe 2.5), run 12.0s"),
            "{line}"
        );
        assert!(
            line.ends_with("scenario at 15.0s, first result at -, total 31.0s"),
            "{line}"
        );
    }

    #[test]
    fn a_first_step_seen_late_or_a_fast_guest_clock_never_exceeds_the_total() {
        let r = report(5.0, Some(8.0));
        let late = account(&Measured {
            prepare: secs(0.5),
            wall: secs(20.0),
            first_step: Some(secs(7.2)),
            report: Some(&r),
            result: None,
        });
        assert!((late.boot_s.unwrap() - 7.0).abs() < 1e-9, "{late:?}");
        assert_eq!(late.end_s, Some(0.0));
        assert!(top_level_sum(&late) <= late.total_s + 1e-9, "{late:?}");

        let fast = report(20.0, Some(20.0));
        let t = account(&Measured {
            prepare: secs(0.0),
            wall: secs(30.0),
            first_step: Some(secs(5.0)),
            report: Some(&fast),
            result: None,
        });
        assert!(top_level_sum(&t) <= t.total_s + 1e-9, "{t:?}");
        assert!(t.setup_s.unwrap() > 0.0 && t.run_s.unwrap() > 0.0);
    }

    #[test]
    fn a_guest_that_never_started_or_never_finished_has_no_phases_it_did_not_reach() {
        let none = account(&Measured {
            prepare: secs(2.0),
            wall: secs(600.0),
            first_step: None,
            report: None,
            result: None,
        });
        assert_eq!(
            (none.boot_s, none.setup_s, none.run_s, none.end_s),
            (None, None, None, None)
        );
        assert_eq!(none.total_s, 602.0);
        assert!(describe(&none).contains("boot -, set-up -"));

        // Set up, then hung in the scenario: no run time and no end.
        let r = report(4.0, None);
        let hung = account(&Measured {
            prepare: secs(0.0),
            wall: secs(600.0),
            first_step: Some(secs(12.0)),
            report: Some(&r),
            result: None,
        });
        assert_eq!(
            (hung.boot_s, hung.run_s, hung.end_s),
            (Some(12.0), None, None)
        );
        assert_eq!(hung.to_scenario_s, Some(16.0));
    }

    #[test]
    fn each_job_is_timed_from_the_results_job_intervals_in_order() {
        let r = report(2.0, Some(10.0));
        let mut res = RunResult::new(
            "r1",
            String::new(),
            ScenarioRecord {
                name: "t".into(),
                origin: "test".into(),
                seed: 1,
                text: String::new(),
            },
            Environment::default(),
        );
        res.disturbance = Some(RunDisturbance {
            run: Disturbance::default(),
            jobs: ["probe", "bench"]
                .iter()
                .zip([1.5, 7.0])
                .zip([2.5, 9.5])
                .map(|((j, s), e)| JobDisturbance {
                    job: j.to_string(),
                    ended_s: Some(e),
                    measured: Disturbance {
                        wall_s: s,
                        ..Disturbance::default()
                    },
                })
                .collect(),
        });
        let t = account(&Measured {
            prepare: secs(0.0),
            wall: secs(20.0),
            first_step: Some(secs(5.0)),
            report: Some(&r),
            result: Some(&res),
        });
        let names: Vec<_> = t
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.seconds))
            .collect();
        assert_eq!(names, [("probe", 1.5), ("bench", 7.0)]);
        assert!(describe(&t).contains("run 10.0s (probe 1.5, bench 7.0)"));
        // The first result: boot 5, set-up 2, and the probe's end 2.5 s into the run.
        assert_eq!(t.first_result_s, Some(5.0 + 2.0 + 2.5));
        assert!(describe(&t).contains("first result at 9.5s"));

        // The set-up beside the run: its steps follow the jobs, and the scenario starts
        // (and its first result comes) as soon as the agent starts the run.
        let beside = GuestReport {
            beside: r.setup.clone(),
            setup: Vec::new(),
            setup_s: Some(0.1),
            ..r
        };
        let t = account(&Measured {
            prepare: secs(0.0),
            wall: secs(20.0),
            first_step: Some(secs(5.0)),
            report: Some(&beside),
            result: Some(&res),
        });
        let line = describe(&t);
        assert!(
            line.contains(
                "set-up 0.1s, run 10.0s (probe 1.5, bench 7.0; beside it: pmem 1.0, rxe 1.0)"
            ),
            "{line}"
        );
        assert!((t.first_result_s.unwrap() - 7.6).abs() < 1e-9, "{t:?}");
        assert!(top_level_sum(&t) <= t.total_s + 1e-9, "{t:?}");
    }
}
