//! The lost-write oracle: did the device's write through a held pin land where it belongs?

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_workloads::backing::MapKind;

use super::{quiet, Findings, Snapshot};

/// How the pinned memory relates to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Anonymous memory: no file, never truncated; the CPU reads it back.
    Anon,
    /// A shared mapping of a file: the device's writes belong in the file.
    SharedFile,
    /// A private mapping of a file: the device's writes land in private copies.
    PrivateFile,
}

/// Everything one device write's verdict depends on.
pub struct WriteFacts<'a> {
    pub mapping: Mapping,
    /// Before and after the registration of the pin the write went through.
    pub pin: (Snapshot, Snapshot),
    /// Before the device write was issued, and after the file (or memory) was read back.
    pub write: (Snapshot, Snapshot),
    /// After the device read the page back through the pin.
    pub readback_done: Snapshot,
    /// What the device wrote.
    pub data: &'a [u8],
    /// What the file (or the anonymous memory) held afterwards; `None` if it could not be
    /// read.
    pub file: Option<&'a [u8]>,
    /// What the device read back through the pin; `None` if the read failed.
    pub readback: Option<&'a [u8]>,
}

/// Where the evidence of a lost write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The file (or memory) does not hold the data.
    File,
    /// The device did not read back what it wrote.
    ReadBack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    /// A layout operation overlapped the pin or the check: not judged.
    Ambiguous,
    Lost(Evidence),
}

/// Where did the device's write go?
///
/// - Shared mapping: the write belongs in the file. If the file does not hold it, the write
///   is lost when the pin was taken while the range was part of the file (no operation
///   overlapped the registration) and no operation overlapped the window from the write to
///   the read that checked it; otherwise ambiguous.
/// - Private mapping: the write lands in the private copy the pin holds and never reaches the
///   file by design; the device's own read-back checks it. A mismatch is lost unless an
///   operation overlapped the window from the write to the read-back (an ODP device mirrors
///   the page tables, which an operation may change).
/// - Anonymous memory has no file: the memory must hold the write, unless a memory
///   operation ran (the write is then ambiguous if it overlapped the check; if it ran
///   between the pin and the write and the pinned page holds the write, the diverged oracle
///   judges the mapping).
pub fn judge(w: &WriteFacts) -> Verdict {
    match w.mapping {
        Mapping::PrivateFile => match w.readback {
            Some(back) if back == w.data => Verdict::Verified,
            Some(_) if quiet(w.write.0, w.readback_done) => Verdict::Lost(Evidence::ReadBack),
            _ => Verdict::Ambiguous,
        },
        Mapping::Anon => match w.file {
            Some(mem) if mem == w.data => Verdict::Verified,
            // The pinned page holds the write and the mapping shows another page: after a
            // memory operation since the pin that is the diverged oracle's to judge; with
            // nothing run since the pin, the memory lost the write.
            Some(_) if w.readback == Some(w.data) && !quiet(w.pin.0, w.readback_done) => {
                Verdict::Ambiguous
            }
            Some(_) if quiet(w.write.0, w.readback_done) => Verdict::Lost(Evidence::File),
            _ => Verdict::Ambiguous,
        },
        Mapping::SharedFile => match w.file {
            Some(file) if file == w.data => Verdict::Verified,
            Some(_) if quiet(w.pin.0, w.pin.1) && quiet(w.write.0, w.write.1) => {
                Verdict::Lost(Evidence::File)
            }
            _ => Verdict::Ambiguous,
        },
    }
}

/// What a whole cell's lost-write finding (and the stale one it shares the write with) must
/// say besides the count: `no_write` is why the device never wrote (a path without device
/// writes, a device that cannot do I/O here), if it did not.
pub fn cell_notes(findings: &mut Findings, no_write: Option<String>, map: MapKind) {
    if let Some(why) = no_write {
        findings.get(OracleKind::StaleExposure).note =
            Some(format!("only the end scan ran: {why}"));
        findings.get(OracleKind::LostWrite).notrun = Some(why);
    } else if map == MapKind::Private {
        findings.get(OracleKind::LostWrite).note = Some(
            "private mapping: device writes land in private copy-on-write pages by design and are never expected in the file; each is checked through the device's read-back instead"
                .into(),
        );
    }
}
