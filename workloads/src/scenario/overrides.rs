//! Command-line overrides over what a scenario file says, and `write_at`, the one device
//! write a reproducer replays.

use serde::{Deserialize, Serialize};

use super::Scenario;
use crate::backing::{BackingKind, MapKind};
use crate::pin::PinKind;
use crate::units::Span;

/// One device write, `OFFSET+LEN` bytes into the pinned file: what a storm's reproducer
/// replays (`write_at` in `[storm]`, `--write-at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WriteAt {
    pub offset: u64,
    pub len: u64,
}

impl WriteAt {
    pub fn parse(s: &str) -> Result<WriteAt, String> {
        let (o, l) = s
            .split_once('+')
            .ok_or_else(|| format!("{s:?}: expected OFFSET+LEN in bytes, e.g. 4097+33"))?;
        let num = |v: &str, what: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("{s:?}: {what} {v:?}: {e}"))
        };
        let (offset, len) = (num(o, "offset")?, num(l, "length")?);
        if len == 0 || len > 1 << 30 {
            return Err(format!("{s:?}: the length must be 1 byte to 1 GiB"));
        }
        offset
            .checked_add(len)
            .ok_or_else(|| format!("{s:?}: offset + length overflows"))?;
        Ok(WriteAt { offset, len })
    }
}

impl TryFrom<String> for WriteAt {
    type Error = String;
    fn try_from(s: String) -> Result<WriteAt, String> {
        WriteAt::parse(&s)
    }
}

impl From<WriteAt> for String {
    fn from(w: WriteAt) -> String {
        w.to_string()
    }
}

impl std::fmt::Display for WriteAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.offset, self.len)
    }
}

/// The flags of `pinstorm run` that change a scenario. Empty or `None` leaves the
/// scenario's own value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The backings of every job.
    pub backings: Vec<BackingKind>,
    /// The pin paths of every job.
    pub pins: Vec<PinKind>,
    /// The mapping of every job.
    pub map: Option<MapKind>,
    pub duration: Option<Span>,
    pub seed: Option<u64>,
    /// Replay one device write: the storm runs one pinner, no disruptor and no control cell,
    /// and every write is exactly this one.
    pub write_at: Option<WriteAt>,
}

/// Why a command-line override cannot apply to a scenario; the caller words it with the
/// flag's name, which this library does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideError {
    /// A storm duration of zero.
    ZeroDuration,
    /// A storm override for a scenario without a `[storm]` section.
    NoStorm,
}

impl Scenario {
    /// Apply `o`. Refused (nothing changed but the seed, backings, pins and mapping, which
    /// the caller then drops) when the duration is zero or a storm override meets a scenario
    /// without a storm.
    pub fn apply_overrides(&mut self, o: &Overrides) -> Result<(), OverrideError> {
        if let Some(seed) = o.seed {
            self.seed = seed;
        }
        if !o.backings.is_empty() {
            if let Some(p) = &mut self.probe {
                p.backings = o.backings.clone();
            }
            if let Some(b) = &mut self.bench {
                b.backings = o.backings.clone();
            }
            if let Some(st) = &mut self.storm {
                st.backings = o.backings.clone();
            }
        }
        if !o.pins.is_empty() {
            if let Some(p) = &mut self.probe {
                p.pins = o.pins.clone();
            }
            if let Some(b) = &mut self.bench {
                b.pins = o.pins.clone();
            }
            if let Some(st) = &mut self.storm {
                st.pins = o.pins.clone();
            }
        }
        if let Some(m) = o.map {
            if let Some(p) = &mut self.probe {
                p.maps = vec![m];
            }
            if let Some(b) = &mut self.bench {
                b.map = m;
            }
            if let Some(st) = &mut self.storm {
                st.maps = vec![m];
            }
        }
        if let Some(d) = o.duration {
            match &mut self.storm {
                Some(st) if !d.0.is_zero() => st.duration = d,
                Some(_) => return Err(OverrideError::ZeroDuration),
                None => return Err(OverrideError::NoStorm),
            }
        }
        if let Some(w) = o.write_at {
            let Some(st) = &mut self.storm else {
                return Err(OverrideError::NoStorm);
            };
            st.write_at = Some(w);
            st.pinners = std::num::NonZeroUsize::MIN;
            st.disruptors = 0;
            st.control = false;
            // Only the storm: the replay is of one write, not of the whole suite.
            self.probe = None;
            self.bench = None;
            self.lease = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_at_parses_offset_plus_length_and_refuses_the_rest() {
        assert_eq!(
            WriteAt::parse("4097+33"),
            Ok(WriteAt {
                offset: 4097,
                len: 33
            })
        );
        for bad in [
            "4097",
            "a+1",
            "1+0",
            "1+-3",
            "18446744073709551615+2",
            "0+2147483648",
        ] {
            assert!(WriteAt::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_at_makes_a_quiet_one_pinner_storm_of_that_write_only() {
        let (mut s, _, _) = Scenario::resolve("truncate-vs-pin").unwrap();
        let o = Overrides {
            write_at: Some(WriteAt::parse("100+7").unwrap()),
            pins: vec![PinKind::parse("io_uring").unwrap()],
            ..Overrides::default()
        };
        s.apply_overrides(&o).unwrap();
        let st = s.storm.as_ref().unwrap();
        assert_eq!((st.pinners.get(), st.disruptors, st.control), (1, 0, false));
        assert_eq!(st.write_at.map(|w| w.to_string()), Some("100+7".into()));
        let (mut lease, _, _) = Scenario::resolve("lease-lifecycle").unwrap();
        assert_eq!(lease.apply_overrides(&o), Err(OverrideError::NoStorm));
    }
}
