//! Template NVDIMM images: the emulated NVDIMM with its labels, namespaces and DAX
//! filesystems, made once per cache by one guest's ordinary set-up and copied for every later
//! guest of the same layout, instead of `ndctl` and `mkfs` under TCG on every boot (5-7 s of
//! each boot before this).
//!
//! The image is kernel-independent: labels, namespace info blocks and the filesystems are
//! on-media formats, made by the host's own `ndctl` and `mkfs` (the guest's root is the
//! host's). A template is made only from a guest that has just created the namespaces and
//! the filesystems and has not mounted them: the guest stops there, says so in the staging
//! directory, and waits while the host copies the backing file (see [`Maker`]).
//!
//! Trust: a template is used only when it is ours (owner: this user; mode: no access for
//! group or others; a regular file of exactly the layout's size, opened without following
//! links) in a directory that is ours in the same way. Its name comes from the layout
//! ([`Layout::file_name`]), never from what is on disk. Anything else: the guest does the
//! whole set-up as before, and the record says why.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Bumped whenever the guest's namespace or filesystem layout changes: old templates are
/// then never used (and `pinstorm cleanup --cache` does not need to know them).
pub const VERSION: u32 = 1;

/// The staging directory's files of the hand-over: the guest's "the image is ready to copy"
/// and the host's answer (`ok ...` or `failed: ...`).
pub const READY: &str = "nvdimm-template.ready";
pub const DONE: &str = "nvdimm-template.done";

/// What the guest is told about the template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum TemplatePlan {
    /// The backing file is a copy of the template `name`: namespaces and filesystems are
    /// there already.
    Use { name: String },
    /// No usable template: set up as always, then hand the image over before mounting.
    Make { name: String },
    /// No template for this guest, and why.
    Off { why: String },
}

/// The layout a template holds: the NVDIMM's size and whether a device-dax namespace was
/// made beside the two fsdax ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub mib: u64,
    pub devdax: bool,
}

impl Layout {
    /// The file's name: every part of it from the layout, nothing from the disk.
    pub fn file_name(&self) -> String {
        format!(
            "v{VERSION}-{}M-{}{}.img",
            self.mib,
            crate::guest::FSDAX_NAMESPACES
                .iter()
                .map(|(fs, size)| format!("{fs}{size}"))
                .collect::<Vec<_>>()
                .join("-"),
            if self.devdax {
                format!("-devdax{}", crate::guest::DEVDAX_SIZE)
            } else {
                String::new()
            }
        )
    }
}

/// `CACHE/nvdimm`, made 0700 when missing, and checked to be ours when present.
fn dir(cache: &Path) -> Result<PathBuf> {
    let d = cache.join("nvdimm");
    match std::fs::symlink_metadata(&d) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        Err(e) => return Err(e).with_context(|| d.display().to_string()),
        Ok(m) => {
            if !m.file_type().is_dir() {
                bail!("{} is not a directory", d.display());
            }
            ours(&m, &d)?;
        }
    }
    Ok(d)
}

fn ours(m: &std::fs::Metadata, p: &Path) -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    if m.uid() != uid {
        bail!(
            "{} belongs to uid {}, not to us ({uid})",
            p.display(),
            m.uid()
        );
    }
    if m.mode() & 0o077 != 0 {
        bail!(
            "{} has mode {:o}: group or others may change it",
            p.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// The template for `layout`, opened and checked, or why there is none to use.
fn open_checked(cache: &Path, layout: Layout) -> Result<Option<File>> {
    let path = dir(cache)?.join(layout.file_name());
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    // Checked on the descriptor that will be read, not on the path.
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    ours(&m, &path)?;
    if m.len() != layout.mib << 20 {
        bail!(
            "{} holds {} bytes, the layout {}",
            path.display(),
            m.len(),
            layout.mib << 20
        );
    }
    Ok(Some(f))
}

/// Copy `len` bytes of `src` to `dst` (both at offset 0), leaving holes where `src` has
/// holes or zeros: an NVDIMM image is mostly unwritten.
pub fn copy_sparse(src: &File, dst: &File, len: u64) -> Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0u64;
    let mut off = 0u64;
    while off < len {
        // The next data and the hole after it; a filesystem without SEEK_DATA is read whole.
        let (data, hole) = match seek(src, SeekFrom::Data(off)) {
            Ok(d) => (d, seek(src, SeekFrom::Hole(d)).unwrap_or(len).min(len)),
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => (off, len),
        };
        let mut pos = data;
        while pos < hole {
            let n = ((hole - pos) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], pos)?;
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], pos)?;
                copied += n as u64;
            }
            pos += n as u64;
        }
        off = hole;
    }
    dst.set_len(len)?;
    Ok(copied)
}

/// Decide what the guest does, and put the template's copy in place as the run's backing
/// file when there is one. `nvdimm` is the run's (new, empty) backing file.
pub fn prepare(cache: &Path, layout: Layout, nvdimm: &Path) -> TemplatePlan {
    let name = layout.file_name();
    match open_checked(cache, layout) {
        Ok(Some(src)) => {
            let copy = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(nvdimm)
                .context("opening the run's NVDIMM backing file")
                .and_then(|dst| copy_sparse(&src, &dst, layout.mib << 20));
            match copy {
                Ok(_) => TemplatePlan::Use { name },
                Err(e) => {
                    // Whatever got copied is overwritten by the guest's own set-up.
                    let _ = File::options()
                        .write(true)
                        .open(nvdimm)
                        .and_then(|f| f.set_len(0).and_then(|_| f.set_len(layout.mib << 20)));
                    TemplatePlan::Make {
                        name: format!("{name} (copying the template failed: {e:#})"),
                    }
                }
            }
        }
        Ok(None) => TemplatePlan::Make { name },
        Err(e) => TemplatePlan::Off {
            why: format!("the cache's template is not used: {e:#}"),
        },
    }
}

/// Watches the staging directory while a guest that makes the template runs: when the guest
/// says the image is ready, copies it into the cache (a new file, synced, renamed into
/// place) and answers.
pub struct Maker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maker {
    pub fn start(cache: &Path, layout: Layout, nvdimm: &Path, stage: &Path) -> Maker {
        let stop = Arc::new(AtomicBool::new(false));
        let (cache, nvdimm, stage) = (
            cache.to_path_buf(),
            nvdimm.to_path_buf(),
            stage.to_path_buf(),
        );
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nvdimm-template".into())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if stage.join(READY).exists() {
                        let t0 = Instant::now();
                        let answer = match save(&cache, layout, &nvdimm) {
                            Ok(bytes) => format!(
                                "ok: {} ({} MiB of data) saved in {:.0} ms",
                                layout.file_name(),
                                bytes >> 20,
                                t0.elapsed().as_secs_f64() * 1e3
                            ),
                            Err(e) => format!("failed: {e:#}"),
                        };
                        let _ = pinstorm_analysis::store::write_atomic(
                            &stage.join(DONE),
                            answer.as_bytes(),
                        );
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .ok();
        Maker { stop, thread }
    }
}

impl Drop for Maker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copy the run's backing file into the cache as the layout's template.
fn save(cache: &Path, layout: Layout, nvdimm: &Path) -> Result<u64> {
    let d = dir(cache)?;
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(nvdimm)?;
    let tmp = d.join(format!(
        "{}.partial-{}",
        layout.file_name(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| tmp.display().to_string())?;
    let bytes = copy_sparse(&src, &dst, layout.mib << 20);
    let done = bytes.and_then(|b| {
        dst.sync_all()?;
        std::fs::rename(&tmp, d.join(layout.file_name()))?;
        Ok(b)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Partial templates a killed lab left (under the cache lock: no lab is writing one).
pub(crate) fn clean_partials(cache: &Path) -> Vec<String> {
    let d = cache.join("nvdimm");
    let Ok(m) = std::fs::symlink_metadata(&d) else {
        return Vec::new();
    };
    if !m.file_type().is_dir() || ours(&m, &d).is_err() {
        return Vec::new();
    }
    let mut gone = Vec::new();
    for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let is_ours = e
            .metadata()
            .is_ok_and(|m| m.file_type().is_file() && ours(&m, &e.path()).is_ok());
        if n.contains(".img.partial-") && is_ours && std::fs::remove_file(e.path()).is_ok() {
            gone.push(format!("removed the partial NVDIMM template {n}"));
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pinstorm-tpl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        let d = tmp("copy");
        let (a, b) = (d.join("a"), d.join("b"));
        let f = File::create(&a).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"labels", (8 << 20) - 4096).unwrap();
        f.write_all_at(&[7u8; 5000], 3 << 20).unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        let copied = copy_sparse(&src, &dst, 8 << 20).unwrap();
        assert!(copied < 8 << 20, "holes stay holes: {copied}");
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_template_is_used_only_when_it_is_ours_and_of_the_layout() {
        let cache = tmp("trust");
        let layout = Layout {
            mib: 4,
            devdax: false,
        };
        let run = cache.join("run.img");
        let mk_run = || File::create(&run).unwrap().set_len(4 << 20).unwrap();
        mk_run();
        assert_eq!(
            prepare(&cache, layout, &run),
            TemplatePlan::Make {
                name: layout.file_name()
            }
        );
        let t = cache.join("nvdimm").join(layout.file_name());
        // Group-writable: refused.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o660)
            .open(&t)
            .unwrap();
        std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(b"template", 4096).unwrap();
        assert!(
            matches!(prepare(&cache, layout, &run), TemplatePlan::Off { ref why } if why.contains("mode 660")),
            "{:?}",
            prepare(&cache, layout, &run)
        );
        std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // Of another size: refused.
        f.set_len(2 << 20).unwrap();
        assert!(matches!(
            prepare(&cache, layout, &run),
            TemplatePlan::Off { .. }
        ));
        f.set_len(4 << 20).unwrap();
        // A symlink in its place: refused, not followed.
        let other = cache.join("other.img");
        std::fs::rename(&t, &other).unwrap();
        std::os::unix::fs::symlink(&other, &t).unwrap();
        assert!(matches!(
            prepare(&cache, layout, &run),
            TemplatePlan::Off { .. }
        ));
        std::fs::remove_file(&t).unwrap();
        std::fs::rename(&other, &t).unwrap();
        // Ours and of the layout: copied into the run's file.
        mk_run();
        assert_eq!(
            prepare(&cache, layout, &run),
            TemplatePlan::Use {
                name: layout.file_name()
            }
        );
        assert_eq!(std::fs::read(&run).unwrap(), std::fs::read(&t).unwrap());
        // A directory open to others is not ours either.
        std::fs::set_permissions(
            cache.join("nvdimm"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert!(matches!(
            prepare(&cache, layout, &run),
            TemplatePlan::Off { .. }
        ));
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn the_maker_saves_the_image_when_the_guest_says_it_is_ready() {
        let cache = tmp("maker");
        let stage = cache.join("stage");
        std::fs::create_dir_all(&stage).unwrap();
        let layout = Layout {
            mib: 2,
            devdax: true,
        };
        let run = cache.join("run.img");
        let f = File::create(&run).unwrap();
        f.set_len(2 << 20).unwrap();
        f.write_all_at(b"namespaces", 0).unwrap();
        let m = Maker::start(&cache, layout, &run, &stage);
        std::fs::write(stage.join(READY), b"").unwrap();
        let t0 = Instant::now();
        while !stage.join(DONE).exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(m);
        let answer = std::fs::read_to_string(stage.join(DONE)).unwrap();
        assert!(answer.starts_with("ok: "), "{answer}");
        let t = cache.join("nvdimm").join(layout.file_name());
        assert_eq!(std::fs::read(&t).unwrap(), std::fs::read(&run).unwrap());
        assert_eq!(
            std::fs::metadata(&t).unwrap().mode() & 0o777,
            0o600,
            "{answer}"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }
}
