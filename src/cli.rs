//! The command line: clap definitions only. Turning them into plain options is in cmd/.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_workloads::backing::{Access, BackingKind, MapKind};
use pinstorm_workloads::pin::PinKind;
use pinstorm_workloads::scenario::WriteAt;
use pinstorm_workloads::units::{Size, Span};

const AFTER_HELP: &str = "\
Exit status (run, probe, bench; the summary's Verdict line and `export ktap`/`junit` of the
result say the same: a `not ok` / <failure> exactly when the status is not 0):
  0    the run completed and every fact with an expectation is as expected: probe cells,
       storm registrations and oracle counts, lease lifecycle facts (facts without an
       expectation, and those that did not run, are reported and never change the status)
  1    the run stopped on an error (the result file says which)
  2    bad command line, scenario file, expectations file or path
  3    the run completed and a fact DIFFERS from the expectations (the summary lists which)
  4    compare: a --fail-on gate was crossed, or a gate matched no metric
  5    compare: no gate failed, but a latency gate left metrics measured on a disturbed
       machine unjudged (rerun on a quiet machine, or --judge-disturbed)
  130  interrupted by SIGINT (143: SIGTERM, 129: SIGHUP); what was measured is kept

With --check EXPR (run, probe, bench pin, lab; repeatable), the status is for `git bisect
run` instead: 0 every check holds, 1 a check fails, 125 a checked fact could not be
measured (notrun, not in any result, the kernel did not build or boot, its guest
panicked); a failure outranks 125. Any usage or tool error exits 128 (git bisect aborts),
never 2 (bisect would take it for \"bad\"). The forms (docs/bisect.md):
  io_uring:xfs:shared:rw=EFAULT          a probe cell's outcome (=ok|EOPNOTSUPP, !=EFAULT)
  lost_write@io_uring:xfs-dax=0          a storm oracle's count (also <, <=, >, >=, !=)
  p50(io_uring:devdax:2M:register)<50us  a benchmark quantile (min p50 p90 p99 p999 max mean)

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
  pinstorm compare results/6.12.0-1-amd64 results/7.0.0 --fail-on 'p50>+10%' --fail-on 'cross_file>0'
  pinstorm compare kernel=6.12,label=base,latest kernel=6.12,label=my-series,latest
  pinstorm plot $PWD/results --out $PWD/plots
  pinstorm report $PWD/results --out $PWD/report.html
  pinstorm lab --kernels deb:6.12,deb:sid dax-vs-pin      (QEMU guests with FS-DAX and rxe)
  git bisect run pinstorm lab --kernels tree:. --build --check 'io_uring:xfs:shared:rw=EFAULT'
  pinstorm export kcidb $PWD/results --out $PWD/kcidb.json   (KCIDB I/O JSON)
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
    /// run). pinstorm creates it (mode 0700, with a marker file); an existing directory is
    /// used only if pinstorm made it and it is yours and not writable by others, else exit 2.
    /// Default: $PINSTORM_SCRATCH_ROOT, else /run/pinstorm for root, $XDG_RUNTIME_DIR/pinstorm
    /// or $TMPDIR/pinstorm-$UID for other users.
    #[arg(long, global = true, value_name = "DIR")]
    pub scratch_root: Option<PathBuf>,

    /// A directory you name as scratch, for the `scratch-dir` backing (any filesystem,
    /// e.g. a DAX mount). pinstorm works only in a subdirectory it creates there.
    #[arg(long, global = true, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// A directory on an FS-DAX filesystem you name as scratch, as FS=DIR (xfs or ext4),
    /// for the `xfs-dax` / `ext4-dax` backings. Repeatable. A directory whose files do not
    /// get STATX_ATTR_DAX is refused (notrun), never called DAX.
    #[arg(long, global = true, value_name = "FS=DIR")]
    pub dax_dir: Vec<String>,

    /// A device-dax character device you name as scratch (its contents are overwritten),
    /// for the `devdax` backing, e.g. /dev/dax0.0.
    #[arg(long, global = true, value_name = "DEV")]
    pub devdax: Option<PathBuf>,

    /// A block device you name as scratch, fstests style, as [FS=]DEV: FS xfs (the default:
    /// with reflink) or ext4, DEV an NVDIMM or CXL pmem namespace such as /dev/pmem0, or any
    /// disk. Repeatable, one per filesystem. pinstorm refuses a device that is mounted or in
    /// use, or holds a filesystem or partition table; otherwise it makes the filesystem on the
    /// whole device, mounts it dax=always in the run directory for the xfs-dax or ext4-dax
    /// backing (STATX_ATTR_DAX decides whether it is DAX), and wipes the device at the end.
    /// Everything on it is lost.
    #[arg(long, global = true, value_name = "[FS=]DEV")]
    pub scratch_dev: Vec<String>,

    /// With --scratch-dev: wipe what is on the device (filesystem, partition table)
    /// instead of refusing it.
    #[arg(long, global = true)]
    pub scratch_dev_force: bool,

    /// A name for what is being tested (kernel patch set, machine), stored in the result.
    #[arg(long, global = true)]
    pub label: Option<String>,

    /// Expectations to judge the run by: a file, or a directory whose *.toml files are read
    /// in name order; repeatable (later files win). They replace the built-in
    /// configs/expectations/{pins,leases,oracles}.toml for every kind of fact: [[expect]]
    /// (probe cells, storm registrations), [[fact]] (lease lifecycle), [[oracle]] (storm
    /// oracle counts). See docs/expectations.md.
    #[arg(long, global = true, value_name = "FILE|DIR")]
    pub expectations: Vec<PathBuf>,

    /// Output on stdout: a readable summary, JSON for machines, or Markdown (compare only).
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
    Markdown,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run scenario files or presets, one result each (default: the default host suite).
    Run(RunArgs),
    /// Print which pins this kernel allows: pin path x backing x map x access.
    Probe(ProbeArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Show pin paths, backings, layout operations and scenarios, and which are usable here.
    List,
    /// Run a scenario in QEMU guests booted from real kernels (Debian packages or your own
    /// build), with an emulated NVDIMM (FS-DAX xfs and ext4, device-dax) and soft-RoCE.
    #[command(after_help = LAB_HELP)]
    Lab(Box<LabArgs>),
    /// Undo what killed pinstorm runs left (mounts, loop devices, sysctls, files, lab guests).
    Cleanup(CleanupArgs),
    /// Compare two sets of runs (baseline and candidate) with significance, and gate on
    /// regressions.
    Compare(CompareArgs),
    /// Draw charts per kernel version (SVG and PNG) from result files.
    Plot(PlotArgs),
    /// Write one self-contained HTML report (charts, comparisons, environments, notruns).
    Report(ReportArgs),
    /// Export results as CSV, KTAP (kernel CI), JUnit XML (generic CI) or KCIDB JSON (the
    /// kernel community's shared results database).
    Export(ExportArgs),
}

const LAB_HELP: &str = "\
Each kernel boots under QEMU with virtme-ng (the host's root, read-only, is the guest's
userland, so the guest runs this very pinstorm binary and the host's ndctl, mkfs.xfs, rdma).
The guest makes FS-DAX xfs (reflink) and ext4 on an emulated NVDIMM, mounted dax=always and
checked with STATX_ATTR_DAX, a device-dax namespace when the scenario has a devdax backing, and soft-RoCE (rxe0 on a
dummy netdev; no network leaves the guest), then runs the scenario exactly as `pinstorm run`
does. The backings xfs-dax, ext4-dax and devdax are the DAX targets; xfs/ext4/tmpfs in the
same guest are the page-cache controls.

Results: RESULTS/<guest kernel release>/<run-id>/result.json with a `lab` record (kernel
source, KVM/TCG, vng and QEMU command lines, what the guest set up, console events) and
console.log next to it. A guest that panics, oopses or hangs is reported with the console
excerpt and the matrix goes on. Rerunning the same command resumes the matrix (kernels
already measured are skipped; --fresh measures them again).

Kernels are fetched from Debian's archive into the cache (signatures checked with
debian-archive-keyring; never installed on the host); a second run downloads nothing.

Exit status: 0 all kernels ran and agree with the expectations, 3 a kernel's result has a
fact that differs (as `pinstorm run` would exit 3 there) or its console shows a kernel
warning, 1 a guest panicked, hung, or could not be set up, 2 bad command line, 130/143
interrupted. With --check: 0 every check holds on every kernel, 1 one fails, 125 one could
not be judged (a kernel that does not build or boot, a guest that panics or times out, a
notrun cell), 128 usage or tool error (see `pinstorm --help`, docs/bisect.md).

Several scenarios make a matrix of kernels x scenarios, one guest per entry; --plan prints
it as JSON (with each entry's shard) and --shard K/N runs every N-th entry from the K-th,
for CI engines that spread a nightly over machines (docs/nightly.md). The shards' result
directories together hold the unsharded run's results, each once.

Examples:
  pinstorm lab                                         default scenario on deb:6.1,deb:6.12,deb:sid
  pinstorm lab --kernels deb:6.12 dax-vs-pin
  pinstorm lab --kernels path:/src/linux/arch/x86/boot/bzImage --modules /tmp/mods --label gup-v3
  pinstorm lab --kernels tree:/src/linux --label my-series quick
  pinstorm lab --kernels tree:. --build --check 'io_uring:xfs:shared:rw=EFAULT' quick
  pinstorm lab --kernels deb:6.1,deb:6.12,deb:sid --shard 2/3 quick dax-vs-pin
  pinstorm lab --plan --shard 1/3 quick dax-vs-pin
See docs/lab.md, docs/bisect.md, docs/nightly.md.";

/// `--check`, for `git bisect run`.
#[derive(Args, Debug, Default)]
pub struct CheckArgs {
    /// A check for `git bisect run` (repeatable): io_uring:xfs:shared:rw=EFAULT,
    /// lost_write@io_uring:xfs-dax=0, p50(io_uring:devdax:2M:register)<50us. The exit
    /// status becomes 0 (all hold), 1 (one fails), 125 (one could not be measured) or 128
    /// (usage or tool error). See `pinstorm --help`.
    #[arg(long = "check", value_name = "EXPR")]
    pub checks: Vec<String>,
}

/// The matrix of kernels x scenarios, and its shards.
#[derive(Args, Debug, Default)]
pub struct MatrixArgs {
    /// Run shard K of N of the matrix (entries are kernel x scenario, numbered kernel by
    /// kernel; entry i goes to shard i mod N + 1). Every shard must be given the same
    /// kernels and scenarios.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Print the matrix (every kernel x scenario entry and its shard) as JSON, run nothing.
    #[arg(long)]
    pub plan: bool,
}

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Scenario files or presets, each run in every guest (one guest per kernel and
    /// scenario). The default, `lab`, is the default suite sized for a TCG guest (DAX
    /// backings included); `default` runs the host's full suite in the guest.
    #[arg(value_name = "SCENARIO", default_value = "lab")]
    pub scenarios: Vec<String>,
    /// Kernels to boot, comma-separated: deb:6.1, deb:6.12, deb:sid, deb:VERSION,
    /// deb:PACKAGE[=VERSION], path:BZIMAGE (with --modules), tree:KERNEL_DIR (a relative
    /// path such as tree:. is taken from the current directory).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "deb:6.1,deb:6.12,deb:sid"
    )]
    pub kernels: Vec<String>,
    /// Build tree: kernels before booting them: `vng --kconfig` with the options the guest
    /// uses (replacing the tree's .config), `make bzImage modules`, modules installed into
    /// the cache; then booted like path: kernels. A kernel that does not build is a
    /// setup-error (125 with --check). Never resumed: measured every time.
    #[arg(long)]
    pub build: bool,
    #[command(flatten)]
    pub check: CheckArgs,
    #[command(flatten)]
    pub matrix: MatrixArgs,
    /// Modules for path: kernels: a directory holding lib/modules/RELEASE (an
    /// INSTALL_MOD_PATH) or the release directory itself.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// Where kernels, package lists, virtme-ng's venv and per-guest files live (absolute).
    /// Default: $PINSTORM_CACHE, else $XDG_CACHE_HOME/pinstorm, else ~/.cache/pinstorm.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// The vng program (default: PATH, then CACHE/venv/bin/vng).
    #[arg(long, value_name = "PATH")]
    pub vng: Option<PathBuf>,
    /// Acceleration: auto probes whether KVM really boots a kernel here, else TCG.
    #[arg(long, value_parser = ["auto", "kvm", "tcg"], default_value = "auto")]
    pub accel: String,
    /// Persistent memory: nvdimm (labels, ndctl namespaces), memmap (legacy e820), none.
    #[arg(long, value_enum, default_value_t = PmemArg::Nvdimm)]
    pub pmem: PmemArg,
    /// Make a device-dax namespace in the guest even when the scenario has no devdax
    /// backing (one that has gets it anyway), e.g. for a --guest-exec command. Device-dax
    /// allows long-term pins: the contrast case to FS-DAX.
    #[arg(long)]
    pub devdax_namespace: bool,
    /// Make an fsdax namespace per filesystem and hand them to the run as --scratch-dev
    /// xfs=DEV and ext4=DEV (pinstorm makes, mounts and wipes the filesystems, as on a host
    /// with a real NVDIMM) instead of making them in the guest's own set-up. Needs --pmem
    /// nvdimm.
    #[arg(long)]
    pub pmem_scratch_dev: bool,
    /// Give the guest a memoryless NUMA node 1 and the NVDIMM to it; the guest makes a
    /// device-dax namespace of what the region has left (384 MiB after the fsdax ones),
    /// binds it to the kmem driver and onlines its memory blocks in ZONE_NORMAL: node 1's
    /// only memory, for the memory-offline operation (mm-vs-pin-lab). Needs --pmem nvdimm.
    #[arg(long)]
    pub kmem_node: bool,
    /// Boot each guest kernel with `movablecore=SIZE` (512M, 1G, or a percentage of memory
    /// such as 25%): a ZONE_MOVABLE, from which a long-term pin must migrate its pages out
    /// first. The guest records the zone it got (fact `movablecore`).
    #[arg(long, value_name = "SIZE")]
    pub movablecore: Option<String>,
    /// Build the kernel's own mm selftests (cow, gup_longterm, migration; comma-separated)
    /// from Debian's linux-source of each guest's kernel and run them in the guest after the
    /// scenario; their KTAP verdicts land in the result's lab record (docs/mm.md).
    #[arg(long, value_name = "TESTS")]
    pub kselftests: Option<String>,
    /// Build the selftests from linux-source-SERIES (e.g. 6.12) instead of the kernel's own
    /// version (for a test the kernel's tree lacks; the record says the versions differ).
    #[arg(long, value_name = "SERIES", requires = "kselftests")]
    pub kselftest_source: Option<String>,
    /// Do not set up soft-RoCE in the guest.
    #[arg(long)]
    pub no_rxe: bool,
    /// Guest memory in MiB (the NVDIMM comes on top).
    #[arg(long, default_value_t = 2048)]
    pub memory: u64,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: usize,
    /// Guests at once (kernels booted in parallel; the summary stays in matrix order).
    /// Default: half the host's CPUs, as many as free memory holds, at least 1.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Watchdog: a guest that has not returned after this long is killed and reported.
    #[arg(long, default_value = "10m")]
    pub timeout: Span,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Refresh the Debian package lists even if they are less than a day old.
    #[arg(long)]
    pub refresh: bool,
    /// Only fetch and unpack the kernels into the cache (e.g. before going offline), build
    /// the --kselftests, and print where they are; boot nothing.
    #[arg(long)]
    pub fetch_only: bool,
    /// Measure every kernel again instead of resuming the matrix.
    #[arg(long)]
    pub fresh: bool,
    /// Debian mirror.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    pub mirror: String,
    /// Debian security mirror.
    #[arg(long, default_value = "http://deb.debian.org/debian-security")]
    pub security_mirror: String,
    /// A shell command to run in each guest after the scenario, e.g. your own probe. It
    /// gets PINSTORM_LAB_XFS_DAX, PINSTORM_LAB_EXT4_DAX and PINSTORM_LAB_DEVDAX (the DAX
    /// targets, empty when not set up) and PINSTORM_LAB_WORK (a scratch directory path in
    /// the guest); its output is saved as guest-exec.log next to the result.
    #[arg(long, value_name = "CMD")]
    pub guest_exec: Option<String>,
    /// Test hook: make the guest kernel panic (panic) or never return (hang) instead of
    /// running the scenario, to see the lab report it and go on. KIND[:KERNEL] applies to
    /// one kernel of the matrix only.
    #[arg(long, hide = true)]
    pub inject: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PmemArg {
    Nvdimm,
    Memmap,
    None,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Also clean what a killed `pinstorm lab` left in this cache (guests, run directories).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

const COMPARE_HELP: &str = "\
BASE and CAND are each a result file, a directory (every result.json below it), or a
selector over the results directory (--results): comma-separated kernel=6.12 (a release
prefix), label=NAME, scenario=NAME, host=NAME, run=ID-PREFIX, since=2026-01-01,
until=..., latest or latest=N (the newest N that match).

For every latency metric measured on both sides (pin latency per benchmark cell, pins and
layout operations during storms, lease breaks, lease-check overhead) it prints both sides,
the change in %, a confidence interval and a mark: slower / faster when the change is
significant, ~ when it is not. The interval: Welch's t-test across runs when both sides
have 2+ runs, else a bootstrap within runs. Significant: the whole interval lies beyond
--min-effect (5%), or beyond --single-run-noise (50%) when a side has a single run; tail
quantiles (p99, p999) are judged only with 2+ runs per side. Then the capability cells
whose outcome changed (newly refused / allowed pins), violations per run by oracle, and a
verdict line.
docs/analysis.md explains how to read it.

Gates (--fail-on, repeatable; or fail_on = [...] in a --gates TOML file):
  p50>+10%            a significant p50 change of more than +10% (also p90, p99, p999)
  p99[tmpfs]>+20%     only metrics whose cell contains \"tmpfs\"
  violations>0        any violation in the candidate (per run); also each oracle:
{ORACLES},
                      differs (facts that differ from the expectations)
  lost_write>+10      ten more per run than the baseline; lost_write>+50%: half as many more
  refused>0           a pin newly refused (allowed>0: newly allowed; outcomes>0: any change)
A gate that matched nothing (no metric of its quantile and filter measured on both sides, an
oracle no run measured, no cell on both sides) fails like a crossed one, naming what was
missing, unless --allow-empty-gates is given. A crossed gate names how many metrics crossed
it and the worst few; --format json lists them all.

Every run records how disturbed its machine was, per job: other processes' CPU time, steal,
load, CPU frequency. Disturbed: {THRESHOLDS}.
Both sides' disturbance is shown. A latency metric measured while either side was disturbed
is marked and not judged by latency gates unless --judge-disturbed: such a gate that crossed
nothing else is INCONCLUSIVE (exit 5), naming the side and why. Count gates judge facts
whatever the load. Results written before disturbance was recorded are judged as measured
and shown as unknown (docs/analysis.md).
Exit status: 0 no gate failed, 4 a gate crossed or matched nothing, 5 no gate failed but one
was inconclusive (disturbed machine), 2 bad input (a path, or a selector that selects no
run, or a gate expression), 1 error.";

/// The compare help, with the oracles of [`OracleKind`] filled in (indented, wrapped).
pub fn compare_help() -> String {
    let mut lines: Vec<String> = vec![String::new()];
    for name in OracleKind::VIOLATIONS.iter().map(|k| k.name()) {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + name.len() + 2 > 66 {
            last.push(',');
            lines.push(String::new());
        }
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() {
            last.push_str(", ");
        }
        last.push_str(name);
    }
    let list = lines
        .iter()
        .map(|l| format!("{:22}{l}", ""))
        .collect::<Vec<_>>()
        .join("\n");
    COMPARE_HELP.replace("{ORACLES}", &list).replace(
        "{THRESHOLDS}",
        &pinstorm_analysis::disturbance::thresholds(),
    )
}

#[derive(Args, Debug)]
#[command(after_help = compare_help())]
pub struct CompareArgs {
    /// The baseline: result file, directory, or selector (kernel=6.12,label=base,latest).
    #[arg(value_name = "BASE")]
    pub base: String,
    /// The candidate: result file, directory, or selector.
    #[arg(value_name = "CAND")]
    pub cand: String,
    /// Fail (exit 4) when this threshold is crossed, e.g. 'p99>+10%', 'violations>0'.
    #[arg(long = "fail-on", value_name = "EXPR")]
    pub fail_on: Vec<String>,
    /// Let a gate that matched nothing (no metric it names measured on both sides) pass
    /// instead of failing with exit 4.
    #[arg(long)]
    pub allow_empty_gates: bool,
    /// Judge latency gates on metrics measured while the machine of either side was
    /// disturbed (by default they are left unjudged and such a gate is inconclusive, exit 5).
    #[arg(long)]
    pub judge_disturbed: bool,
    /// A TOML file with fail_on = ["...", ...] (at the top or under [compare]).
    #[arg(long, value_name = "FILE")]
    pub gates: Option<PathBuf>,
    /// Confidence of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Noise floor (%): a change is significant when its whole interval lies beyond it.
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    pub min_effect: f64,
    /// Noise floor (%) when a side has a single run (run-to-run noise is not measured).
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    pub single_run_noise: f64,
    /// Quantiles to compare.
    #[arg(long, value_delimiter = ',', default_value = "p50,p99")]
    pub stats: Vec<String>,
    /// Also write the comparison as Markdown to this file (absolute path).
    #[arg(long, value_name = "FILE")]
    pub markdown_out: Option<PathBuf>,
    /// Also write the comparison as JSON to this file (absolute path).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Result files or directories (default: the results directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Directory to write the images to (absolute; created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Image formats.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "svg,png")]
    pub formats: Vec<ImageArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageArg {
    Svg,
    Png,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Result files or directories (default: the results directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The HTML file to write (absolute path).
    #[arg(long, value_name = "FILE.html")]
    pub out: PathBuf,
    /// Title of the report.
    #[arg(long, default_value = "pinstorm report")]
    pub title: String,
    /// The group the others are compared against, as a kernel release prefix or
    /// "RELEASE (LABEL)" (default: the lowest kernel version).
    #[arg(long, value_name = "GROUP")]
    pub base: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// csv, ktap, junit or kcidb (KCIDB I/O JSON, schema v5.3; docs/nightly.md).
    #[arg(value_enum)]
    pub to: ExportFormat,
    /// Result files or directories (default: the results directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Write to this file (absolute path) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Ktap,
    Junit,
    Kcidb,
}

/// What `run` and `lab` may change in the scenarios they run.
#[derive(Args, Debug)]
pub struct OverrideArgs {
    /// Run every job on these backings only.
    #[arg(long, value_delimiter = ',', value_parser = BackingKind::parse)]
    pub backing: Vec<BackingKind>,
    /// Run storms (and the probe) with this mapping only.
    #[arg(long, value_enum)]
    pub map: Option<MapArg>,
    /// Storm duration per cell (e.g. 5s).
    #[arg(long)]
    pub duration: Option<Span>,
    /// Run every job with these pin paths only.
    #[arg(long, value_delimiter = ',', value_parser = PinKind::parse)]
    pub pin: Vec<PinKind>,
    /// Replay one device write of a storm finding: every write at OFFSET+LEN bytes into the
    /// pinned file, with one pinner, no layout operation and no other job (the reproducer
    /// the summary prints under each finding).
    #[arg(long, value_name = "OFFSET+LEN", value_parser = WriteAt::parse)]
    pub write_at: Option<WriteAt>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Scenario files or preset names (default, quick, ...), run one after the other, one
    /// result each: the matrix of this kernel x these scenarios (--plan, --shard).
    #[arg(value_name = "SCENARIO", default_value = "default")]
    pub scenarios: Vec<String>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub check: CheckArgs,
    #[command(flatten)]
    pub matrix: MatrixArgs,
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
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Register + unregister latency across sizes and backings, next to the pin path's
    /// baseline (the same calls made raw, sharing no code with pinstorm's pinner).
    ///
    /// A call that fails is counted by errno (`errors`, `baseline_errors`) and makes the row's
    /// outcome that errno, so a cell expected `ok` differs (exit status 3). A row with fewer
    /// than 10 samples is notrun, saying why. ops/s is measured: successful calls over the
    /// wall time of the measured blocks, added over threads (docs/result-schema.md).
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
    /// Recorded cycles per thread and cell (a row with fewer than 10 samples is notrun).
    #[arg(long, default_value_t = 2000)]
    pub iterations: u64,
    /// Unrecorded warm-up cycles.
    #[arg(long, default_value_t = 16)]
    pub warmup: u64,
    /// Time budget per cell (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s")]
    pub max_time: Span,
    /// Skip the interleaved baseline (the same calls made raw in a tight loop).
    #[arg(long)]
    pub no_baseline: bool,
    /// Also time one 4 KiB device write through each fresh registration (op
    /// `device-write`; for rdma-odp the device's page fault, or a prefetched write).
    #[arg(long)]
    pub device_write: bool,
    /// Time device writes of these lengths through each fresh registration, each at an
    /// offset of its own, first right after it (the first touch: an ODP page fault) and then
    /// again (ops `device-write-LEN`, `device-rewrite-LEN`; plain `device-write` and
    /// `device-rewrite` for 4K). E.g. 1,4K,64K,1M; lengths that do not fit the region are
    /// notrun. Implies --device-write.
    #[arg(long, value_delimiter = ',', value_name = "LENS")]
    pub write_sizes: Vec<Size>,
    #[command(flatten)]
    pub check: CheckArgs,
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
