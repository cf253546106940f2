//! The physical frames behind a range of this process's memory, from `/proc/self/pagemap`:
//! one 64-bit entry per 4 KiB page, bit 63 "present", bits 0-54 the frame number. Without
//! CAP_SYS_ADMIN the kernel reports every frame as 0 (since 4.2), which the moved oracle
//! must tell apart from a real reading.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// The frame of each page of `len` bytes at `addr`: `None` where no page is present.
pub fn read(pagemap: &File, addr: usize, len: usize) -> Result<Vec<Option<u64>>, String> {
    let pages = len.div_ceil(PAGE);
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, (addr / PAGE * 8) as u64)
        .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
    Ok(decode(&raw))
}

/// The frames of raw pagemap entries.
pub fn decode(raw: &[u8]) -> Vec<Option<u64>> {
    raw.chunks_exact(8)
        .map(|c| {
            let e = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            (e & PRESENT != 0).then_some(e & PFN_MASK)
        })
        .collect()
}

/// Why frames cannot be judged from a reading, if they cannot: every present page reads as
/// frame 0 (the kernel hides frames from a process without CAP_SYS_ADMIN).
pub fn hidden(frames: &[Option<u64>]) -> Option<String> {
    let present: Vec<u64> = frames.iter().flatten().copied().collect();
    (!present.is_empty() && present.iter().all(|f| *f == 0)).then(|| {
        "/proc/self/pagemap shows every frame as 0: the kernel hides frames from a process without CAP_SYS_ADMIN".into()
    })
}

/// `/proc/self/pagemap`, opened once per pinner.
pub fn open() -> Result<File, String> {
    File::open("/proc/self/pagemap").map_err(|e| format!("opening /proc/self/pagemap: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_to_frames_of_present_pages() {
        let mut raw = Vec::new();
        raw.extend((PRESENT | 0x1234).to_le_bytes());
        raw.extend(0x1234u64.to_le_bytes()); // not present: a swap entry or nothing
        raw.extend((PRESENT | (1 << 55) | 7).to_le_bytes()); // soft-dirty bit is not frame
        assert_eq!(decode(&raw), vec![Some(0x1234), None, Some(7)]);
    }

    #[test]
    fn frames_all_zero_are_hidden_not_measured() {
        assert!(hidden(&[Some(0), None, Some(0)]).is_some());
        assert_eq!(hidden(&[Some(0), Some(5)]), None);
        assert_eq!(hidden(&[None]), None);
    }

    #[test]
    fn this_process_reads_its_own_frames() {
        let f = open().unwrap();
        let v = vec![1u8; 3 * PAGE];
        let frames = read(&f, v.as_ptr() as usize, v.len()).unwrap();
        assert!(frames.len() >= 3);
        assert!(frames.iter().any(|f| f.is_some()), "{frames:?}");
    }
}
