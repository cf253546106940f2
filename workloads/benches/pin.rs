//! `cargo bench -p pinstorm-workloads`: one io_uring register + unregister cycle three ways,
//! on private anonymous memory (2 MiB and 4 KiB) and a 2 MiB tmpfs file:
//!
//! - `pinstorm`: through the library (`PinPath` -> `Pinner` trait objects), as `bench pin`
//!   measures it;
//! - `baseline`: the pin path's baseline (`PinPath::tight_loop`: raw `io_uring_register` on
//!   a ring of its own), as `bench pin` interleaves it;
//! - `c_loop`: tests/independent/pin_cycle_loop.c, a C program sharing no code with
//!   pinstorm, on memory it maps itself (timed by itself: `iter_custom` takes its own sum of
//!   the cycles, so starting the process is not counted). Needs `cc`; skipped without it.
//!
//! The first two medians side by side are the harness's own overhead; the third is the
//! yardstick for both. The machine's state moves these numbers by more than their
//! differences (on a shared 2-vCPU VM the same C loop alternates between about 45 and 60 us
//! for 2 MiB within one process): compare runs made back to back, repeated, not one run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use pinstorm_workloads::backing::{Access, BackingKind, MapKind, RegionSpec, SetupEnv};
use pinstorm_workloads::pin::{Availability, PinKind, PinSettings};
use pinstorm_workloads::scratch::ScratchRoot;
use pinstorm_workloads::units::Size;

/// The C loop, built with the system's compiler; `None` (said why) without one.
fn c_loop() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/independent/pin_cycle_loop.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-pin-cycle-loop");
    match Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!(
            "pin_cycle_loop.c does not build:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("c_loop not run: no C compiler ({e})");
            None
        }
    }
}

/// `iters` cycles of the C loop: the sum of its own cycle timings.
fn run_c_loop(exe: &Path, size: u64, file: Option<&str>, iters: u64) -> Duration {
    let mut cmd = Command::new(exe);
    cmd.args(["--size", &size.to_string(), "--iters", &iters.to_string()]);
    if let Some(f) = file {
        cmd.args(["--file", f]);
    }
    let o = cmd.output().expect("run the C loop");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let total = out
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total_ns="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no total_ns in {out:?}"));
    Duration::from_nanos(total)
}

fn pin_cycle(c: &mut Criterion) {
    let path = PinKind::IoUring.path(&PinSettings::default());
    if let Availability::NotRun(r) = path.availability() {
        eprintln!("io_uring benchmarks not run: {r}");
        return;
    }
    let c_exe = c_loop();
    let root_dir = std::env::temp_dir().join(format!("pinstorm-bench-{}", std::process::id()));
    let root = ScratchRoot::open(&root_dir).expect("scratch root");
    let run = root.new_run("bench").expect("run dir");
    let env = SetupEnv {
        is_root: pinstorm_workloads::is_root(),
        scratch_dir: None,
        ..SetupEnv::default()
    };

    let mut group = c.benchmark_group("io_uring_register_unregister");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (kind, size, map) in [
        (BackingKind::Anon, Size(2 << 20), MapKind::Private),
        (BackingKind::Anon, Size(4 << 10), MapKind::Private),
        (BackingKind::Tmpfs, Size(2 << 20), MapKind::Shared),
    ] {
        let backing = match kind.setup(&env, &run) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{kind} not run: {e}");
                continue;
            }
        };
        let region = backing
            .region(&RegionSpec {
                size,
                map,
                access: Access::Rw,
            })
            .expect("region");
        let target = region.pin_target();
        let id = format!("{kind}/{size}");

        let mut pinner = path.pinner().expect("pinner");
        group.bench_function(BenchmarkId::new("pinstorm", &id), |b| {
            b.iter(|| {
                pinner.register(black_box(target)).expect("register");
                pinner.unregister().expect("unregister");
            })
        });

        let mut baseline = path.tight_loop().expect("io_uring has a baseline");
        group.bench_function(BenchmarkId::new("baseline", &id), |b| {
            b.iter(|| {
                let c = baseline.cycle(black_box(target));
                c.register.expect("register");
                c.unregister.expect("released").expect("unregister");
            })
        });

        if let Some(exe) = &c_exe {
            let file = (kind == BackingKind::Tmpfs)
                .then(|| format!("/dev/shm/pinstorm-bench-c-loop-{}", std::process::id()));
            group.bench_function(BenchmarkId::new("c_loop", &id), |b| {
                b.iter_custom(|iters| run_c_loop(exe, size.bytes(), file.as_deref(), iters))
            });
        }
    }
    group.finish();
    drop(run);
    drop(root);
    let _ = std::fs::remove_dir_all(&root_dir);
}

criterion_group!(benches, pin_cycle);
criterion_main!(benches);
