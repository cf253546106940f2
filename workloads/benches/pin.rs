//! `cargo bench -p pinstorm-workloads`: register + unregister through pinstorm's library
//! API (`PinPath` -> `Pinner` trait objects) next to the same two io_uring syscalls made
//! directly in a tight loop, on anonymous memory and tmpfs, at 4 KiB and 2 MiB. The two
//! medians side by side are the harness's own overhead; the target is within 5%.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use io_uring::IoUring;

use pinstorm_workloads::backing::{Access, BackingKind, MapKind, RegionSpec, SetupEnv};
use pinstorm_workloads::pin::{Availability, PinKind, PinSettings};
use pinstorm_workloads::scratch::ScratchRoot;
use pinstorm_workloads::units::Size;

fn pin_cycle(c: &mut Criterion) {
    if let Availability::NotRun(r) = PinKind::IoUring
        .path(&PinSettings::default())
        .availability()
    {
        eprintln!("io_uring benchmarks not run: {r}");
        return;
    }
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
    for kind in [BackingKind::Anon, BackingKind::Tmpfs] {
        let backing = match kind.setup(&env, &run) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{kind} not run: {e}");
                continue;
            }
        };
        for size in [Size(4 << 10), Size(2 << 20)] {
            let region = backing
                .region(&RegionSpec {
                    size,
                    map: MapKind::Shared,
                    access: Access::Rw,
                })
                .expect("region");
            let target = region.pin_target();
            let id = format!("{kind}/{size}");

            let path = PinKind::IoUring.path(&PinSettings::default());
            let mut pinner = path.pinner().expect("pinner");
            group.bench_function(BenchmarkId::new("pinstorm", &id), |b| {
                b.iter(|| {
                    pinner.register(black_box(target)).expect("register");
                    pinner.unregister().expect("unregister");
                })
            });

            let ring = IoUring::new(4).expect("ring");
            let iov = [libc::iovec {
                iov_base: target.addr as *mut libc::c_void,
                iov_len: target.len,
            }];
            group.bench_function(BenchmarkId::new("tight_loop", &id), |b| {
                b.iter(|| {
                    // SAFETY: the region outlives the registration, which is dropped on the
                    // next line.
                    unsafe { ring.submitter().register_buffers(black_box(&iov)) }
                        .expect("register");
                    ring.submitter().unregister_buffers().expect("unregister");
                })
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
