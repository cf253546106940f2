//! The end scan: once every thread of a cell has returned, every page of every pinned file
//! and of its partners is read and judged by the stale-exposure and cross-file oracles.

use std::os::unix::fs::FileExt;

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_analysis::schema::Violation;
use pinstorm_workloads::backing::RegionFile;
use pinstorm_workloads::canary::{self, PageContent};
use pinstorm_workloads::layout::Partner;

use super::oracle::PAGE;
use super::state::{StormState, TrackedFile};

/// Scan every file of the cell at `at_ms`; returns one line per file it could not read
/// (whose pages were not judged).
pub fn end_scan(storm: &StormState, at_ms: f64) -> Vec<String> {
    let mut errors = Vec::new();
    for f in &storm.files {
        if let Some(rf) = f.region.file.as_ref() {
            errors.extend(scan(storm, f, rf, &f.name, None, at_ms).err());
        }
        for (partner, rf) in f.partners.files() {
            let label = format!("{} ({})", f.name, partner.name());
            errors.extend(scan(storm, f, rf, &label, Some(partner), at_ms).err());
        }
    }
    errors
}

/// Judge every page of `rf`: the pinned file `f` itself (`partner` None) or one of its
/// partners.
fn scan(
    storm: &StormState,
    f: &TrackedFile,
    rf: &RegionFile,
    label: &str,
    partner: Option<Partner>,
    at_ms: f64,
) -> Result<(), String> {
    let len = rf
        .file()
        .metadata()
        .map_err(|e| format!("{label}: fstat: {e}"))?
        .len();
    let mut buf = vec![0u8; len as usize];
    rf.file()
        .read_exact_at(&mut buf, 0)
        .map_err(|e| format!("{label}: reading {len} bytes: {e}"))?;
    let cross = |offset: u64, what: String| {
        storm.findings().add(
            OracleKind::CrossFile,
            storm.examples,
            Violation {
                file: label.into(),
                offset,
                len: PAGE,
                what,
                at_ms,
                history: vec![],
            },
        );
    };
    for (p, page) in buf.chunks(PAGE as usize).enumerate() {
        let off = p as u64 * PAGE;
        let PageContent::Canary(c) = canary::decode(page) else {
            continue;
        };
        match partner {
            None => storm.classify_foreign(f, off, page, at_ms, &f.history(0)),
            // A clone legitimately holds its source file's data, wherever it moved.
            Some(p) if p.holds_copies() => {
                if !(c.file_id == f.state.id && c.run_tag == storm.run_tag) {
                    cross(
                        off,
                        format!(
                            "a {} of file {} holds data written for file {} (event {})",
                            p.name(),
                            f.state.id,
                            c.file_id,
                            c.event
                        ),
                    );
                }
            }
            Some(p) => cross(
                off,
                format!(
                    "the {} file holds data the device wrote for file {} (event {})",
                    p.name(),
                    c.file_id,
                    c.event
                ),
            ),
        }
    }
    Ok(())
}
