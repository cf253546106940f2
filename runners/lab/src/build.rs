//! `--kernels tree:DIR --build`: build a kernel tree with what the lab's guests use, then boot
//! the image the way `path:` kernels boot (image and modules staged in the cache).
//!
//! The config is virtme-ng's (`vng --kconfig`: the architecture's defconfig plus what a
//! virtme guest needs to boot) with [`LAB_CONFIG`] given as a fragment (`--config`); vng
//! runs `make olddefconfig`, which drops an option whose dependencies this version of the
//! tree lacks: [`missing`] names those, and the build goes on (what they would have enabled
//! is `notrun` in the guest, with the reason). `vng --kconfig` replaces the tree's
//! `.config`: every commit of a bisection is built with the same recipe. Modules are
//! installed into the cache (`CACHE/builds/tree-HASH/mods`), never into the tree or the host.
//!
//! The recipe is data ([`steps`]) so that it is tested without building a kernel; a real
//! build takes hours on a small machine and is not part of the tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::kernels::{self, Kernel};

/// The options the guest uses, each with what needs it. Built in (`y`), so that nothing
/// depends on modules loading in the guest; `m` in a config counts as present too.
pub const LAB_CONFIG: &[(&str, &str)] = &[
    ("CONFIG_IO_URING", "the io_uring pin path"),
    ("CONFIG_FILE_LOCKING", "leases"),
    ("CONFIG_TMPFS", "the tmpfs and memfd backings"),
    ("CONFIG_HUGETLBFS", "the hugetlb backings"),
    ("CONFIG_TRANSPARENT_HUGEPAGE", "THP-backed regions"),
    ("CONFIG_BLK_DEV_LOOP", "the loop-device filesystem backings"),
    ("CONFIG_EXT4_FS", "the ext4 and ext4-dax backings"),
    ("CONFIG_XFS_FS", "the xfs and xfs-dax backings"),
    ("CONFIG_BTRFS_FS", "the btrfs backing"),
    (
        "CONFIG_MEMORY_HOTPLUG",
        "ZONE_DEVICE, for FS-DAX and device-dax",
    ),
    ("CONFIG_MEMORY_HOTREMOVE", "ZONE_DEVICE"),
    ("CONFIG_SPARSEMEM_VMEMMAP", "ZONE_DEVICE"),
    (
        "CONFIG_ZONE_DEVICE",
        "struct pages for pmem (FS-DAX pins, device-dax)",
    ),
    ("CONFIG_FS_DAX", "dax=always mounts"),
    ("CONFIG_ACPI_NFIT", "the emulated NVDIMM (--pmem nvdimm)"),
    ("CONFIG_LIBNVDIMM", "pmem namespaces"),
    ("CONFIG_BLK_DEV_PMEM", "/dev/pmemN"),
    (
        "CONFIG_NVDIMM_PFN",
        "fsdax namespaces with struct pages (--map=mem)",
    ),
    ("CONFIG_NVDIMM_DAX", "devdax namespaces"),
    ("CONFIG_X86_PMEM_LEGACY", "--pmem memmap"),
    ("CONFIG_DEV_DAX", "the devdax backing"),
    (
        "CONFIG_DEV_DAX_PMEM",
        "the devdax backing on a pmem namespace",
    ),
    ("CONFIG_DUMMY", "the netdev soft-RoCE runs on"),
    ("CONFIG_INFINIBAND", "the rdma pin paths"),
    ("CONFIG_INFINIBAND_USER_ACCESS", "ibverbs from user space"),
    (
        "CONFIG_INFINIBAND_ON_DEMAND_PAGING",
        "the rdma-odp pin path",
    ),
    ("CONFIG_RDMA_RXE", "soft-RoCE (rxe0)"),
];

/// The fragment handed to `vng --kconfig --config`.
pub fn fragment() -> String {
    let mut s = String::from("# pinstorm lab: what the guest uses (runners/lab/src/build.rs)\n");
    for (name, why) in LAB_CONFIG {
        s.push_str(&format!("# {why}\n{name}=y\n"));
    }
    s
}

/// The options of [`LAB_CONFIG`] a `.config` does not have (neither `=y` nor `=m`).
pub fn missing(config: &str) -> Vec<&'static str> {
    LAB_CONFIG
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            !config.lines().any(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .is_some_and(|v| v == "y" || v == "m")
            })
        })
        .collect()
}

/// One command of the build, run in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub what: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on top of pinstorm's environment.
    pub env: Vec<(String, String)>,
}

impl Step {
    /// The command as a shell line, for the log and errors.
    pub fn line(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where a tree's build keeps its files in the cache.
pub struct BuildDir {
    pub dir: PathBuf,
}

impl BuildDir {
    pub fn new(cache: &Path, tree: &Path) -> BuildDir {
        BuildDir {
            dir: cache.join("builds").join(format!(
                "tree-{:016x}",
                crate::fnv(&tree.display().to_string())
            )),
        }
    }
    pub fn fragment(&self) -> PathBuf {
        self.dir.join("lab.config")
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("mods")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
    /// virtme-ng's HOME while configuring: a user's ~/.config/virtme-ng/kernel.config
    /// would otherwise change the config from one machine to the next.
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }
}

/// The build, command by command: configure with vng and the lab's fragment, build the
/// image and modules, install the modules into the cache.
pub fn steps(vng: &Path, b: &BuildDir, jobs: usize) -> Vec<Step> {
    let home = b.home().display().to_string();
    let vng_bin = vng
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let path = match std::env::var("PATH") {
        Ok(p) => format!("{vng_bin}:{p}"),
        Err(_) => vng_bin,
    };
    vec![
        Step {
            what: "configure (vng --kconfig with the lab's options)",
            program: vng.to_path_buf(),
            args: vec![
                "--kconfig".into(),
                "--config".into(),
                b.fragment().display().to_string(),
            ],
            env: vec![
                ("HOME".into(), home.clone()),
                ("XDG_CONFIG_HOME".into(), format!("{home}/.config")),
                ("PATH".into(), path),
            ],
        },
        Step {
            what: "build the image and modules",
            program: "make".into(),
            args: vec![format!("-j{jobs}"), "bzImage".into(), "modules".into()],
            env: vec![],
        },
        Step {
            what: "install the modules into the cache",
            program: "make".into(),
            args: vec![
                "modules_install".into(),
                format!("INSTALL_MOD_PATH={}", b.modules().display()),
                "INSTALL_MOD_STRIP=1".into(),
            ],
            env: vec![],
        },
    ]
}

/// The last `n` lines of a file, for errors.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `git` says the tree is at, when it is a git checkout: recorded in the result, so a
/// bisection's results name their commits.
fn git_head(tree: &Path) -> Vec<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut v = Vec::new();
    if let Some(h) = git(&["rev-parse", "HEAD"]) {
        v.push(format!("git:{h}"));
        if let Some(d) = git(&["describe", "--always", "--dirty"]) {
            v.push(format!("git-describe:{d}"));
        }
    }
    v
}

/// Build the tree and stage what it built like a `path:` kernel.
pub fn build_tree(cache: &Path, vng: &Path, tree: &Path, log: &dyn Fn(&str)) -> Result<Kernel> {
    let tree = tree
        .canonicalize()
        .with_context(|| format!("tree:{}", tree.display()))?;
    if !tree.join("Makefile").is_file() || !tree.join("Kconfig").is_file() {
        bail!(
            "tree:{} is not a kernel source tree (no Makefile and Kconfig)",
            tree.display()
        );
    }
    let b = BuildDir::new(cache, &tree);
    std::fs::create_dir_all(b.home())?;
    std::fs::write(b.fragment(), fragment())?;
    // Modules of the previous build (another commit, another release) must not be staged.
    let _ = std::fs::remove_dir_all(b.modules());
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut logf = std::fs::File::create(b.log())
        .with_context(|| format!("creating {}", b.log().display()))?;
    for step in steps(vng, &b, jobs) {
        log(&format!(
            "tree:{}: {}: {}",
            tree.display(),
            step.what,
            step.line()
        ));
        writeln!(logf, "==> {}: {}", step.what, step.line())?;
        let out = logf.try_clone()?;
        let err = logf.try_clone()?;
        let st = Command::new(&step.program)
            .args(&step.args)
            .envs(step.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&tree)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .with_context(|| format!("running {}", step.line()))?;
        if !st.success() {
            bail!(
                "tree:{}: {} failed ({st}): `{}`; the log is {}, ending:\n{}",
                tree.display(),
                step.what,
                step.line(),
                b.log().display(),
                tail(&b.log(), 25)
            );
        }
        if step.program == vng {
            let config = std::fs::read_to_string(tree.join(".config"))
                .with_context(|| format!("reading {}/.config", tree.display()))?;
            let gone = missing(&config);
            if !gone.is_empty() {
                log(&format!(
                    "tree:{}: this tree's Kconfig left out {} (their dependencies are not met here); what they enable will be notrun in the guest",
                    tree.display(),
                    gone.join(", ")
                ));
                writeln!(logf, "==> not in .config: {}", gone.join(", "))?;
            }
        }
    }
    let mut k = kernels::prepare_path(
        cache,
        &tree.join("arch/x86/boot/bzImage"),
        Some(&b.modules()),
    )?;
    k.spec = format!("tree:{}", tree.display());
    let mut source = vec![format!("tree:{} (built by --build)", tree.display())];
    source.extend(git_head(&tree));
    source.push(format!("build log:{}", b.log().display()));
    source.append(&mut k.source);
    k.source = source;
    k.cached = false;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_sets_every_option_the_guest_uses() {
        let f = fragment();
        for (name, _) in LAB_CONFIG {
            assert!(f.lines().any(|l| l == format!("{name}=y")), "{name}");
        }
        // What docs/lab.md tells people building their own kernel is in it.
        for name in [
            "CONFIG_LIBNVDIMM",
            "CONFIG_ACPI_NFIT",
            "CONFIG_BLK_DEV_PMEM",
            "CONFIG_FS_DAX",
            "CONFIG_DEV_DAX_PMEM",
            "CONFIG_XFS_FS",
            "CONFIG_EXT4_FS",
            "CONFIG_RDMA_RXE",
            "CONFIG_INFINIBAND_USER_ACCESS",
            "CONFIG_DUMMY",
            "CONFIG_BLK_DEV_LOOP",
        ] {
            assert!(LAB_CONFIG.iter().any(|(n, _)| *n == name), "{name}");
        }
        let uniq: std::collections::BTreeSet<_> = LAB_CONFIG.iter().map(|(n, _)| n).collect();
        assert_eq!(uniq.len(), LAB_CONFIG.len(), "each option once");
        // Everything that is not a comment is an option line.
        assert!(f
            .lines()
            .all(|l| l.starts_with('#') || (l.starts_with("CONFIG_") && l.ends_with("=y"))));
    }

    #[test]
    fn options_a_config_lacks_are_named_and_modules_count_as_present() {
        let mut config: String = LAB_CONFIG.iter().map(|(n, _)| format!("{n}=y\n")).collect();
        assert!(missing(&config).is_empty());
        config = config
            .replace("CONFIG_RDMA_RXE=y", "CONFIG_RDMA_RXE=m")
            .replace("CONFIG_FS_DAX=y", "# CONFIG_FS_DAX is not set")
            .replace("CONFIG_DUMMY=y\n", "")
            // A longer name with the same prefix is another option.
            .replace("CONFIG_INFINIBAND=y", "CONFIG_INFINIBAND_FOO=y");
        assert_eq!(
            missing(&config),
            ["CONFIG_FS_DAX", "CONFIG_DUMMY", "CONFIG_INFINIBAND"]
        );
    }

    #[test]
    fn the_build_configures_with_vng_and_the_fragment_then_makes_and_installs_into_the_cache() {
        let b = BuildDir::new(Path::new("/c"), Path::new("/src/linux"));
        assert!(
            b.dir.display().to_string().starts_with("/c/builds/tree-"),
            "{}",
            b.dir.display()
        );
        let s = steps(Path::new("/c/venv/bin/vng"), &b, 4);
        let lines: Vec<String> = s.iter().map(Step::line).collect();
        let d = b.dir.display();
        assert_eq!(
            lines,
            [
                format!("/c/venv/bin/vng --kconfig --config {d}/lab.config"),
                "make -j4 bzImage modules".to_string(),
                format!("make modules_install INSTALL_MOD_PATH={d}/mods INSTALL_MOD_STRIP=1"),
            ]
        );
        let env: std::collections::BTreeMap<_, _> = s[0].env.iter().cloned().collect();
        assert_eq!(env["HOME"], format!("{d}/home"), "no user virtme-ng config");
        assert!(env["PATH"].starts_with("/c/venv/bin:"), "{}", env["PATH"]);
        assert!(s[1].env.is_empty() && s[2].env.is_empty());
    }

    #[test]
    fn a_directory_that_is_not_a_kernel_tree_is_refused_before_anything_runs() {
        let d = std::env::temp_dir().join(format!("pinstorm-notree-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let e = build_tree(
            Path::new("/nonexistent-cache"),
            Path::new("/bin/true"),
            &d,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a kernel source tree"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
