//! Which kernel a lab guest boots: Debian packages fetched into the cache, or a kernel the
//! user built.
//!
//! - `deb:6.1`, `deb:6.12`, `deb:7.2`: the newest Debian kernel of that series;
//! - `deb:sid` (also `deb:trixie`, `deb:bookworm`): the newest kernel of that suite;
//! - `deb:6.1.192-2`: an exact version of Debian's `linux-image-amd64`;
//! - `deb:linux-image-6.1.0-56-amd64` (optionally `=VERSION`): an exact package;
//! - `path:BZIMAGE` with `--modules DIR` (DIR holds `lib/modules/RELEASE` or is it);
//! - `tree:DIR`: a kernel build tree, booted as `vng -r DIR` boots it.
//!
//! Debian packages are unpacked with `dpkg-deb -x` into `CACHE/kernels/PACKAGE_VERSION/`
//! (never installed), `depmod` runs there, and a `.complete` marker makes the next run use
//! them without downloading anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::apt::{version_cmp, Apt};
use crate::decompress::{decompress, Codec, Input};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelSpec {
    Deb(String),
    Path {
        image: PathBuf,
        modules: Option<PathBuf>,
    },
    Tree(PathBuf),
}

impl KernelSpec {
    /// Parse one `--kernels` entry. `modules` is `--modules` (only for `path:`).
    pub fn parse(s: &str, modules: Option<&Path>) -> Result<KernelSpec, String> {
        let abs = |p: &str, what: &str| -> Result<PathBuf, String> {
            let pb = PathBuf::from(p);
            if p.is_empty() || !pb.is_absolute() {
                return Err(format!("{what} needs an absolute path, got {p:?}"));
            }
            Ok(pb)
        };
        if let Some(r) = s.strip_prefix("deb:") {
            if r.is_empty() || r.contains('/') || r.contains(char::is_whitespace) {
                return Err(format!(
                    "bad Debian kernel {s:?}: use deb:6.1, deb:6.12, deb:sid, deb:VERSION or deb:PACKAGE"
                ));
            }
            return Ok(KernelSpec::Deb(r.to_string()));
        }
        if let Some(r) = s.strip_prefix("path:") {
            return Ok(KernelSpec::Path {
                image: abs(r, "path:")?,
                modules: modules.map(Path::to_path_buf),
            });
        }
        if let Some(r) = s.strip_prefix("tree:") {
            return Ok(KernelSpec::Tree(abs(r, "tree:")?));
        }
        Err(format!(
            "unknown kernel {s:?}: use deb:6.1, deb:6.12, deb:sid, deb:VERSION, path:BZIMAGE (with --modules DIR) or tree:KERNEL_BUILD_DIR"
        ))
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Deb(s) => write!(f, "deb:{s}"),
            KernelSpec::Path { image, .. } => write!(f, "path:{}", image.display()),
            KernelSpec::Tree(d) => write!(f, "tree:{}", d.display()),
        }
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    pub spec: String,
    /// `uname -r` of the kernel (from its modules directory or the image).
    pub release: String,
    /// What `vng -r` gets: the image, or the build tree.
    pub boot: PathBuf,
    /// The uncompressed kernel QEMU boots instead through its PVH entry (Debian's images:
    /// [`crate::pvh`]), when there is one.
    pub pvh: Option<PathBuf>,
    /// Where it came from: Debian packages with versions, or the user's paths.
    pub source: Vec<String>,
    /// Whether the kernel came from the cache without downloading.
    pub cached: bool,
}

/// Map `deb:X` to the version of Debian's `linux-image-amd64` metapackage, or to an exact
/// image package.
fn resolve_deb(apt: &Apt, want: &str) -> Result<(String, String)> {
    if want.starts_with("linux-") {
        let (pkg, ver) = match want.split_once('=') {
            Some((p, v)) => (p.to_string(), Some(v.to_string())),
            None => (want.to_string(), None),
        };
        let c = apt.madison(&pkg)?;
        let v = match ver {
            Some(v) => c
                .iter()
                .find(|c| c.version == v)
                .map(|c| c.version.clone())
                .with_context(|| format!("Debian has no {pkg}={v}"))?,
            None => c
                .first()
                .map(|c| c.version.clone())
                .with_context(|| format!("Debian has no package {pkg}"))?,
        };
        return Ok((pkg, v));
    }
    let meta = "linux-image-amd64";
    let c = apt.madison(meta)?;
    if c.is_empty() {
        bail!("apt knows no {meta}: the package lists are empty (apt-get update failed?)");
    }
    let suite_of = |c: &super::apt::Candidate| c.suite.split('/').next().unwrap_or("").to_string();
    let pick = match want {
        "sid" | "unstable" | "trixie" | "bookworm" => {
            let suite = if want == "unstable" { "sid" } else { want };
            c.iter()
                .filter(|c| suite_of(c) == suite || suite_of(c).starts_with(&format!("{suite}-")))
                .max_by(|a, b| version_cmp(&a.version, &b.version))
        }
        v if c.iter().any(|c| c.version == v) => c.iter().find(|c| c.version == v),
        series if series.chars().all(|ch| ch.is_ascii_digit() || ch == '.') => c
            .iter()
            .filter(|c| {
                c.version.starts_with(&format!("{series}."))
                    || c.version.starts_with(&format!("{series}-"))
            })
            .filter(|c| !c.version.contains("~bpo"))
            .max_by(|a, b| version_cmp(&a.version, &b.version)),
        _ => None,
    };
    let Some(pick) = pick else {
        let known: Vec<_> = c
            .iter()
            .map(|c| format!("{} ({})", c.version, c.suite))
            .collect();
        bail!(
            "no Debian kernel matches deb:{want}; {meta} versions known: {}",
            known.join(", ")
        );
    };
    let image = apt
        .depends(meta, &pick.version)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{meta}={} depends on no linux-image package", pick.version))?;
    Ok((image, pick.version.clone()))
}

/// Fetch, unpack and `depmod` a Debian kernel into `cache/kernels`. Offline when the spec
/// names an exact package already unpacked, or when the package lists are fresh.
pub fn prepare_deb(
    cache: &Path,
    apt: &Apt,
    want: &str,
    refresh: bool,
    log: &dyn Fn(&str),
) -> Result<Kernel> {
    if let Err(e) = apt.update(refresh) {
        // Offline with lists from before: use them (a kernel already unpacked is then
        // found without the network); without any lists there is nothing to resolve with.
        if !apt.has_lists() {
            return Err(e.context("updating the lab's private package lists"));
        }
        log(&format!(
            "warning: could not refresh the package lists ({e:#}); using the ones from before"
        ));
    }
    let (image_pkg, version) = resolve_deb(apt, want)?;
    let dir = cache
        .join("kernels")
        .join(format!("{image_pkg}_{}", version.replace(':', "%3a")));
    let marker = dir.join(".complete");
    let mut cached = true;
    if !marker.exists() {
        cached = false;
        // The image package is a small metapackage on sid: the kernel and its modules are in
        // linux-binary-* and linux-modules-*.
        let mut pkgs = vec![(image_pkg.clone(), version.clone())];
        for d in apt.depends(&image_pkg, &version)? {
            if d.starts_with("linux-binary-") || d.starts_with("linux-modules-") {
                pkgs.push((d, version.clone()));
            }
        }
        log(&format!(
            "fetching {} from Debian (signatures checked with {})",
            pkgs.iter()
                .map(|(p, v)| format!("{p}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            super::apt::KEYRING
        ));
        let dl = cache.join("downloads");
        let debs = apt.download(&pkgs, &dl)?;
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        for deb in &debs {
            let st = Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(&partial)
                .status()
                .context("running dpkg-deb (is dpkg installed?)")?;
            if !st.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
        // usr-merged packages put modules in usr/lib/modules; depmod and virtme look in
        // lib/modules too.
        if !partial.join("lib").exists() && partial.join("usr/lib").exists() {
            std::os::unix::fs::symlink("usr/lib", partial.join("lib"))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir)?;
        for deb in &debs {
            let _ = std::fs::remove_file(deb);
        }
    }
    let release = modules_release(&dir.join("lib/modules"))?;
    if !marker.exists() {
        depmod(&dir, &release)?;
        std::fs::write(&marker, format!("{image_pkg}={version}\n"))?;
    }
    // Once per unpacked kernel (and again when the list changes); a kernel whose modules
    // cannot be decompressed still boots, its guest only unpacks them itself.
    match decompress_lab_modules(&dir, &release) {
        Ok(0) => {}
        Ok(n) => log(&format!(
            "decompressed {n} modules the lab loads (and their dependencies) of {image_pkg}"
        )),
        Err(e) => log(&format!(
            "warning: the lab's modules of {image_pkg} stay compressed: {e:#}"
        )),
    }
    let boot = [
        dir.join(format!("boot/vmlinuz-{release}")),
        dir.join(format!("lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| {
        format!(
            "no vmlinuz in the unpacked {image_pkg}={version} ({})",
            dir.display()
        )
    })?;
    // Once per unpacked kernel; a kernel without it boots its bzImage.
    // (Usr-merged images have their vmlinuz in lib/modules/RELEASE/ and no boot/.)
    let pvh = match std::fs::create_dir_all(dir.join("boot"))
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::pvh::prepare(&boot, &dir.join(format!("boot/vmlinux-{release}"))))
    {
        Ok((p, made)) => {
            if made {
                log(&format!(
                    "decompressed the kernel of {image_pkg} for QEMU's PVH entry (no bzImage boot)"
                ));
            }
            Some(p)
        }
        Err(e) => {
            log(&format!(
                "warning: {image_pkg} boots its bzImage (slower under TCG): {e:#}"
            ));
            None
        }
    };
    Ok(Kernel {
        spec: format!("deb:{want}"),
        release,
        boot,
        pvh,
        source: vec![format!("debian:{image_pkg}={version}")],
        cached,
    })
}

/// The single release directory under `lib/modules`.
fn modules_release(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => bail!("no kernel modules directory in {}", dir.display()),
        _ => bail!("several kernels in {}: {}", dir.display(), names.join(", ")),
    }
}

/// Marks an unpacked kernel whose lab modules are decompressed; its text is the list they
/// were chosen from, so a changed list decompresses again.
const DECOMPRESSED_MARKER: &str = ".lab-modules-decompressed";

/// The modules virtme-ng's initramfs loads before the root filesystem is there (its 9p
/// root, consoles and overlays), which a compressed module would have it decompress under
/// TCG on every boot (7.2: 1.3 s from `Run /init` to the switch to the root, 0.8 s on 6.1,
/// whose modules are not compressed).
pub(crate) const BOOT_MODULES: &[&str] = &[
    "9p",
    "9pnet_virtio",
    "virtiofs",
    "virtio_console",
    "virtio_pci",
    "virtio_mmio",
    "overlay",
    "fuse",
];

/// The modules decompressed in an unpacked kernel: the lab's and virtme-ng's boot modules.
fn decompressed_modules() -> Vec<&'static str> {
    let mut m = crate::guest::LAB_MODULES.to_vec();
    m.extend_from_slice(BOOT_MODULES);
    m
}

/// A module's name from its file in `modules.dep` (`kernel/fs/xfs/xfs.ko.xz` -> `xfs`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// What kmod reads of a release's modules directory to load a module: `modules.dep` (each
/// module's file and the files it needs), the `pre:` soft dependencies of
/// `modules.softdep`, and `modules.alias` for the soft dependencies that name an alias
/// (`softdep libcrc32c pre: crc32c`, where `crc32c` is crc32c_intel or crc32c_generic).
#[derive(Default)]
pub(crate) struct ModIndex {
    deps: BTreeMap<String, (String, Vec<String>)>,
    soft_pre: BTreeMap<String, Vec<String>>,
    aliases: BTreeMap<String, Vec<String>>,
}

impl ModIndex {
    /// From the texts of `modules.dep`, `modules.softdep` and `modules.alias` (the last two
    /// may be empty).
    pub(crate) fn parse(dep: &str, softdep: &str, alias: &str) -> ModIndex {
        let deps = dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(m, rest)| {
                (
                    module_name(m),
                    (
                        m.to_string(),
                        rest.split_whitespace().map(str::to_string).collect(),
                    ),
                )
            })
            .collect();
        let mut soft_pre: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            // `pre:` names up to a `post:` (or the line's end).
            let mut pre = false;
            for t in w {
                match t {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    _ if pre => soft_pre
                        .entry(m.replace('-', "_"))
                        .or_default()
                        .push(t.to_string()),
                    _ => {}
                }
            }
        }
        // Only the aliases a soft dependency names: modules.alias is large.
        let wanted: BTreeSet<&str> = soft_pre.values().flatten().map(String::as_str).collect();
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                if wanted.contains(a) {
                    aliases
                        .entry(a.to_string())
                        .or_default()
                        .push(m.replace('-', "_"));
                }
            }
        }
        ModIndex {
            deps,
            soft_pre,
            aliases,
        }
    }

    /// Read the index of the release directory `rel` (`lib/modules/RELEASE`).
    pub(crate) fn read(rel: &Path) -> Result<ModIndex> {
        let dep = std::fs::read_to_string(rel.join("modules.dep"))
            .with_context(|| format!("reading {}", rel.join("modules.dep").display()))?;
        let opt = |f: &str| std::fs::read_to_string(rel.join(f)).unwrap_or_default();
        Ok(ModIndex::parse(
            &dep,
            &opt("modules.softdep"),
            &opt("modules.alias"),
        ))
    }

    /// The module a soft dependency's target names: a module by that name, else the first
    /// module `modules.alias` gives for it.
    fn resolve(&self, target: &str) -> Option<String> {
        let n = target.replace('-', "_");
        if self.deps.contains_key(&n) {
            return Some(n);
        }
        self.aliases
            .get(target)?
            .iter()
            .find(|m| self.deps.contains_key(*m))
            .cloned()
    }

    /// The files to load for `wanted`, each after its soft `pre:` dependencies and the
    /// files it depends on, each once (paths relative to the release directory), as
    /// modprobe would load them. A name `modules.dep` lacks (built in, or not built) has no
    /// file: whoever loads these asks kmod afterwards for what is still missing.
    pub(crate) fn load_order(&self, wanted: &[&str]) -> Vec<String> {
        fn visit(ix: &ModIndex, n: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(n.to_string()) {
                return;
            }
            for t in ix.soft_pre.get(n).into_iter().flatten() {
                if let Some(m) = ix.resolve(t) {
                    visit(ix, &m, seen, out);
                }
            }
            let Some((path, d)) = ix.deps.get(n) else {
                return;
            };
            for p in d {
                visit(ix, &module_name(p), seen, out);
            }
            out.push(path.clone());
        }
        let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
        for w in wanted {
            visit(self, &w.replace('-', "_"), &mut seen, &mut out);
        }
        out
    }

    /// The files of `wanted` and of everything they need, sorted: [`Self::load_order`]'s.
    fn closure(&self, wanted: &[&str]) -> Vec<String> {
        let mut f = self.load_order(wanted);
        f.sort();
        f
    }
}

/// Decompress the lab's modules and virtme-ng's boot modules of an unpacked kernel (`.ko.xz`, `.ko.zst`, `.ko.gz`, with
/// the host's xz, zstd or gzip) and run depmod again. Only in a kernel the lab unpacked
/// itself, never in a user's `--modules` directory. Returns how many it decompressed.
fn decompress_lab_modules(dir: &Path, release: &str) -> Result<usize> {
    let marker = dir.join(DECOMPRESSED_MARKER);
    let wanted = decompressed_modules();
    // The text says how the list was closed over, so a change of rule decompresses again.
    let list = format!("with soft dependencies: {}", wanted.join(" "));
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == list) {
        return Ok(0);
    }
    let rel = dir.join("lib/modules").join(release);
    let mut n = 0;
    for f in ModIndex::read(&rel)?.closure(&wanted) {
        let Some((stem, codec)) = f
            .rsplit_once(".ko.")
            .and_then(|(stem, suffix)| Some((stem, Codec::of_suffix(suffix)?)))
        else {
            continue;
        };
        // Paths from modules.dep stay inside the release directory.
        if f.starts_with('/') || f.split('/').any(|c| c == "..") {
            bail!("modules.dep names {f:?} outside its directory");
        }
        let src = rel.join(&f);
        let dst = rel.join(format!("{stem}.ko"));
        if !src.exists() && dst.exists() {
            // Decompressed by a lab killed before its depmod: modules.dep is redone below.
            n += 1;
            continue;
        }
        decompress(codec, Input::File(&src), &dst, |_| Ok(()))?;
        std::fs::remove_file(&src)?;
        n += 1;
    }
    if n > 0 {
        depmod(dir, release)?;
    }
    std::fs::write(&marker, list)?;
    Ok(n)
}

fn depmod(base: &Path, release: &str) -> Result<()> {
    let st = Command::new("depmod")
        .arg("-a")
        .arg("-b")
        .arg(base)
        .arg(release)
        .status()
        .context("running depmod (install kmod)")?;
    if !st.success() {
        bail!("depmod -b {} {release} failed", base.display());
    }
    Ok(())
}

/// The release string a bzImage carries ("Linux version X ..." or the boot header's version).
pub fn image_release(image: &Path) -> Result<String> {
    let data = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    // x86 boot protocol: the setup header's kernel_version field (offset 0x20e) points to a
    // NUL-terminated string at that offset + 0x200.
    if data.len() > 0x210 && &data[0x202..0x206] == b"HdrS" {
        let off = u16::from_le_bytes([data[0x20e], data[0x20f]]) as usize + 0x200;
        if let Some(s) = data.get(off..off + 256) {
            let end = s
                .iter()
                .position(|&b| b == 0 || b == b' ')
                .unwrap_or(s.len());
            let r = String::from_utf8_lossy(&s[..end]).into_owned();
            if !r.is_empty() {
                return Ok(r);
            }
        }
    }
    bail!(
        "{} is not an x86 bzImage with a version string",
        image.display()
    )
}

/// A user's `path:BZIMAGE [--modules DIR]`: staged under `cache/kernels/path-HASH` as
/// `boot/vmlinuz-RELEASE` plus `lib/modules/RELEASE` (symlinks to the user's files when
/// they already carry `modules.dep`; a copy otherwise, so `depmod` never writes into the
/// user's tree).
pub fn prepare_path(cache: &Path, image: &Path, modules: Option<&Path>) -> Result<Kernel> {
    let image = image
        .canonicalize()
        .with_context(|| format!("path:{}", image.display()))?;
    let release = image_release(&image)?;
    let h = crate::fnv(&image.display().to_string());
    let dir = cache.join("kernels").join(format!("path-{h:016x}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("boot"))?;
    std::os::unix::fs::symlink(&image, dir.join(format!("boot/vmlinuz-{release}")))?;
    let mut source = vec![format!("path:{}", image.display())];
    if let Some(m) = modules {
        let m = m
            .canonicalize()
            .with_context(|| format!("--modules {}", m.display()))?;
        let mods = if m.join(format!("lib/modules/{release}")).is_dir() {
            m.join(format!("lib/modules/{release}"))
        } else if m.join("modules.order").exists() || m.join("kernel").is_dir() {
            m.clone()
        } else {
            bail!(
                "--modules {}: neither lib/modules/{release} nor a modules directory (modules.order, kernel/) is there",
                m.display()
            );
        };
        std::fs::create_dir_all(dir.join("lib/modules"))?;
        let dest = dir.join(format!("lib/modules/{release}"));
        if mods.join("modules.dep").exists() {
            std::os::unix::fs::symlink(&mods, &dest)?;
        } else {
            let st = Command::new("cp")
                .arg("-a")
                .arg(&mods)
                .arg(&dest)
                .status()?;
            if !st.success() {
                bail!("copying {} into the lab cache failed", mods.display());
            }
            depmod(&dir, &release)?;
        }
        source.push(format!("modules:{}", mods.display()));
    }
    Ok(Kernel {
        spec: format!("path:{}", image.display()),
        boot: dir.join(format!("boot/vmlinuz-{release}")),
        // A user's image may be rebuilt in place: it boots as it is.
        pvh: None,
        release,
        source,
        cached: true,
    })
}

/// A kernel build tree: what `vng -r DIR` boots (virtme-ng installs its modules into
/// `DIR/.virtme_mods` itself, as it does for every kernel developer using it).
pub fn prepare_tree(dir: &Path) -> Result<Kernel> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("tree:{}", dir.display()))?;
    let image = dir.join("arch/x86/boot/bzImage");
    if !dir.join(".config").exists() || !image.exists() {
        bail!(
            "tree:{} is not a built kernel tree (needs .config and arch/x86/boot/bzImage; build it with `make` or `vng -b`)",
            dir.display()
        );
    }
    let release = std::fs::read_to_string(dir.join("include/config/kernel.release"))
        .map(|s| s.trim().to_string())
        .or_else(|_| image_release(&image))?;
    Ok(Kernel {
        spec: format!("tree:{}", dir.display()),
        release,
        boot: dir.clone(),
        // vng boots the tree's own bzImage (the tree's vmlinux may carry the PVH note too;
        // not used yet).
        pvh: None,
        source: vec![format!("tree:{}", dir.display())],
        cached: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_modules_closure_follows_modules_dep() {
        let dep = "kernel/fs/xfs/xfs.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
                   kernel/lib/libcrc32c.ko.xz:\n\
                   kernel/drivers/acpi/nfit/nfit.ko.xz: kernel/drivers/nvdimm/libnvdimm.ko.xz\n\
                   kernel/drivers/nvdimm/libnvdimm.ko.xz:\n\
                   kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/nd_btt.ko kernel/drivers/nvdimm/libnvdimm.ko.xz\n\
                   kernel/drivers/nvdimm/nd_btt.ko:\n\
                   kernel/sound/snd.ko.xz:\n";
        let c = ModIndex::parse(dep, "", "").closure(&["xfs", "nd_pmem"]);
        assert_eq!(
            c,
            [
                "kernel/drivers/nvdimm/libnvdimm.ko.xz",
                "kernel/drivers/nvdimm/nd_btt.ko",
                "kernel/drivers/nvdimm/nd_pmem.ko",
                "kernel/fs/xfs/xfs.ko.xz",
                "kernel/lib/libcrc32c.ko.xz",
            ]
        );
        assert!(ModIndex::parse(dep, "", "").closure(&["nope"]).is_empty());
    }

    #[test]
    fn modules_load_after_what_they_depend_on_each_once() {
        // As 7.2's modules.dep has them: ext4's dependencies in one list, nd_pmem's with one
        // shared with nfit.
        let dep = "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc/crc16.ko\n\
                   kernel/fs/jbd2/jbd2.ko:\n\
                   kernel/fs/mbcache.ko:\n\
                   kernel/lib/crc/crc16.ko:\n\
                   kernel/drivers/acpi/nfit/nfit.ko: kernel/drivers/nvdimm/libnvdimm.ko\n\
                   kernel/drivers/nvdimm/libnvdimm.ko:\n\
                   kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/nd_btt.ko kernel/drivers/nvdimm/libnvdimm.ko\n\
                   kernel/drivers/nvdimm/nd_btt.ko: kernel/drivers/nvdimm/libnvdimm.ko\n\
                   kernel/fs/xfs/xfs.ko:\n";
        let ix = ModIndex::parse(dep, "", "");
        let o = ix.load_order(&["nfit", "nd_pmem", "ext4", "libcrc32c", "nd-btt"]);
        assert_eq!(
            o,
            [
                "kernel/drivers/nvdimm/libnvdimm.ko",
                "kernel/drivers/acpi/nfit/nfit.ko",
                "kernel/drivers/nvdimm/nd_btt.ko",
                "kernel/drivers/nvdimm/nd_pmem.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/lib/crc/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        // Built in or not built (libcrc32c here): no file, and nothing else lost.
        assert!(ix.load_order(&["libcrc32c"]).is_empty());
    }

    #[test]
    fn soft_dependencies_load_first_through_their_alias() {
        // 6.12: xfs needs libcrc32c, whose init wants the "crc32c" crypto module; without
        // it first, xfs failed with "Unknown symbol crc32c" in the lab's initramfs.
        let dep = "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n\
                   kernel/lib/libcrc32c.ko:\n\
                   kernel/arch/x86/crypto/crc32c-intel.ko.xz:\n\
                   kernel/crypto/crc32c_generic.ko.xz:\n\
                   kernel/fs/jbd2/jbd2.ko:\n";
        let soft = "# comment\n\
                    softdep libcrc32c pre: crc32c\n\
                    softdep jbd2 pre: crypto-crc32c post: nothing\n\
                    softdep cifs gcm\n";
        let alias = "alias crypto-crc32c crc32c_intel\n\
                     alias crc32c crc32c_intel\n\
                     alias crypto-crc32c crc32c_generic\n\
                     alias crc32c crc32c_generic\n\
                     alias pci:v* snd_hda\n";
        let ix = ModIndex::parse(dep, soft, alias);
        assert_eq!(
            ix.load_order(&["xfs", "jbd2"]),
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                "kernel/lib/libcrc32c.ko",
                "kernel/fs/xfs/xfs.ko",
                "kernel/fs/jbd2/jbd2.ko",
            ]
        );
        // And the cache decompresses what they need.
        assert!(ix
            .closure(&["xfs"])
            .contains(&"kernel/arch/x86/crypto/crc32c-intel.ko.xz".to_string()));
    }

    #[test]
    fn specs_parse_and_refuse_relative_paths() {
        assert_eq!(
            KernelSpec::parse("deb:6.12", None).unwrap(),
            KernelSpec::Deb("6.12".into())
        );
        assert!(KernelSpec::parse("deb:", None).is_err());
        assert!(KernelSpec::parse("path:bzImage", None)
            .unwrap_err()
            .contains("absolute"));
        assert!(KernelSpec::parse("tree:", None)
            .unwrap_err()
            .contains("absolute"));
        assert!(KernelSpec::parse("6.12", None)
            .unwrap_err()
            .contains("deb:6.12"));
        assert_eq!(
            KernelSpec::parse("path:/k/bzImage", Some(Path::new("/k/mods"))).unwrap(),
            KernelSpec::Path {
                image: "/k/bzImage".into(),
                modules: Some("/k/mods".into())
            }
        );
    }
}
