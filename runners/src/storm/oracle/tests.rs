//! Planted histories replayed against the oracles: one file, up to four disruptors and one
//! pinner, each step in a fixed order, then the verdict the storm would have given.

use super::foreign::*;
use super::leaked_pins::*;
use super::lost_write::*;
use super::*;
use pinstorm_workloads::canary::Canary;

const TAG: u32 = 7;
const FILE: u32 = 1;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Disruptor `n` starts a layout operation on the file.
    Begin(usize),
    /// Disruptor `n`'s operation ends, having done this to the file.
    End(usize, Option<Effect>),
    /// The pinner starts registering the whole file.
    PinStart,
    /// The registration returned.
    PinEnd,
    /// The device write is issued.
    WriteIssue,
    /// The device write completed.
    WriteDone,
    /// The pinner read the file (or memory) back.
    FileRead,
    /// The device read the page back through the pin.
    DeviceRead,
}
use Step::*;

/// What a page read back holds.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// The device's write of this replay.
    Data,
    Zeros,
    /// The read failed.
    Unreadable,
}

struct Replay {
    ev: Events,
    f: FileState,
    running: Vec<Option<OpStart>>,
    pin: (Snapshot, Snapshot),
    write_event: u64,
    write: (Snapshot, Snapshot),
    readback_done: Snapshot,
}

impl Replay {
    fn new() -> Replay {
        let f = FileState::new(FILE, 16);
        let s = f.snapshot();
        Replay {
            ev: Events::default(),
            f,
            running: (0..4).map(|_| None).collect(),
            pin: (s, s),
            write_event: 0,
            write: (s, s),
            readback_done: s,
        }
    }

    fn run(&mut self, steps: &[Step]) -> &mut Replay {
        for s in steps {
            match *s {
                Begin(d) => {
                    assert!(self.running[d].is_none(), "disruptor {d} already busy");
                    self.running[d] = Some(self.f.op_begin(&self.ev));
                }
                End(d, effect) => {
                    let op = self.running[d].take().expect("an operation in flight");
                    self.f.op_end(op, effect, &self.ev);
                }
                PinStart => self.pin.0 = self.f.snapshot(),
                PinEnd => {
                    // As the pinner does: the pin's event, then the second look.
                    self.ev.next();
                    self.pin.1 = self.f.snapshot();
                }
                WriteIssue => {
                    self.write_event = self.ev.next();
                    self.write.0 = self.f.snapshot();
                }
                WriteDone => self.ev.write_done(self.write_event),
                FileRead => self.write.1 = self.f.snapshot(),
                DeviceRead => self.readback_done = self.f.snapshot(),
            }
        }
        self
    }

    fn canary(&self, offset: u64, event: u64) -> Vec<u8> {
        Canary {
            run_tag: TAG,
            file_id: FILE,
            offset,
            event,
        }
        .page(PAGE as usize)
    }

    fn verdict(&self, mapping: Mapping, file: Held, readback: Held) -> Verdict {
        let data = self.canary(0, self.write_event);
        let zeros = vec![0u8; PAGE as usize];
        let pick = |h: Held| match h {
            Held::Data => Some(&data[..]),
            Held::Zeros => Some(&zeros[..]),
            Held::Unreadable => None,
        };
        judge(&WriteFacts {
            mapping,
            pin: self.pin,
            write: self.write,
            readback_done: self.readback_done,
            data: &data,
            file: pick(file),
            readback: pick(readback),
        })
    }

    fn shared(&self, file: Held) -> Verdict {
        self.verdict(Mapping::SharedFile, file, Held::Data)
    }

    fn scan(&self, page_off: u64, content: &[u8]) -> Option<Foreign> {
        classify_foreign(TAG, &self.f, &self.ev, page_off, content)
    }
}

/// The pinner's whole cycle with no operation anywhere.
const CYCLE: [Step; 6] = [
    PinStart, PinEnd, WriteIssue, WriteDone, FileRead, DeviceRead,
];

fn truncate_all() -> Option<Effect> {
    Some(Effect::Invalidated {
        offset: 0,
        len: 16 * PAGE,
    })
}

#[test]
fn a_write_before_any_operation_is_verified_or_lost_as_the_data_says() {
    let mut r = Replay::new();
    r.run(&CYCLE);
    assert_eq!(r.shared(Held::Data), Verdict::Verified);
    assert_eq!(r.shared(Held::Zeros), Verdict::Lost(Evidence::File));
    // Operations long after the check change nothing.
    r.run(&[Begin(0), End(0, truncate_all())]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Lost(Evidence::File));
}

#[test]
fn a_write_during_an_operation_is_ambiguous() {
    // In flight across the whole cycle.
    let mut r = Replay::new();
    r.run(&[Begin(0)])
        .run(&CYCLE)
        .run(&[End(0, truncate_all())]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
    // Started and ended between the issue and the read: no snapshot sees it in flight.
    let mut r = Replay::new();
    r.run(&[
        PinStart,
        PinEnd,
        WriteIssue,
        Begin(0),
        End(0, truncate_all()),
    ])
    .run(&[WriteDone, FileRead, DeviceRead]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
    // Overlapping the registration only.
    let mut r = Replay::new();
    r.run(&[PinStart, Begin(0), PinEnd, End(0, truncate_all())])
        .run(&[WriteIssue, WriteDone, FileRead, DeviceRead]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
    // The data is there all the same: verified whatever overlapped.
    assert_eq!(r.shared(Held::Data), Verdict::Verified);
    // The file could not be read: nothing to judge.
    let mut r = Replay::new();
    r.run(&CYCLE);
    assert_eq!(r.shared(Held::Unreadable), Verdict::Ambiguous);
}

#[test]
fn a_write_after_a_truncate_removed_its_page_is_lost() {
    let mut r = Replay::new();
    r.run(&[PinStart, PinEnd, Begin(0), End(0, truncate_all())])
        .run(&[WriteIssue, WriteDone, FileRead, DeviceRead]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Lost(Evidence::File));
    // The zeros the file reads instead are neither stale nor another file's.
    assert_eq!(r.scan(0, &[0u8; PAGE as usize]), None);
}

#[test]
fn two_overlapping_operations_make_a_write_during_both_ambiguous() {
    let mut r = Replay::new();
    r.run(&[Begin(0), Begin(1)])
        .run(&CYCLE)
        .run(&[End(0, truncate_all()), End(1, None)]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
}

#[test]
fn four_disruptors_in_flight_around_a_write_make_it_ambiguous() {
    let mut r = Replay::new();
    r.run(&[Begin(0), Begin(1), Begin(2), Begin(3)])
        .run(&CYCLE)
        .run(&[
            End(0, truncate_all()),
            End(1, None),
            End(2, None),
            End(3, None),
        ]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
    // Two still in flight after two others ended before the pin.
    let mut r = Replay::new();
    r.run(&[
        Begin(0),
        Begin(1),
        Begin(2),
        Begin(3),
        End(2, None),
        End(3, None),
    ])
    .run(&CYCLE)
    .run(&[End(0, truncate_all()), End(1, None)]);
    assert_eq!(r.shared(Held::Zeros), Verdict::Ambiguous);
}

/// Every placement of up to four operations around the pinner's six steps: a write whose
/// data is missing is lost exactly when no operation overlapped the registration or the
/// window from the write to its check (for a private mapping: from the write to the device's
/// read-back), and ambiguous otherwise.
#[test]
fn every_interleaving_of_up_to_four_operations_is_judged_by_overlap() {
    // An operation begins in gap `b` and ends in gap `e` (gap g comes just before step g of
    // CYCLE; gap 6 is after the last step).
    let placements: Vec<(usize, usize)> =
        (0..=6).flat_map(|b| (b..=6).map(move |e| (b, e))).collect();
    let in_flight_at = |(b, e): (usize, usize), step: usize| b <= step && e > step;
    let overlaps = |(b, e): (usize, usize), from: usize, to: usize| b <= to && e > from;
    let (mut shared_wrong, mut private_wrong) = (Vec::new(), Vec::new());
    let mut judged = 0;
    for n in 1..=4usize {
        // Multisets of placements: which disruptor does what does not matter.
        let mut idx = vec![0usize; n];
        loop {
            let ops: Vec<(usize, usize)> = idx.iter().map(|&i| placements[i]).collect();
            let mut steps = Vec::new();
            for g in 0..=6 {
                for (d, op) in ops.iter().enumerate() {
                    if op.0 == g {
                        steps.push(Begin(d));
                    }
                }
                for (d, op) in ops.iter().enumerate() {
                    if op.1 == g {
                        steps.push(End(d, truncate_all()));
                    }
                }
                steps.extend(CYCLE.get(g).copied());
            }
            let mut r = Replay::new();
            r.run(&steps);
            let shared_ambiguous = ops.iter().any(|&o| overlaps(o, 0, 1) || overlaps(o, 2, 4));
            let private_ambiguous = ops.iter().any(|&o| overlaps(o, 2, 5));
            let want_shared = if shared_ambiguous {
                Verdict::Ambiguous
            } else {
                Verdict::Lost(Evidence::File)
            };
            let want_private = if private_ambiguous {
                Verdict::Ambiguous
            } else {
                Verdict::Lost(Evidence::ReadBack)
            };
            let got_shared = r.shared(Held::Zeros);
            let got_private = r.verdict(Mapping::PrivateFile, Held::Unreadable, Held::Zeros);
            let in_flight: Vec<usize> = (0..6)
                .map(|s| ops.iter().filter(|&&o| in_flight_at(o, s)).count())
                .collect();
            if got_shared != want_shared {
                shared_wrong.push(format!(
                    "shared, ops {ops:?} (in flight at each step {in_flight:?}): {got_shared:?}, want {want_shared:?}"
                ));
            }
            if got_private != want_private {
                private_wrong.push(format!(
                    "private, ops {ops:?} (in flight at each step {in_flight:?}): {got_private:?}, want {want_private:?}"
                ));
            }
            assert_eq!(r.shared(Held::Data), Verdict::Verified, "{ops:?}");
            judged += 1;
            // Next multiset (non-decreasing indices).
            let mut k = n;
            while k > 0 && idx[k - 1] == placements.len() - 1 {
                k -= 1;
            }
            if k == 0 {
                break;
            }
            idx[k - 1] += 1;
            let v = idx[k - 1];
            for i in idx.iter_mut().skip(k) {
                *i = v;
            }
        }
    }
    // 28 placements: C(28,1) + C(29,2) + C(30,3) + C(31,4) multisets.
    assert_eq!(judged, 28 + 406 + 4060 + 31465);
    let examples = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        shared_wrong.is_empty() && private_wrong.is_empty(),
        "misjudged: {} of {judged} interleavings on a shared mapping, e.g.:\n{}\n{} of {judged} on a private mapping, e.g.:\n{}",
        shared_wrong.len(),
        examples(&shared_wrong),
        private_wrong.len(),
        examples(&private_wrong),
    );
}

#[test]
fn a_private_mapping_write_is_checked_through_the_device_read_back() {
    let mut r = Replay::new();
    r.run(&CYCLE);
    let private = |r: &Replay, back: Held| r.verdict(Mapping::PrivateFile, Held::Zeros, back);
    // Never expected in the file: the device's own read-back decides.
    assert_eq!(private(&r, Held::Data), Verdict::Verified);
    assert_eq!(private(&r, Held::Zeros), Verdict::Lost(Evidence::ReadBack));
    assert_eq!(private(&r, Held::Unreadable), Verdict::Ambiguous);
    // A truncate between the pin and the write changes nothing for the pinned private copy.
    let mut r = Replay::new();
    r.run(&[PinStart, PinEnd, Begin(0), End(0, truncate_all())])
        .run(&[WriteIssue, WriteDone, FileRead, DeviceRead]);
    assert_eq!(private(&r, Held::Zeros), Verdict::Lost(Evidence::ReadBack));
    // One between the write and the read-back may replace a page an ODP device mirrors.
    let mut r = Replay::new();
    r.run(&[PinStart, PinEnd, WriteIssue, WriteDone, FileRead, Begin(0)])
        .run(&[End(0, truncate_all()), DeviceRead]);
    assert_eq!(private(&r, Held::Zeros), Verdict::Ambiguous);
}

#[test]
fn anonymous_memory_is_judged_from_the_memory() {
    let mut r = Replay::new();
    r.run(&CYCLE);
    assert_eq!(
        r.verdict(Mapping::Anon, Held::Data, Held::Data),
        Verdict::Verified
    );
    assert_eq!(
        r.verdict(Mapping::Anon, Held::Zeros, Held::Data),
        Verdict::Lost(Evidence::File)
    );
}

#[test]
fn own_data_from_before_an_invalidation_is_stale_exposure() {
    let punch_page_1 = Some(Effect::Invalidated {
        offset: PAGE,
        len: PAGE,
    });
    let mut r = Replay::new();
    r.run(&[WriteIssue, WriteDone]);
    let completed = r.write_event;
    // Issued before the punch, completed after it began: it may have landed after it (an
    // ODP device faults a fresh page in), so it is not stale.
    r.run(&[WriteIssue, Begin(0)]);
    let in_flight = r.write_event;
    r.run(&[WriteDone, End(0, punch_page_1), WriteIssue, WriteDone]);
    let after = r.write_event;
    let stale = r.scan(PAGE, &r.canary(PAGE, completed)).expect("stale");
    assert_eq!(stale.kind, ForeignKind::Stale);
    assert_eq!(stale.event, completed);
    assert_eq!(r.scan(PAGE, &r.canary(PAGE, in_flight)), None);
    assert_eq!(r.scan(PAGE, &r.canary(PAGE, after)), None);
    // Page 2 was not punched.
    assert_eq!(r.scan(2 * PAGE, &r.canary(2 * PAGE, completed)), None);
}

#[test]
fn a_shift_exempts_only_writes_from_before_it() {
    for shift in ["collapse-range", "insert-range"] {
        let mut r = Replay::new();
        r.run(&[WriteIssue, WriteDone]);
        let before = r.write_event;
        // The collapse or insert moves everything from page 1 on: data written before it
        // may legitimately sit anywhere there, whatever later operations did.
        r.run(&[Begin(0), End(0, Some(Effect::Shifted { offset: PAGE }))]);
        r.run(&[WriteIssue, WriteDone]);
        let after = r.write_event;
        r.run(&[
            Begin(1),
            End(
                1,
                Some(Effect::Invalidated {
                    offset: PAGE,
                    len: PAGE,
                }),
            ),
        ]);
        assert_eq!(r.scan(PAGE, &r.canary(PAGE, before)), None, "{shift}");
        // A write after the shift is judged again: the punch removed it and it is still
        // there.
        let f = r.scan(PAGE, &r.canary(PAGE, after));
        assert_eq!(
            f.as_ref().map(|f| (f.kind, f.event)),
            Some((ForeignKind::Stale, after)),
            "{shift}: {f:?}"
        );
        // Below the shift nothing moved.
        r.run(&[
            Begin(2),
            End(
                2,
                Some(Effect::Invalidated {
                    offset: 0,
                    len: PAGE,
                }),
            ),
        ]);
        assert!(r.scan(0, &r.canary(0, before)).is_some(), "{shift}");
    }
}

#[test]
fn another_files_canary_is_cross_file_corruption() {
    let r = Replay::new();
    let other = Canary {
        run_tag: TAG,
        file_id: 2,
        offset: PAGE,
        event: 3,
    }
    .page(PAGE as usize);
    let f = r.scan(PAGE, &other).expect("cross-file");
    assert_eq!(f.kind, ForeignKind::Cross);
    assert!(f.what.contains("for file 2"), "{f:?}");
}

#[test]
fn canaries_of_other_runs_are_stale_and_other_contents_are_not_judged() {
    let r = Replay::new();
    let old = Canary {
        run_tag: 99,
        file_id: FILE,
        offset: 0,
        event: 1,
    }
    .page(PAGE as usize);
    assert_eq!(r.scan(0, &old).map(|f| f.kind), Some(ForeignKind::Stale));
    assert_eq!(r.scan(0, &[0u8; PAGE as usize]), None);
    assert_eq!(r.scan(0, &[0xd0u8; PAGE as usize]), None);
}

fn window(start: (u64, u64), end: (u64, u64)) -> IdleWindow {
    IdleWindow { start, end, ms: 50 }
}

/// Counters with `base` pages outstanding in steady idle windows on both sides.
fn counts(base: u64, released: i64, torn_down: i64) -> PinCounts {
    let steady = window((1000 + base, 1000), (1000 + base, 1000));
    PinCounts {
        before: steady,
        released,
        settle_ms: 12,
        torn_down,
        after: IdleWindow {
            start: (5000 + torn_down as u64, 5000),
            end: (5000 + torn_down as u64, 5000),
            ms: 50,
        },
        folded: true,
    }
}

#[test]
fn pins_left_after_the_teardown_in_a_quiet_machine_are_leaks() {
    // 512 pages still pinned after every handle was released and the files torn down.
    let l = judge_leak(&counts(3, 3 + 512, 3 + 512));
    assert_eq!((l.count, l.held_until_teardown, &l.notrun), (512, 0, &None));
    assert_eq!(l.settle_ms, 12);
    // Held past the handles, released by the teardown: reported, not leaked.
    let l = judge_leak(&counts(3, 3 + 512, 3));
    assert_eq!((l.count, l.held_until_teardown, &l.notrun), (0, 512, &None));
    // Everything came back.
    let l = judge_leak(&counts(3, 3, 3));
    assert_eq!((l.count, l.held_until_teardown, &l.notrun), (0, 0, &None));
}

#[test]
fn pinning_elsewhere_in_an_idle_window_makes_the_leak_count_not_judged() {
    // Another process pinned and released 64 pages while the storm pinned nothing.
    let mut c = counts(3, 3 + 512, 3 + 512);
    c.before = window((1003, 1000), (1067, 1064));
    let l = judge_leak(&c);
    assert_eq!(l.count, 0, "never reported as a leak: {l:?}");
    let why = l.notrun.expect("not judged");
    assert!(
        why.contains("before the storm") && why.contains("acquired +64, released +64"),
        "{why}"
    );
    assert!(why.contains("512 page(s) above the baseline"), "{why}");
    // The same after the teardown; without root the reason says why it may be the kernel.
    let mut c = counts(3, 3 + 512, 3 + 512);
    c.after = window((5515, 5000), (5515, 5001));
    c.folded = false;
    let l = judge_leak(&c);
    let why = l.notrun.expect("not judged");
    assert!(
        why.contains("after the teardown") && why.contains("run as root"),
        "{why}"
    );
    assert_eq!(l.count, 0);
}
