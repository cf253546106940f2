//! The command line: clap definitions only. Turning them into plain options is in main.rs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pinstorm_workloads::backing::{Access, BackingKind, MapKind};
use pinstorm_workloads::pin::PinKind;
use pinstorm_workloads::units::{Size, Span};

const AFTER_HELP: &str = "\
Exit status:
  0    every measured cell agrees with the expectations (or has none)
  1    the run stopped on an error (the result file says which)
  2    bad command line, scenario file or path
  3    the run completed, and a probe cell or a lease lifecycle fact DIFFERS from the
       expectations, or a storm saw a registration the expectations did not expect
  130  interrupted by SIGINT (143: SIGTERM); what was measured is kept

Results go to RESULTS/<kernel-release>/<run-id>/result.json (schema: docs/result-schema.md).
Nothing outside the scratch root, the results directory and a --scratch-dir you name is
ever written, and everything pinstorm mounts, attaches or changes is undone on exit; a run
that was killed is cleaned up by the next one (or by `pinstorm cleanup`).

Examples:
  pinstorm run                          the default host suite (configs/default.toml)
  pinstorm probe --format json          the capability matrix of this kernel, as JSON
  pinstorm bench pin --sizes 4K,2M --backings tmpfs,anon
  pinstorm run configs/quick.toml --label my-gup-series-v2
  pinstorm run configs/truncate-vs-pin.toml --backing memfd --duration 5s --seed 7
  pinstorm probe --backings scratch-dir --scratch-dir /mnt/pmem0/scratch   (a DAX fs)
  pinstorm probe --pins rdma,rdma-odp --rdma-dev rxe0   (a build with --features rdma)";

#[derive(Parser, Debug)]
#[command(
    name = "pinstorm",
    version,
    about = "Benchmark and stress suite for Linux long-term page pins racing file layout changes",
    long_about = "pinstorm pins memory the way devices do (io_uring fixed buffers, vmsplice, RDMA \
memory registration with real RDMA WRITE/READ as the device) on anonymous memory, memfd, tmpfs, hugetlbfs and files on \
ext4/xfs/btrfs scratch filesystems, measures which pins the kernel allows and how long \
pinning takes, compares what it saw with per-kernel expectations, and stores every result \
with the kernel it ran on.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Root of the result tree (absolute). Default: $PINSTORM_RESULTS, else ./results under
    /// the directory pinstorm is started from.
    #[arg(long, global = true, value_name = "DIR")]
    pub results: Option<PathBuf>,

    /// Where pinstorm makes its scratch files, images and mounts (absolute; locked for the
    /// run). Default: $PINSTORM_SCRATCH_ROOT, else $TMPDIR/pinstorm.
    #[arg(long, global = true, value_name = "DIR")]
    pub scratch_root: Option<PathBuf>,

    /// A directory you name as scratch, for the `scratch-dir` backing (any filesystem,
    /// e.g. a DAX mount). pinstorm works only in a subdirectory it creates there.
    #[arg(long, global = true, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// A name for what is being tested (kernel patch set, machine), stored in the result.
    #[arg(long, global = true)]
    pub label: Option<String>,

    /// Expectations file to judge the probe by (default: the built-in
    /// configs/expectations/pins.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub expectations: Option<PathBuf>,

    /// Output on stdout: a readable summary, or JSON for machines.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// No phase messages or progress bar on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// RDMA device for the `rdma` and `rdma-odp` pin paths (e.g. rxe0, mlx5_0; see
    /// `pinstorm list`). Default: the first device with an active port. Overrides a
    /// scenario's `[rdma] device`.
    #[arg(long, global = true, value_name = "NAME")]
    pub rdma_dev: Option<String>,

    /// Port of the RDMA device (1-based). Default: its first active port.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub rdma_port: Option<u8>,

    /// rdma-odp: do not prefetch new ODP registrations with ibv_advise_mr, so the device's
    /// first write into each page faults (compare with `bench pin --device-write`).
    #[arg(long, global = true)]
    pub rdma_no_prefetch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scenario file or preset (default: the default host suite).
    Run(RunArgs),
    /// Print which pins this kernel allows: pin path x backing x map x access.
    Probe(ProbeArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Show pin paths, backings, layout operations and scenarios, and which are usable here.
    List,
    /// Undo what killed pinstorm runs left (mounts, loop devices, sysctls, files).
    Cleanup,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A scenario file, or a preset name (default, quick).
    #[arg(default_value = "default")]
    pub scenario: String,
    /// Run every job on these backings only.
    #[arg(long, value_delimiter = ',', value_parser = BackingKind::parse)]
    pub backing: Vec<BackingKind>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run storms (and the probe) with this mapping only.
    #[arg(long, value_enum)]
    pub map: Option<MapArg>,
    /// Storm duration per cell (e.g. 5s).
    #[arg(long)]
    pub duration: Option<Span>,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Pin paths to probe.
    #[arg(long, value_delimiter = ',', value_parser = PinKind::parse)]
    pub pins: Vec<PinKind>,
    /// Backings to probe (default: all).
    #[arg(long, value_delimiter = ',', value_parser = BackingKind::parse)]
    pub backings: Vec<BackingKind>,
    /// Mappings: shared, private.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub maps: Vec<MapArg>,
    /// Access: rw, ro.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub access: Vec<AccessArg>,
    /// Region size (rounded up to the backing's page size).
    #[arg(long, default_value = "2M")]
    pub size: Size,
    /// Do not let the device write and read through successful pins.
    #[arg(long)]
    pub no_device_io: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Register + unregister latency across sizes and backings, next to a tight loop of
    /// the same syscalls.
    Pin(BenchPinArgs),
}

#[derive(Args, Debug)]
pub struct BenchPinArgs {
    #[arg(long, value_delimiter = ',', value_parser = PinKind::parse)]
    pub pins: Vec<PinKind>,
    /// Backings (default: anon, anon-hugetlb, memfd, tmpfs, hugetlbfs).
    #[arg(long, value_delimiter = ',', value_parser = BackingKind::parse)]
    pub backings: Vec<BackingKind>,
    /// Region sizes (default: 4K,64K,2M,64M).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<Size>,
    #[arg(long, value_enum, default_value_t = MapArg::Shared)]
    pub map: MapArg,
    #[arg(long, value_enum, default_value_t = AccessArg::Rw)]
    pub access: AccessArg,
    /// Pinning threads, each with its own ring and region.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Recorded cycles per thread and cell.
    #[arg(long, default_value_t = 2000)]
    pub iterations: u64,
    /// Unrecorded warm-up cycles.
    #[arg(long, default_value_t = 16)]
    pub warmup: u64,
    /// Time budget per cell (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s")]
    pub max_time: Span,
    /// Skip the interleaved tight-loop baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Also time one 4 KiB device write through each fresh registration (op
    /// `device-write`; for rdma-odp the device's page fault, or a prefetched write).
    #[arg(long)]
    pub device_write: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MapArg {
    Shared,
    Private,
}

impl From<MapArg> for MapKind {
    fn from(m: MapArg) -> MapKind {
        match m {
            MapArg::Shared => MapKind::Shared,
            MapArg::Private => MapKind::Private,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    Rw,
    Ro,
}

impl From<AccessArg> for Access {
    fn from(a: AccessArg) -> Access {
        match a {
            AccessArg::Rw => Access::Rw,
            AccessArg::Ro => Access::Ro,
        }
    }
}
