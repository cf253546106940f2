//! What a storm table cannot say in a column: where ambiguity hides the lost-write verdict,
//! files the end scan could not read, and why leaked pins were not judged.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::schema::{StormResult, StormTotals};

/// Ambiguous writes per verified one: `-` with neither, `inf` with ambiguous writes only.
pub(crate) fn ambiguity_ratio(t: &StormTotals) -> String {
    match (t.ambiguous, t.verified) {
        (0, _) => "-".into(),
        (_, 0) => "inf".into(),
        (a, v) => format!("{:.2}", a as f64 / v as f64),
    }
}

/// The lines printed under the storm table, one per finding, each naming its cell.
pub(crate) fn storm_notes(storms: &[StormResult]) -> String {
    let mut out = String::new();
    let mut leak_reasons: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for s in storms.iter().filter(|s| s.outcome == "ok") {
        let cell = s.cell();
        let t = &s.totals;
        if t.ambiguous > t.verified {
            let _ = writeln!(
                out,
                "  WARNING: {cell}: {} ambiguous writes against {} verified: ambiguity hides the verdict (a lower `rate` leaves more writes to judge)",
                t.ambiguous, t.verified
            );
        }
        if t.end_scan_errors > 0 {
            let _ = writeln!(
                out,
                "  END SCAN: {cell}: {} file(s) could not be read, their pages were not judged: {}",
                t.end_scan_errors,
                s.oracle.stale_exposure.note.as_deref().unwrap_or("")
            );
        }
        if let Some(r) = &s.oracle.leaked_pins.notrun {
            leak_reasons.entry(r).or_default().push(cell);
        }
    }
    for (reason, cells) in leak_reasons {
        let _ = writeln!(
            out,
            "  leaked pins not judged in {}: {reason}",
            cells.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm(verified: u64, ambiguous: u64) -> StormResult {
        let json = serde_json::json!({
            "pin": "io_uring", "backing": "memfd", "fs": "tmpfs", "map": "shared",
            "outcome": "ok", "reason": null, "dax": null, "pinners": 2, "disruptors": 2,
            "file_size": 2097152, "hold_ns": 0, "duration_ms": 1000, "seed": 1,
            "totals": {
                "registrations": 10, "register_errors": {}, "device_writes": 10,
                "device_write_errors": {}, "verified": verified, "ambiguous": ambiguous,
                "readback_mismatches": 0
            },
            "register": null, "register_histogram": null, "layout_ops": [], "timeline": [],
            "oracle": {
                "lost_write": {"count": 0, "notrun": null, "note": null, "examples": []},
                "stale_exposure": {"count": 0, "notrun": null, "note": null, "examples": []},
                "cross_file": {"count": 0, "notrun": null, "note": null, "examples": []},
                "leaked_pins": {"count": 0, "settle_ms": 0, "notrun": null},
                "blocked": {"count": 0, "threshold_ms": 1000, "examples": []},
                "kernel_warnings": {"count": 0, "lines": [], "notrun": null},
                "unexpected_outcomes": {"count": 0, "notrun": null, "note": null, "examples": []}
            },
            "sequence_head": []
        });
        // A result written before `end_scan_errors` existed still loads.
        serde_json::from_value(json).expect("an older storm result loads")
    }

    #[test]
    fn more_ambiguous_than_verified_writes_warn_that_ambiguity_hides_the_verdict() {
        let s = storm(3, 40);
        assert_eq!(ambiguity_ratio(&s.totals), "13.33");
        let notes = storm_notes(&[s]);
        assert!(
            notes.contains("io_uring memfd shared: 40 ambiguous writes against 3 verified")
                && notes.contains("ambiguity hides the verdict"),
            "{notes}"
        );
        let s = storm(40, 40);
        assert_eq!(ambiguity_ratio(&s.totals), "1.00");
        assert_eq!(storm_notes(&[s]), "");
        assert_eq!(ambiguity_ratio(&storm(0, 5).totals), "inf");
        assert_eq!(ambiguity_ratio(&storm(0, 0).totals), "-");
    }

    #[test]
    fn end_scan_errors_and_unjudged_leaks_are_named_with_their_cells() {
        let mut a = storm(10, 0);
        a.totals.end_scan_errors = 2;
        a.oracle.stale_exposure.note = Some("the end scan could not read 2 file(s)".into());
        a.oracle.leaked_pins.notrun = Some("the baseline moved".into());
        let mut b = storm(10, 0);
        b.pin = "vmsplice".into();
        b.oracle.leaked_pins.notrun = Some("the baseline moved".into());
        let notes = storm_notes(&[a, b]);
        assert!(
            notes.contains("END SCAN: io_uring memfd shared: 2 file(s) could not be read"),
            "{notes}"
        );
        assert!(
            notes.contains(
                "leaked pins not judged in io_uring memfd shared, vmsplice memfd shared: the baseline moved"
            ),
            "{notes}"
        );
    }
}
