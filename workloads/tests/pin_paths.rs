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

#[test]
fn tight_loop_baseline_registers_and_unregisters() {
    if !io_uring_usable() {
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
        let mut t = PinKind::IoUring
            .path(&PinSettings::default())
            .tight_loop()
            .expect("io_uring has a tight loop");
        let (reg, unreg) = t.cycle(region.pin_target()).unwrap();
        assert!(reg.as_nanos() > 0 && unreg.as_nanos() > 0);
        // The pin is gone after the cycle: a pinner can register the same range again.
        let mut p = PinKind::IoUring
            .path(&PinSettings::default())
            .pinner()
            .unwrap();
        p.register(region.pin_target()).unwrap();
    });
}
