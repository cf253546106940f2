//! Real registrations through the library API on this host's kernel: no mocks.

use pinstorm_workloads::backing::{Access, Backing, BackingKind, MapKind, RegionSpec, SetupEnv};
use pinstorm_workloads::pin::{Availability, PinError, PinKind, PinSettings};
use pinstorm_workloads::scratch::ScratchRoot;
use pinstorm_workloads::units::Size;

fn io_uring_usable() -> bool {
    match PinKind::IoUring
        .path(&PinSettings::default())
        .availability()
    {
        Availability::Usable => true,
        Availability::NotRun(r) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring not usable in CI: {r}; these tests must take their real path there"
            );
            eprintln!("skipped: io_uring not usable here: {r}");
            false
        }
    }
}

fn with_backing(kind: BackingKind, test: &str, f: impl FnOnce(&dyn Backing)) {
    let root_dir =
        std::env::temp_dir().join(format!("pinstorm-libtest-{test}-{}", std::process::id()));
    let root = ScratchRoot::open(&root_dir).unwrap();
    let run = root.new_run("t").unwrap();
    let env = SetupEnv {
        is_root: pinstorm_workloads::is_root(),
        scratch_dir: None,
        ..SetupEnv::default()
    };
    let b = kind
        .setup(&env, &run)
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    f(b.as_ref());
    drop(b);
    drop(run);
    drop(root);
    std::fs::remove_dir_all(&root_dir).unwrap();
}

fn device_write_lands_in_the_mapping(kind: BackingKind, map: MapKind, test: &str) {
    if !io_uring_usable() {
        return;
    }
    with_backing(kind, test, |b| {
        let region = b
            .region(&RegionSpec {
                size: Size(64 << 10),
                map,
                access: Access::Rw,
            })
            .unwrap();
        let mut pinner = PinKind::IoUring
            .path(&PinSettings::default())
            .pinner()
            .unwrap();
        pinner.register(region.pin_target()).unwrap();
        assert_eq!(pinner.registered(), Some(region.pin_target()));

        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(pinner.device_write(4096, &data).unwrap(), data.len());
        let mut seen = vec![0u8; data.len()];
        region.mapping.read_at(4096, &mut seen);
        assert_eq!(
            seen, data,
            "the device's write must be visible through the mapping"
        );

        region.mapping.write_at(0, b"cpu wrote this");
        assert_eq!(pinner.device_read(0, 14).unwrap(), b"cpu wrote this");

        pinner.unregister().unwrap();
        assert_eq!(pinner.registered(), None);
    });
}

#[test]
fn device_write_through_io_uring_pin_lands_in_anon_memory() {
    device_write_lands_in_the_mapping(BackingKind::Anon, MapKind::Private, "anon-private");
    device_write_lands_in_the_mapping(BackingKind::Anon, MapKind::Shared, "anon-shared");
}

#[test]
fn device_write_through_io_uring_pin_lands_in_memfd() {
    device_write_lands_in_the_mapping(BackingKind::Memfd, MapKind::Shared, "memfd");
}

#[test]
fn device_write_through_io_uring_pin_lands_in_tmpfs_file() {
    device_write_lands_in_the_mapping(BackingKind::Tmpfs, MapKind::Shared, "tmpfs");
}

#[test]
fn read_only_mapping_is_refused_for_a_writable_pin_with_an_errno() {
    if !io_uring_usable() {
        return;
    }
    with_backing(BackingKind::Memfd, "ro", |b| {
        let region = b
            .region(&RegionSpec {
                size: Size(4096),
                map: MapKind::Shared,
                access: Access::Ro,
            })
            .unwrap();
        let mut pinner = PinKind::IoUring
            .path(&PinSettings::default())
            .pinner()
            .unwrap();
        match pinner.register(region.pin_target()) {
            Err(PinError::Kernel { op, errno }) => {
                assert_eq!(op, "IORING_REGISTER_BUFFERS");
                assert!(errno.name().starts_with('E'), "{errno:?}");
            }
            other => panic!("a read-only mapping must not be pinnable for writing: {other:?}"),
        }
        assert_eq!(pinner.registered(), None);
    });
}

#[test]
fn a_second_registration_on_one_pinner_is_a_tool_error_not_a_kernel_outcome() {
    if !io_uring_usable() {
        return;
    }
    with_backing(BackingKind::Anon, "twice", |b| {
        let region = b
            .region(&RegionSpec {
                size: Size(4096),
                map: MapKind::Private,
                access: Access::Rw,
            })
            .unwrap();
        let mut pinner = PinKind::IoUring
            .path(&PinSettings::default())
            .pinner()
            .unwrap();
        pinner.register(region.pin_target()).unwrap();
        assert!(matches!(
            pinner.register(region.pin_target()),
            Err(PinError::Tool(_))
        ));
        assert!(matches!(
            pinner.device_write(4000, &[0u8; 200]),
            Err(PinError::Tool(_))
        ));
        pinner.unregister().unwrap();
        assert!(matches!(pinner.unregister(), Err(PinError::Tool(_))));
    });
}

/// `nr_foll_pin_acquired - nr_foll_pin_released` moved by `f` (both deltas, as read around
/// it), or `None` where the kernel has no such counters.
fn foll_pin_deltas(f: impl FnOnce()) -> Option<(u64, u64)> {
    let (a0, r0) = pinstorm_workloads::foll_pin_counters()?;
    f();
    let (a1, r1) = pinstorm_workloads::foll_pin_counters()?;
    Some((a1 - a0, r1 - r0))
}

/// How far released may trail acquired in a window where the pins were released: the
/// counters are folded from per-CPU deltas (at once as root, lazily otherwise), and other
/// processes pin and unpin at the same time. Half the 512 pages a held 2 MiB pin keeps
/// outstanding, so a pin that was not released can never pass.
const TOLERANCE: u64 = 256;

/// Tries per check: a try is disturbed when other processes' pins or releases land in its
/// window; one quiet try decides.
const TRIES: usize = 50;

/// The baseline's unregister releases every page its register pinned, as the kernel counts
/// FOLL_PIN pins: around a cycle on 2 MiB of 4 KiB pages `nr_foll_pin_acquired` moves by at
/// least 512 and `nr_foll_pin_released` catches up with it. The control, a registration
/// left in place, keeps at least 512 - TOLERANCE pages outstanding by the same reading, so
/// the check can see a pin that was not released.
#[test]
fn tight_loop_baseline_releases_every_pin_it_takes_by_the_kernels_foll_pin_counters() {
    if !io_uring_usable() {
        return;
    }
    if pinstorm_workloads::foll_pin_counters().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no nr_foll_pin_* counters in /proc/vmstat in CI; this test must take its real path there"
        );
        eprintln!("skipped: no nr_foll_pin_* counters in /proc/vmstat (kernel before 5.6)");
        return;
    }
    with_backing(BackingKind::Anon, "tight", |b| {
        let region = b
            .region(&RegionSpec {
                size: Size(2 << 20),
                map: MapKind::Private,
                access: Access::Rw,
            })
            .unwrap();
        let target = region.pin_target();
        let path = PinKind::IoUring.path(&PinSettings::default());
        let mut t = path.tight_loop().expect("io_uring has a tight loop");

        let mut seen = Vec::new();
        let released = (0..TRIES).any(|_| {
            let (acquired, released) = foll_pin_deltas(|| {
                let c = t.cycle(target);
                c.register.expect("baseline register");
                c.unregister
                    .expect("released")
                    .expect("baseline unregister");
            })
            .unwrap();
            seen.push((acquired, released));
            acquired >= 512 && released + TOLERANCE >= acquired
        });
        assert!(
            released,
            "no cycle of the baseline released what it pinned (acquired, released): {seen:?}"
        );

        let mut held = Vec::new();
        let mut pinner = path.pinner().unwrap();
        let control = (0..TRIES).any(|_| {
            let (acquired, released) =
                foll_pin_deltas(|| pinner.register(target).unwrap()).unwrap();
            pinner.unregister().unwrap();
            held.push((acquired, released));
            acquired >= 512 && acquired >= released + 512 - TOLERANCE
        });
        assert!(
            control,
            "a held registration never showed as outstanding (acquired, released): {held:?}"
        );
    });
}

/// The vmsplice baseline holds the whole range and drains all of it every cycle: a range
/// four times `fs/pipe-max-size` (so it takes several pipes) cycles again and again. A
/// cycle that left pages in a pipe would make the next one's non-blocking vmsplice find the
/// pipe full and fail.
#[test]
fn vmsplice_baseline_holds_and_drains_a_range_larger_than_one_pipe_every_cycle() {
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    with_backing(BackingKind::Anon, "vmsplice-tight", |b| {
        let region = b
            .region(&RegionSpec {
                size: Size(4 * max.next_power_of_two()),
                map: MapKind::Private,
                access: Access::Rw,
            })
            .unwrap();
        let mut t = PinKind::Vmsplice
            .path(&PinSettings::default())
            .tight_loop()
            .expect("vmsplice has a tight loop");
        for i in 0..3 {
            let c = t.cycle(region.pin_target());
            c.register
                .unwrap_or_else(|e| panic!("cycle {i}: vmsplice: {e}"));
            c.unregister
                .expect("released")
                .unwrap_or_else(|e| panic!("cycle {i}: drain: {e}"));
        }
    });
}
