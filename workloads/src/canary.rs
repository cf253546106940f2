//! Canaries: what the "device" writes through a pin, so the oracles can tell where data came
//! from. A canary page is one 32-byte record repeated over the page:
//!
//! `magic "PINSTRM1" | run tag u32 | file id u32 | offset u64 | event u64` (little endian)
//!
//! `file id` names the file the write was meant for, `offset` where in it, `event` when (a
//! storm-wide sequence shared with layout operations). A page whose records disagree is
//! torn. Reading data back never trusts a single record.

pub const MAGIC: [u8; 8] = *b"PINSTRM1";
const RECORD: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canary {
    /// Distinguishes runs, so a canary from an earlier run is never mistaken for this one's.
    pub run_tag: u32,
    pub file_id: u32,
    pub offset: u64,
    pub event: u64,
}

impl Canary {
    fn record(&self) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..8].copy_from_slice(&MAGIC);
        r[8..12].copy_from_slice(&self.run_tag.to_le_bytes());
        r[12..16].copy_from_slice(&self.file_id.to_le_bytes());
        r[16..24].copy_from_slice(&self.offset.to_le_bytes());
        r[24..32].copy_from_slice(&self.event.to_le_bytes());
        r
    }

    /// A page (`len` a multiple of 32) filled with this canary.
    pub fn page(&self, len: usize) -> Vec<u8> {
        assert!(len % RECORD == 0 && len > 0);
        self.record().repeat(len / RECORD)
    }
}

/// What a page of a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageContent {
    /// Every byte zero (a hole, or a truncated and re-extended range).
    Zero,
    /// A whole canary page.
    Canary(Canary),
    /// Every byte equal to this value (a fill pattern pinstorm wrote with the CPU).
    Fill(u8),
    /// Canary records that disagree, or a canary mixed with other bytes.
    Torn,
    /// Anything else.
    Other,
}

pub fn decode(page: &[u8]) -> PageContent {
    if page.is_empty() {
        return PageContent::Other;
    }
    let first = page[0];
    if page.iter().all(|b| *b == first) {
        return if first == 0 {
            PageContent::Zero
        } else {
            PageContent::Fill(first)
        };
    }
    if page.len() % RECORD != 0 || page[..8] != MAGIC {
        return if page.windows(8).any(|w| w == MAGIC) {
            PageContent::Torn
        } else {
            PageContent::Other
        };
    }
    let rec = &page[..RECORD];
    if page.chunks(RECORD).any(|c| c != rec) {
        return PageContent::Torn;
    }
    let u32_at = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap());
    PageContent::Canary(Canary {
        run_tag: u32_at(8),
        file_id: u32_at(12),
        offset: u64_at(16),
        event: u64_at(24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_pages_round_trip() {
        let c = Canary {
            run_tag: 7,
            file_id: 3,
            offset: 8192,
            event: 99,
        };
        assert_eq!(decode(&c.page(4096)), PageContent::Canary(c));
    }

    #[test]
    fn zero_fill_and_torn_pages_are_told_apart() {
        assert_eq!(decode(&[0u8; 4096]), PageContent::Zero);
        assert_eq!(decode(&[0x5a; 4096]), PageContent::Fill(0x5a));
        let a = Canary {
            run_tag: 1,
            file_id: 1,
            offset: 0,
            event: 1,
        }
        .page(4096);
        let b = Canary {
            run_tag: 1,
            file_id: 2,
            offset: 0,
            event: 1,
        }
        .page(4096);
        let mut torn = a[..2048].to_vec();
        torn.extend_from_slice(&b[2048..]);
        assert_eq!(decode(&torn), PageContent::Torn);
        let mut half_zero = a[..2048].to_vec();
        half_zero.extend_from_slice(&[0u8; 2048]);
        assert_eq!(decode(&half_zero), PageContent::Torn);
        let mut other = vec![1u8; 4096];
        other[5] = 2;
        assert_eq!(decode(&other), PageContent::Other);
    }
}
