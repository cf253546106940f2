//! Pin paths `rdma` and `rdma-odp`: RDMA memory registration.
//!
//! `ibv_reg_mr` is the long-term pin the 2019 layout-lease debate was about: the kernel
//! (ib_umem_get -> pin_user_pages(FOLL_LONGTERM | FOLL_WRITE unless the MR is read-only))
//! pins the pages until `ibv_dereg_mr`, and the NIC DMAs into them at any time without the
//! CPU. `rdma-odp` registers with `IBV_ACCESS_ON_DEMAND` instead: nothing is pinned, the
//! device mirrors the process's page tables, faults pages in, and MMU notifiers invalidate
//! them when the file changes.
//!
//! The device is a real one: each pinner owns two RC queue pairs on the same port connected
//! to each other (loopback). A device write is an RDMA WRITE from a registered staging
//! buffer into the MR under test; a device read is an RDMA READ out of it. A completion with
//! an error status (a remote access error after an ODP invalidation, say), or no completion
//! within the timeout, is a measured outcome (`PinError::Device`), never a crash or a hang.
//!
//! Without the `rdma` cargo feature the paths exist and report `notrun`. Which device, port
//! and access flags are used is the [`RdmaConfig`] each path is built with
//! (`PinSettings::rdma`: a scenario's `[rdma]` section, with the CLI's `--rdma-dev` and
//! `--rdma-port` merged in). The raw verbs are in [`verbs`] (the only unsafe code here) and
//! the C shim next to it. See docs/rdma.md.

use serde::{Deserialize, Serialize};

use super::{Availability, DeviceIo, FollPins, PinError, PinKind, PinPath, Pinner, TightLoop};
use crate::units::Span;

#[cfg(feature = "rdma")]
mod imp;
#[cfg(feature = "rdma")]
#[allow(unsafe_code)]
pub mod verbs;

/// What to do when there is no device: the words a kernel developer needs.
pub const HINT: &str = "for soft-RoCE: modprobe rdma_rxe; rdma link add rxe0 type rxe netdev IF (IF: any up interface, even a dummy one); for siw: modprobe siw; rdma link add siw0 type siw netdev IF; the user-space provider must be installed too (Debian: ibverbs-providers)";

/// Why the paths cannot run in a build without the feature.
pub const NOT_BUILT: &str =
    "built without the rdma feature: cargo build --features rdma (needs libibverbs-dev, cmake, clang)";

/// One MR access flag, as scenario files name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessFlag {
    /// `IBV_ACCESS_LOCAL_WRITE`: the device may write the region on behalf of this side
    /// (receives, RDMA READ responses). Makes the pin FOLL_WRITE.
    LocalWrite,
    /// `IBV_ACCESS_REMOTE_WRITE`: peers may RDMA WRITE into it (needs local-write).
    RemoteWrite,
    /// `IBV_ACCESS_REMOTE_READ`: peers may RDMA READ it.
    RemoteRead,
    /// `IBV_ACCESS_REMOTE_ATOMIC`: peers may run atomics on it (needs local-write).
    Atomic,
    /// `IBV_ACCESS_ON_DEMAND`: on-demand paging instead of pinning.
    OnDemand,
    /// No flag: a read-only registration (local read only; pinned without FOLL_WRITE).
    ReadOnly,
}

impl AccessFlag {
    pub fn bits(self) -> u32 {
        match self {
            AccessFlag::LocalWrite => 1,
            AccessFlag::RemoteWrite => 1 << 1,
            AccessFlag::RemoteRead => 1 << 2,
            AccessFlag::Atomic => 1 << 3,
            AccessFlag::OnDemand => 1 << 6,
            AccessFlag::ReadOnly => 0,
        }
    }
}

/// The flags a registration of `writable` memory gets when the scenario names none: what a
/// storage or RPC server registers (local write, remote write, remote read), or remote read
/// only for a read-only mapping (a FOLL_WRITE pin of it could only fail).
pub fn default_access(writable: bool) -> u32 {
    if writable {
        AccessFlag::LocalWrite.bits()
            | AccessFlag::RemoteWrite.bits()
            | AccessFlag::RemoteRead.bits()
    } else {
        AccessFlag::RemoteRead.bits()
    }
}

/// `IBV_ACCESS_*` bits by name, for reasons and results.
pub fn access_names(bits: u32) -> String {
    let mut v = Vec::new();
    for (b, n) in [
        (1, "LOCAL_WRITE"),
        (2, "REMOTE_WRITE"),
        (4, "REMOTE_READ"),
        (8, "REMOTE_ATOMIC"),
        (64, "ON_DEMAND"),
    ] {
        if bits & b != 0 {
            v.push(n);
        }
    }
    if v.is_empty() {
        "0 (read-only)".into()
    } else {
        v.join("|")
    }
}

/// `[rdma]` in a scenario file; `--rdma-dev` / `--rdma-port` override the first two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdmaConfig {
    /// Device name (`rxe0`, `mlx5_0`); default: the first device with an active port.
    #[serde(default)]
    pub device: Option<String>,
    /// Port number (1-based); default: the device's first active port.
    #[serde(default)]
    pub port: Option<u8>,
    /// MR access flags for every registration; default: local-write, remote-write,
    /// remote-read on writable mappings, remote-read on read-only ones. `rdma-odp` adds
    /// on-demand by itself.
    #[serde(default)]
    pub access: Option<Vec<AccessFlag>>,
    /// `rdma-odp`: prefetch the whole MR with `ibv_advise_mr` after registering (when the
    /// device has it).
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// How long a device write or read may take before it is recorded as lost.
    #[serde(default = "default_timeout")]
    pub completion_timeout: Span,
    /// Path MTU of the loopback queue pairs in bytes (256 .. 4096); default: the port's
    /// active MTU. 4096 makes every 4 KiB device write one packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
}

/// `enum ibv_mtu` for a path MTU in bytes.
pub fn mtu_enum(bytes: u32) -> Option<u32> {
    match bytes {
        256 => Some(1),
        512 => Some(2),
        1024 => Some(3),
        2048 => Some(4),
        4096 => Some(5),
        _ => None,
    }
}

fn yes() -> bool {
    true
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(5))
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            port: None,
            access: None,
            prefetch: true,
            completion_timeout: default_timeout(),
            path_mtu: None,
        }
    }
}

impl RdmaConfig {
    /// The access bits a registration of a mapping gets.
    pub fn access_bits(&self, writable: bool, odp: bool) -> u32 {
        let base = match &self.access {
            Some(flags) => flags.iter().fold(0, |b, f| b | f.bits()),
            None => default_access(writable),
        };
        if odp {
            base | AccessFlag::OnDemand.bits()
        } else {
            base
        }
    }
}

/// One port of a device, as `pinstorm list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortReport {
    pub port: u8,
    /// `ACTIVE`, `DOWN`, ...
    pub state: String,
    /// `InfiniBand` or `Ethernet` (RoCE, iWARP).
    pub link_layer: String,
    pub active_mtu: u32,
    /// The GID a loopback would use (index, type), if any.
    pub gid: Option<String>,
}

/// One device, as `pinstorm list` shows it and results record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub name: String,
    /// `ib` (InfiniBand and RoCE) or `iwarp`.
    pub transport: String,
    pub fw_ver: String,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub ports: Vec<PortReport>,
    /// ODP capabilities from `ibv_query_device_ex`, or why they could not be read.
    pub odp: String,
    /// Whether the device can take an on-demand-paging RC MR with RDMA WRITE.
    pub odp_rc_write: bool,
    pub error: Option<String>,
}

/// Every RDMA device of this machine, or why there are none (not built, no kernel support,
/// no device, with the hint).
pub fn inventory() -> Result<Vec<DeviceReport>, String> {
    #[cfg(feature = "rdma")]
    {
        imp::inventory()
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(NOT_BUILT.into())
    }
}

/// The device and port the paths would use with `cfg`, in one line (for results and
/// `pinstorm list`), or why none.
pub fn selected(cfg: &RdmaConfig) -> Result<String, String> {
    #[cfg(feature = "rdma")]
    {
        imp::selected_summary(cfg)
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = cfg;
        Err(NOT_BUILT.into())
    }
}

/// `rdma` (`odp: false`) and `rdma-odp`, with the device, port and access flags to use.
pub struct RdmaPath {
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    cfg: RdmaConfig,
    odp: bool,
}

impl RdmaPath {
    pub fn new(cfg: RdmaConfig, odp: bool) -> RdmaPath {
        RdmaPath { cfg, odp }
    }
}

impl PinPath for RdmaPath {
    fn kind(&self) -> PinKind {
        if self.odp {
            PinKind::RdmaOdp
        } else {
            PinKind::Rdma
        }
    }

    fn uses_rdma_device(&self) -> bool {
        true
    }

    /// A plain MR is pinned by ib_umem_get (pin_user_pages_fast, FOLL_LONGTERM); an ODP MR
    /// pins nothing.
    fn foll_pins(&self) -> FollPins {
        if self.odp {
            FollPins::NotTaken(
                "on-demand paging takes no pins (the device mirrors the page tables, faults pages in and is invalidated by MMU notifiers): the FOLL_PIN counters cannot see it",
            )
        } else {
            FollPins::Counted
        }
    }

    /// An RDMA WRITE from a staging buffer over the loopback queue pairs.
    fn device_writes(&self) -> DeviceIo {
        DeviceIo::Supported
    }

    /// An RDMA READ into a staging buffer over the loopback queue pairs.
    fn device_reads(&self) -> DeviceIo {
        DeviceIo::Supported
    }

    fn run_flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(d) = self.device() {
            f.extend(["--rdma-dev".to_string(), d]);
        }
        if let Some(p) = self.cfg.port {
            f.extend(["--rdma-port".to_string(), p.to_string()]);
        }
        if !self.cfg.prefetch {
            f.push("--rdma-no-prefetch".into());
        }
        f
    }

    /// The device the configuration selects (`rxe0`), if there is one.
    fn device(&self) -> Option<String> {
        #[cfg(feature = "rdma")]
        {
            imp::selected_name(&self.cfg)
        }
        #[cfg(not(feature = "rdma"))]
        {
            None
        }
    }

    fn availability(&self) -> Availability {
        #[cfg(feature = "rdma")]
        {
            imp::availability(&self.cfg)
        }
        #[cfg(not(feature = "rdma"))]
        {
            Availability::NotRun(NOT_BUILT.into())
        }
    }

    fn pinner(&self) -> Result<Box<dyn Pinner>, PinError> {
        #[cfg(feature = "rdma")]
        {
            Ok(Box::new(imp::RdmaPinner::new(&self.cfg, self.odp)?))
        }
        #[cfg(not(feature = "rdma"))]
        {
            Err(PinError::NotRun(NOT_BUILT.into()))
        }
    }

    fn tight_loop(&self) -> Option<Box<dyn TightLoop>> {
        #[cfg(feature = "rdma")]
        {
            imp::tight_loop(&self.cfg, self.odp)
        }
        #[cfg(not(feature = "rdma"))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_mtus_are_the_ib_sizes() {
        assert_eq!(mtu_enum(4096), Some(5));
        assert_eq!(mtu_enum(256), Some(1));
        assert_eq!(mtu_enum(1500), None);
    }

    #[test]
    fn default_access_follows_the_mapping() {
        let c = RdmaConfig::default();
        assert_eq!(
            access_names(c.access_bits(true, false)),
            "LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ"
        );
        assert_eq!(access_names(c.access_bits(false, false)), "REMOTE_READ");
        assert_eq!(
            access_names(c.access_bits(true, true)),
            "LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ|ON_DEMAND"
        );
    }

    #[test]
    fn scenario_access_flags_replace_the_default() {
        let c: RdmaConfig = toml::from_str("access = [\"read-only\"]").unwrap();
        assert_eq!(c.access_bits(true, false), 0);
        let c: RdmaConfig = toml::from_str("access = [\"local-write\", \"atomic\"]").unwrap();
        assert_eq!(
            access_names(c.access_bits(false, true)),
            "LOCAL_WRITE|REMOTE_ATOMIC|ON_DEMAND"
        );
        assert!(toml::from_str::<RdmaConfig>("access = [\"remote-wrte\"]").is_err());
        assert!(toml::from_str::<RdmaConfig>("devise = \"rxe0\"").is_err());
    }

    #[test]
    fn without_a_device_or_the_feature_the_paths_say_why() {
        // On a machine with an RDMA device and the feature this is usable; everywhere else
        // the reason must name the feature or the rxe hint.
        for odp in [false, true] {
            match RdmaPath::new(RdmaConfig::default(), odp).availability() {
                Availability::Usable if !cfg!(feature = "rdma") => {
                    panic!("usable without the rdma feature")
                }
                Availability::Usable => {}
                Availability::NotRun(r) => {
                    if cfg!(feature = "rdma") {
                        assert!(
                            r.contains("rdma link add") || r.contains("--rdma"),
                            "reason without the hint: {r}"
                        );
                    } else {
                        assert!(r.contains("--features rdma"), "{r}");
                    }
                }
            }
        }
    }
}
