//! The backings of a run, set up beside its jobs: on threads of their own, in the order the
//! jobs use them, so a job waits only for the backing it is about to pin.
//!
//! The in-memory backings are ready in milliseconds; a filesystem on a loop device (an
//! image, mkfs, losetup, mount) takes about a second in a TCG guest. In a lab guest the disk
//! filesystems' modules and the pmem filesystems are still being made when the run starts
//! ([`Arriving`]): the probe's cells on in-memory backings run meanwhile, and a backing that
//! needs what has not arrived waits for it, bounded, and says why if it never comes.
//!
//! Three kinds of set-up, one thread each: the in-memory backings one after the other; the
//! disk filesystems (each on a thread of its own, once their modules are in); the DAX
//! backings (once their targets are known, after making the filesystems of any scratch
//! device). Whatever happens on those threads (an error, a panic, a signal, a wait that
//! never ends), every backing's slot is filled, so a job never waits forever.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::Scope;
use std::time::{Duration, Instant};

use pinstorm_analysis::schema::BackingRecord;
use pinstorm_workloads::backing::{Backing, BackingKind, Gate, NotRun, SetupEnv};
use pinstorm_workloads::scratch::{DeviceFs, RunScratch, ScratchDevice, ScratchDir};

use crate::signals;

/// The DAX targets of a run: directories on FS-DAX filesystems, a device-dax device, block
/// devices to make them on, and why a DAX backing has none.
#[derive(Clone, Debug, Default)]
pub struct DaxTargets {
    pub dax_dirs: BTreeMap<String, ScratchDir>,
    pub devdax: Option<PathBuf>,
    pub scratch_devs: Vec<ScratchDevice>,
    /// By backing name (`xfs-dax`), the reason it cannot be set up.
    pub unavailable: BTreeMap<String, String>,
}

/// What another thread is still making when the run starts: the disk filesystems' modules
/// (the backings on loop devices wait for them) and the DAX targets (the DAX backings wait
/// for them). A host run has both at once ([`Arriving::now`]).
pub struct Arriving {
    disks: Receiver<()>,
    dax: Receiver<DaxTargets>,
    /// Who makes them, for the reasons of a wait that failed (`the lab guest's set-up`).
    maker: String,
    /// The longest a backing waits for either.
    bound: Duration,
}

/// The sending side of [`Arriving`]. Dropping a sender without sending tells the run that
/// what it stood for will not come.
pub struct ArrivingSender {
    pub disks: Sender<()>,
    pub dax: Sender<DaxTargets>,
}

impl Arriving {
    /// A pair: the run waits on the [`Arriving`], `maker` sends on the [`ArrivingSender`].
    pub fn channel(maker: &str, bound: Duration) -> (ArrivingSender, Arriving) {
        let (disks_tx, disks) = mpsc::channel();
        let (dax_tx, dax) = mpsc::channel();
        (
            ArrivingSender {
                disks: disks_tx,
                dax: dax_tx,
            },
            Arriving {
                disks,
                dax,
                maker: maker.to_string(),
                bound,
            },
        )
    }

    /// Everything there already: a host run, whose DAX targets the user named.
    pub fn now(targets: DaxTargets) -> Arriving {
        let (tx, rx) = Arriving::channel("the run", Duration::ZERO);
        // The receivers are alive: the sends cannot fail.
        let _ = tx.disks.send(());
        let _ = tx.dax.send(targets);
        rx
    }
}

type Slot = OnceLock<Result<Box<dyn Backing>, NotRun>>;

/// The backings of a run, or why each could not be set up; each filled once by its set-up
/// thread and read by the jobs ([`BackingSet::get`] waits for it).
pub struct BackingSet {
    /// The backings in the order the jobs first use them.
    order: Vec<BackingKind>,
    slots: BTreeMap<BackingKind, Slot>,
    /// Held while a slot is filled, so a waiter never misses the notification.
    lock: Mutex<()>,
    filled: Condvar,
    /// The run is over: what is still being waited for is not needed.
    done: Arc<AtomicBool>,
    /// The filesystems made on scratch devices, declared after the slots so they are
    /// dropped after them: the DAX backings' files live on them.
    device_fs: Mutex<Vec<DeviceFs>>,
}

/// What setting the backings up uses.
pub struct Setup<'a> {
    pub env: &'a SetupEnv,
    pub scratch: &'a RunScratch,
    /// Block devices named as scratch: their filesystems are made before the DAX backings
    /// are set up, each backing's notrun reason if that fails.
    pub scratch_devs: &'a [ScratchDevice],
    /// Hears what happens (`setting up xfs`).
    pub log: &'a (dyn Fn(&str) + Sync),
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BackingSet {
    /// Empty slots for `kinds`, in the order given (the order the jobs use them; repeats are
    /// dropped). Nothing is set up until [`BackingSet::start`].
    pub fn new(kinds: impl IntoIterator<Item = BackingKind>) -> BackingSet {
        let mut order = Vec::new();
        for k in kinds {
            if !order.contains(&k) {
                order.push(k);
            }
        }
        BackingSet {
            slots: order.iter().map(|&k| (k, OnceLock::new())).collect(),
            order,
            lock: Mutex::new(()),
            filled: Condvar::new(),
            done: Arc::new(AtomicBool::new(false)),
            device_fs: Mutex::new(Vec::new()),
        }
    }

    /// Start setting every backing up on threads of `scope`; returns at once.
    pub fn start<'scope, 'env: 'scope>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        setup: &'env Setup<'env>,
        arriving: Arriving,
    ) {
        let memory: Vec<BackingKind> = self
            .order
            .iter()
            .copied()
            .filter(|&k| !k.makes_a_filesystem() && !k.is_dax())
            .collect();
        let disks: Vec<BackingKind> = self
            .order
            .iter()
            .copied()
            .filter(|k| k.makes_a_filesystem())
            .collect();
        let dax: Vec<BackingKind> = self.order.iter().copied().filter(|k| k.is_dax()).collect();
        let Arriving {
            disks: disks_rx,
            dax: dax_rx,
            maker,
            bound,
        } = arriving;
        scope.spawn(move || {
            let _rest = FillRest(self, memory.clone());
            for k in memory {
                self.fill(k, self.setup_one(k, setup.env, setup));
            }
        });
        if !disks.is_empty() {
            // Each makes its image and filesystem at once, and waits for the modules only
            // to attach and mount it.
            let mut env = setup.env.clone();
            env.before_attach = Some(self.gate(disks_rx, &maker, bound));
            scope.spawn(move || {
                let _rest = FillRest(self, disks.clone());
                std::thread::scope(|s| {
                    for &k in &disks {
                        let env = &env;
                        s.spawn(move || self.fill(k, self.setup_one(k, env, setup)));
                    }
                });
            });
        }
        if !dax.is_empty() {
            scope.spawn(move || {
                let _rest = FillRest(self, dax.clone());
                match wait_for(&dax_rx, "the DAX targets", &maker, bound, &self.done) {
                    Ok(t) => {
                        let env = self.dax_env(setup, t);
                        for &k in &dax {
                            self.fill(k, self.setup_one(k, &env, setup));
                        }
                    }
                    Err(why) => dax
                        .iter()
                        .for_each(|&k| self.fill(k, Err(NotRun(why.clone())))),
                }
            });
        }
    }

    /// The environment of the DAX backings: the run's, with the targets that arrived and
    /// the filesystems made on the scratch devices.
    fn dax_env(&self, setup: &Setup, t: DaxTargets) -> SetupEnv {
        let mut env = setup.env.clone();
        env.dax_dirs.extend(t.dax_dirs);
        if t.devdax.is_some() {
            env.devdax = t.devdax;
        }
        for (k, why) in t.unavailable {
            env.unavailable.entry(k).or_insert(why);
        }
        for d in setup.scratch_devs.iter().chain(&t.scratch_devs) {
            if signals::pending().is_some() {
                break;
            }
            let dev = d.path().display();
            let fs = d.fs();
            (setup.log)(&format!("making {fs} on the scratch device {dev}"));
            let made = DeviceFs::make(d, setup.scratch).and_then(|made| {
                let (_, mnt) = made.mount();
                let dir = ScratchDir::new(mnt, &format!("--scratch-dev {fs}={dev} at "))?;
                env.dax_dirs.insert(fs.to_string(), dir);
                Ok(made)
            });
            match made {
                Ok(m) => self
                    .device_fs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(m),
                Err(e) => {
                    env.unavailable.insert(
                        format!("{fs}-dax"),
                        format!("--scratch-dev {fs}={dev}: {e:#}"),
                    );
                }
            }
        }
        env
    }

    /// Set `k` up, saying so; a panic in it is its notrun reason.
    fn setup_one(
        &self,
        k: BackingKind,
        env: &SetupEnv,
        setup: &Setup,
    ) -> Result<Box<dyn Backing>, NotRun> {
        if signals::pending().is_some() {
            return Err(interrupted_before(k));
        }
        if self.done.load(Ordering::Relaxed) {
            return Err(NotRun(format!("the run ended before {k} was set up")));
        }
        (setup.log)(&format!("setting up {k}"));
        let b = std::panic::catch_unwind(AssertUnwindSafe(|| k.setup(env, setup.scratch)))
            .unwrap_or_else(|_| Err(NotRun(format!("setting up {k} panicked"))));
        if let Err(e) = &b {
            (setup.log)(&format!("{k}: notrun: {e}"));
        }
        b
    }

    /// The gate of the loop filesystems: every one that reaches it waits for the disk
    /// filesystems' modules from `rx` (one wait, its outcome shared).
    fn gate(&self, rx: Receiver<()>, maker: &str, bound: Duration) -> Gate {
        let rx = Mutex::new(rx);
        let outcome: OnceLock<Result<(), String>> = OnceLock::new();
        let done = self.done.clone();
        let maker = maker.to_string();
        Gate::new(move || {
            outcome
                .get_or_init(|| {
                    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                    wait_for(&rx, "the disk filesystems' modules", &maker, bound, &done)
                })
                .clone()
        })
    }

    fn fill(&self, k: BackingKind, r: Result<Box<dyn Backing>, NotRun>) {
        let _g = lock(&self.lock);
        if let Some(slot) = self.slots.get(&k) {
            let _ = slot.set(r);
        }
        self.filled.notify_all();
    }

    /// The backing of `kind`, once set up (waiting for it), or why it could not be.
    pub fn get(&self, kind: BackingKind) -> Result<&dyn Backing, NotRun> {
        let Some(slot) = self.slots.get(&kind) else {
            return Err(NotRun(format!("{kind} was not set up for this run")));
        };
        match self.wait_until(|| slot.get()) {
            Some(Ok(b)) => Ok(b.as_ref()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(interrupted_before(kind)),
        }
    }

    /// Wait until `ready` (looked at with the slots' lock held, so no filling is missed)
    /// says something; None when the run is interrupted first.
    fn wait_until<T>(&self, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
        let mut g = lock(&self.lock);
        loop {
            if let Some(v) = ready() {
                return Some(v);
            }
            if signals::pending().is_some() {
                return None;
            }
            g = self
                .filled
                .wait_timeout(g, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Of `kinds`, the first (in their order) whose set-up is over, waiting until one is:
    /// a job whose cells do not depend on one another takes its backings as they come (the
    /// probe's DAX cells while the loop devices' filesystems are still being made). A kind
    /// this run does not set up is over at once ([`BackingSet::get`] says so); None for
    /// none, or when the run is interrupted (its job stops at its next check).
    pub fn next_ready(&self, kinds: &[BackingKind]) -> Option<BackingKind> {
        if kinds.is_empty() {
            return None;
        }
        self.wait_until(|| {
            kinds
                .iter()
                .copied()
                .find(|k| self.slots.get(k).is_none_or(|s| s.get().is_some()))
        })
    }

    /// Wait until every backing's set-up is over (or the run is interrupted).
    pub fn wait_all(&self) {
        self.wait_until(|| self.slots.values().all(|s| s.get().is_some()).then_some(()));
    }

    /// The run is over: set-up still waiting for what has not arrived gives up.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The backings set up so far, or why each could not be (in kind order).
    pub fn records(&self) -> Vec<BackingRecord> {
        self.slots
            .iter()
            .filter_map(|(k, slot)| Some((k, slot.get()?)))
            .map(|(k, b)| match b {
                Ok(b) => {
                    let i = b.info();
                    BackingRecord {
                        backing: k.name().into(),
                        outcome: "ok".into(),
                        reason: None,
                        fs: Some(i.fs.clone()),
                        mount_source: i.mount_source.clone(),
                        mount_options: i.mount_options.clone(),
                        page_size: Some(i.page_size),
                    }
                }
                Err(e) => BackingRecord {
                    backing: k.name().into(),
                    outcome: "notrun".into(),
                    reason: Some(e.0.clone()),
                    fs: None,
                    mount_source: None,
                    mount_options: None,
                    page_size: None,
                },
            })
            .collect()
    }
}

/// Why `kind` was not set up: the run was interrupted first.
fn interrupted_before(kind: BackingKind) -> NotRun {
    let sig = signals::pending().map_or("a signal", signals::signal_name);
    NotRun(format!(
        "the run was interrupted ({sig}) before {kind} was set up"
    ))
}

/// Wait for what `rx` stands for, at most `bound`, or until `done`; Err is the waiting
/// backings' notrun reason.
fn wait_for<T>(
    rx: &Receiver<T>,
    what: &str,
    maker: &str,
    bound: Duration,
    done: &AtomicBool,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("{maker} ended without {what}"))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(sig) = signals::pending() {
            return Err(format!(
                "the run was interrupted ({}) while waiting for {what} from {maker}",
                signals::signal_name(sig)
            ));
        }
        if done.load(Ordering::Relaxed) {
            return Err(format!("the run ended before {maker} made {what}"));
        }
        if start.elapsed() >= bound {
            return Err(format!(
                "{maker} had not made {what} after {} s",
                bound.as_secs()
            ));
        }
    }
}

/// Fills the slots its thread left empty, whatever ended the thread.
struct FillRest<'a>(&'a BackingSet, Vec<BackingKind>);

impl Drop for FillRest<'_> {
    fn drop(&mut self) {
        for &k in &self.1 {
            if self.0.slots.get(&k).is_some_and(|s| s.get().is_none()) {
                self.0
                    .fill(k, Err(NotRun(format!("setting up {k} ended early"))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinstorm_workloads::scratch::ScratchRoot;

    fn scratch(name: &str) -> (PathBuf, RunScratch) {
        let dir =
            std::env::temp_dir().join(format!("pinstorm-backings-{name}-{}", std::process::id()));
        let root = ScratchRoot::open(&dir).unwrap();
        (dir, root.new_run(name).unwrap())
    }

    /// With `arriving`, run `body` on a started set of anon and devdax backings.
    fn with_set(name: &str, arriving: Arriving, body: impl FnOnce(&BackingSet)) {
        let (dir, run) = scratch(name);
        let env = SetupEnv::default();
        let log = |_: &str| {};
        let setup = Setup {
            env: &env,
            scratch: &run,
            scratch_devs: &[],
            log: &log,
        };
        let set = BackingSet::new([BackingKind::Anon, BackingKind::Devdax, BackingKind::Anon]);
        std::thread::scope(|s| {
            set.start(s, &setup, arriving);
            body(&set);
            set.finish();
        });
        drop(set);
        drop(run);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_job_waits_for_a_backing_whose_target_arrives_later_and_not_for_the_others() {
        let (tx, arriving) = Arriving::channel("the test's set-up", Duration::from_secs(60));
        with_set("later", arriving, |set| {
            // Anonymous memory is there while the DAX targets have not arrived, and it is
            // what a job that takes its backings as they come gets first.
            assert!(set.get(BackingKind::Anon).is_ok());
            assert_eq!(
                set.next_ready(&[BackingKind::Devdax, BackingKind::Anon]),
                Some(BackingKind::Anon)
            );
            // A kind the run does not set up is "ready": get() says why.
            assert_eq!(
                set.next_ready(&[BackingKind::Devdax, BackingKind::Memfd]),
                Some(BackingKind::Memfd)
            );
            assert_eq!(set.records().len(), 1, "devdax is not set up yet");
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut t = DaxTargets::default();
                t.unavailable
                    .insert("devdax".into(), "the test has no device".into());
                tx.dax.send(t).unwrap();
            });
            let t0 = Instant::now();
            let e = set.get(BackingKind::Devdax).err().expect("no device-dax");
            assert!(
                t0.elapsed() >= Duration::from_millis(150),
                "{:?}",
                t0.elapsed()
            );
            assert_eq!(e.0, "the test has no device");
            sender.join().unwrap();
            set.wait_all();
            // Set up by now: it comes first among those ready.
            assert_eq!(
                set.next_ready(&[BackingKind::Devdax, BackingKind::Anon]),
                Some(BackingKind::Devdax)
            );
            let recs = set.records();
            assert_eq!(recs.len(), 2);
            assert!(recs
                .iter()
                .any(|r| r.backing == "devdax" && r.outcome == "notrun"));
        });
    }

    #[test]
    fn a_target_that_never_comes_is_the_waiting_backings_notrun_reason() {
        // The maker ended without sending.
        let (tx, arriving) = Arriving::channel("the test's set-up", Duration::from_secs(60));
        drop(tx);
        with_set("dropped", arriving, |set| {
            let e = set.get(BackingKind::Devdax).err().unwrap();
            assert_eq!(e.0, "the test's set-up ended without the DAX targets");
        });
        // The maker is still at it after the bound.
        let (tx, arriving) = Arriving::channel("the test's set-up", Duration::from_millis(100));
        with_set("bound", arriving, |set| {
            let e = set.get(BackingKind::Devdax).err().unwrap();
            assert!(
                e.0.contains("had not made the DAX targets after 0 s"),
                "{e}"
            );
        });
        drop(tx);
        // The run ended first.
        let (tx, arriving) = Arriving::channel("the test's set-up", Duration::from_secs(60));
        with_set("ended", arriving, |set| {
            set.finish();
            let e = set.get(BackingKind::Devdax).err().unwrap();
            assert_eq!(
                e.0,
                "the run ended before the test's set-up made the DAX targets"
            );
        });
        drop(tx);
    }

    #[test]
    fn a_kind_not_asked_for_is_not_set_up() {
        with_set("unasked", Arriving::now(DaxTargets::default()), |set| {
            let e = set.get(BackingKind::Memfd).err().unwrap();
            assert!(e.0.contains("was not set up for this run"), "{e}");
        });
    }
}
