//! The kernel's own mm selftests beside a scenario (`pinstorm lab --kselftests`): an
//! independent witness built from the guest kernel's source.
//!
//! Host side, before the boot: Debian's `linux-source-X.Y` (arch all, the whole tree as a
//! `.tar.xz`) is fetched through the lab's private apt (signatures and hashes checked as for
//! the kernel packages), and only the selftests' directory (`tools/testing/selftests/mm`, or
//! `vm` in older trees such as 6.1's), the `kselftest*.h` headers, `mm/gup_test.h` and the
//! uapi headers (installed as `make headers_install` would) are unpacked into
//! `CACHE/kselftests/PACKAGE_VERSION/`, once per source version. Which version: the booted
//! kernel's own Debian version, else the newest of its series (the record says so), or the
//! series `--kselftest-source` names. Each test of the allow-list ([`SELFTESTS`]) is built
//! there with the host's `cc`. The guest runs the binaries after the scenario
//! ([`run_in_guest`]: as root, each under a timeout, from a copy on a small ext4 of its own,
//! with a private tmpfs on /tmp); the host parses their KTAP output ([`parse_ktap`]) into
//! the result's `lab.kselftests`.
//!
//! Owns `CACHE/kselftests` and nothing else: a directory there is reused only when its
//! marker names the exact package and version (or, for a binary, the exact build command),
//! never by its name. What cannot be fetched, unpacked or built is `notrun` with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use pinstorm_analysis::schema::{KselftestCase, KselftestRecord};

use crate::apt::{version_cmp, Apt};
use crate::kernels::Kernel;

/// A selftest the lab can build: its source file and the libraries it links.
pub struct Selftest {
    pub name: &'static str,
    /// Extra libraries (`-lnuma`); liburing is added where the host has it.
    libs: &'static [&'static str],
    /// Whether its io_uring cases need liburing (`LOCAL_CONFIG_HAVE_LIBURING`).
    uses_liburing: bool,
}

/// The only names that reach the filesystem: what `--kselftests` accepts.
pub const SELFTESTS: &[Selftest] = &[
    Selftest {
        name: "cow",
        libs: &[],
        uses_liburing: true,
    },
    Selftest {
        name: "gup_longterm",
        libs: &[],
        uses_liburing: true,
    },
    Selftest {
        name: "migration",
        libs: &["-lnuma"],
        uses_liburing: false,
    },
];

/// Parse `--kselftests cow,gup_longterm`: names of the allow-list, each once.
pub fn parse_names(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !SELFTESTS.iter().any(|t| t.name == n) {
            let known: Vec<_> = SELFTESTS.iter().map(|t| t.name).collect();
            return Err(format!(
                "--kselftests: unknown kselftest {n:?}: the lab builds {}",
                known.join(", ")
            ));
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    if out.is_empty() {
        return Err("--kselftests names no test".into());
    }
    Ok(out)
}

/// Whether `s` is a kernel series (`6.12`), the form `--kselftest-source` takes.
pub fn valid_series(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A selftest ready for the guest, or why it is not.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub name: String,
    pub source: Option<SourceInfo>,
    pub liburing: bool,
    pub binary: std::result::Result<PathBuf, String>,
}

#[derive(Clone, Debug)]
pub(crate) struct SourceInfo {
    /// `linux-source-6.12=6.12.118-1`
    pub package: String,
    pub kernel_version: Option<String>,
    pub matches: bool,
    pub note: Option<String>,
}

/// What the guest is told to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestSelftest {
    pub name: String,
    pub binary: PathBuf,
}

/// What the guest reports of one selftest's run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestSelftestRun {
    pub name: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub seconds: f64,
    pub error: Option<String>,
    pub tmp_fs: Option<String>,
    pub cwd_fs: Option<String>,
}

/// The log file of a selftest in the staging directory and next to the result.
pub fn log_name(name: &str) -> String {
    format!("kselftest-{name}.log")
}

/// The Debian version of a `deb:` kernel, from its source record (`debian:PKG=VERSION`).
fn debian_version(kernel: &Kernel) -> Option<String> {
    kernel
        .source
        .iter()
        .find_map(|s| s.strip_prefix("debian:"))
        .and_then(|s| s.split_once('='))
        .map(|(_, v)| v.to_string())
}

/// `6.1.192-3` -> `6.1`.
fn series_of(version: &str) -> Option<String> {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    let mut it = v.split(['.', '-', '+', '~']);
    let (a, b) = (it.next()?, it.next()?);
    let s = format!("{a}.{b}");
    valid_series(&s).then_some(s)
}

/// A name from apt that becomes a directory name: plain characters only.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() < 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// Fetch and build the selftests `names` for `kernel`. Never fails: what cannot be done is
/// a `Prepared` whose binary is the reason.
pub(crate) fn prepare(
    cache: &Path,
    apt: &Apt,
    kernel: &Kernel,
    names: &[String],
    source_series: Option<&str>,
    log: &dyn Fn(&str),
) -> Vec<Prepared> {
    if names.is_empty() {
        return Vec::new();
    }
    let kernel_version = debian_version(kernel);
    let notrun = |why: String, source: Option<SourceInfo>| -> Vec<Prepared> {
        names
            .iter()
            .map(|n| Prepared {
                name: n.clone(),
                source: source.clone(),
                liburing: false,
                binary: Err(why.clone()),
            })
            .collect()
    };
    let series = match (source_series, kernel_version.as_deref().and_then(series_of)) {
        (Some(s), _) => s.to_string(),
        (None, Some(s)) => s,
        (None, None) => {
            return notrun(
                format!(
                    "{} is not a Debian kernel: no linux-source package to build the selftests from (--kselftest-source SERIES names one)",
                    kernel.spec
                ),
                None,
            )
        }
    };
    let (tree, source) = match source_tree(cache, apt, &series, kernel_version.as_deref(), log) {
        Ok(t) => t,
        Err(e) => return notrun(format!("no selftest source: {e:#}"), None),
    };
    let liburing = have_liburing(&tree.build);
    names
        .iter()
        .map(|n| {
            // Names were checked against the allow-list with the options; a name that is
            // not there never reaches the filesystem.
            let Some(t) = SELFTESTS.iter().find(|t| t.name == n) else {
                return Prepared {
                    name: n.clone(),
                    source: Some(source.clone()),
                    liburing: false,
                    binary: Err(format!("{n:?} is not a selftest the lab builds")),
                };
            };
            let binary = build(&tree, t, liburing).map_err(|e| format!("{e:#}"));
            match &binary {
                Ok(b) => log(&format!(
                    "kselftest {n}: {} ({})",
                    b.display(),
                    source.package
                )),
                Err(e) => log(&format!("kselftest {n}: notrun: {e}")),
            }
            Prepared {
                name: n.clone(),
                source: Some(source.clone()),
                liburing: liburing && t.uses_liburing,
                binary,
            }
        })
        .collect()
}

/// An unpacked selftest tree in the cache.
struct Tree {
    /// `tools/testing/selftests/mm` (or `vm`).
    tests: PathBuf,
    /// Where the binaries and `local_config.h` go.
    build: PathBuf,
    /// The tree's uapi headers, installed.
    headers: PathBuf,
    /// `linux-source-6.12=6.12.118-1`, the marker's content.
    id: String,
}

/// The selftest tree of `linux-source-SERIES`, at `kernel_version` when apt has it, else
/// the newest it has (and the record says so).
fn source_tree(
    cache: &Path,
    apt: &Apt,
    series: &str,
    kernel_version: Option<&str>,
    log: &dyn Fn(&str),
) -> Result<(Tree, SourceInfo)> {
    let package = format!("linux-source-{series}");
    let candidates = apt.madison(&package)?;
    let exact = kernel_version.and_then(|v| candidates.iter().find(|c| c.version == v));
    let pick = exact
        .or_else(|| {
            candidates
                .iter()
                .max_by(|a, b| version_cmp(&a.version, &b.version))
        })
        .with_context(|| format!("apt offers no {package} in the lab's suites"))?;
    let version = pick.version.clone();
    let matches = exact.is_some();
    let note = match kernel_version {
        Some(k) if !matches => Some(format!(
            "the kernel is {k}; the selftests are built from {package}={version} ({}), {}",
            pick.suite,
            if series_of(k).as_deref() == Some(series) {
                "apt does not offer the kernel's own version"
            } else {
                "another series (--kselftest-source)"
            }
        )),
        None => Some("the kernel is not a Debian package".into()),
        _ => None,
    };
    if !plain(&package) || !plain(&version.replace(':', "%3a").replace('%', "")) {
        bail!("apt named {package}={version}, which is not a plain file name");
    }
    let id = format!("{package}={version}");
    let dir = cache
        .join("kselftests")
        .join(format!("{package}_{}", version.replace(':', "%3a")));
    let marker = dir.join(".complete");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(&format!("{id}\n")) {
        unpack(cache, apt, &package, &version, series, &dir, log)?;
        std::fs::write(&marker, format!("{id}\n"))
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    let src = dir.join("src");
    let tests = ["mm", "vm"]
        .iter()
        .map(|d| src.join("tools/testing/selftests").join(d))
        .find(|p| p.is_dir())
        .with_context(|| format!("{id} has no tools/testing/selftests/mm or vm"))?;
    let build = dir.join("bin");
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    Ok((
        Tree {
            tests,
            build,
            headers: src.join("usr/include"),
            id,
        },
        SourceInfo {
            package: format!("{package}={version}"),
            kernel_version: kernel_version.map(str::to_string),
            matches,
            note,
        },
    ))
}

/// What of the tree the selftests need: their directory (`mm` since 6.3, `vm` before), the
/// kselftest headers one level up, and `mm/gup_test.h`, which cow.c and gup_longterm.c
/// include by a relative path.
fn members(series: &str) -> Vec<String> {
    let top = format!("linux-source-{series}");
    [
        "tools/testing/selftests/mm",
        "tools/testing/selftests/vm",
        "tools/testing/selftests/kselftest.h",
        "tools/testing/selftests/kselftest_harness.h",
        "mm/gup_test.h",
        "include/uapi",
        "arch/x86/include/uapi",
    ]
    .iter()
    .map(|m| format!("{top}/{m}"))
    .collect()
}

/// Download `package=version` and unpack the selftests' part of its tarball into `dir/src`
/// (through `dir.partial`, renamed when complete).
fn unpack(
    cache: &Path,
    apt: &Apt,
    package: &str,
    version: &str,
    series: &str,
    dir: &Path,
    log: &dyn Fn(&str),
) -> Result<()> {
    log(&format!(
        "fetching {package}={version} for the selftests (signatures checked with {})",
        crate::apt::KEYRING
    ));
    let dl = cache.join("downloads");
    let debs = apt.download(&[(package.to_string(), version.to_string())], &dl)?;
    let deb = &debs[0];
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(dir);
    let src = partial.join("src");
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    // dpkg-deb --fsys-tarfile DEB | tar -xO ./usr/src/linux-source-X.tar.xz | tar -xJ MEMBERS:
    // the 140 MB tarball is never written out, only the few files the selftests need.
    let inner = format!("./usr/src/linux-source-{series}.tar.xz");
    let mut deb_tar = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dpkg-deb (is dpkg installed?)")?;
    let mut xz = Command::new("tar")
        .args(["-xO", "-f", "-"])
        .arg(&inner)
        .stdin(deb_tar.stdout.take().expect("piped"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let out = Command::new("tar")
        .args(["-xJ", "-f", "-", "--strip-components=1", "-C"])
        .arg(&src)
        .args(members(series))
        .stdin(xz.stdout.take().expect("piped"))
        .output()
        .context("running tar -xJ")?;
    let xz_out = xz.wait_with_output()?;
    let deb_out = deb_tar.wait_with_output()?;
    if !deb_out.status.success() || !xz_out.status.success() {
        bail!(
            "unpacking {inner} from {}: {}{}",
            deb.display(),
            String::from_utf8_lossy(&deb_out.stderr).trim(),
            String::from_utf8_lossy(&xz_out.stderr).trim()
        );
    }
    // Either mm or vm is absent from every tree, and tar says so: only a missing header is
    // an error.
    if !src.join("tools/testing/selftests/kselftest.h").exists() {
        bail!(
            "{inner} of {package}={version} has no tools/testing/selftests/kselftest.h: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    install_headers(&src)?;
    std::fs::rename(&partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    let _ = std::fs::remove_file(deb);
    Ok(())
}

/// The tree's user-space API headers in `src/usr/include`, as `make headers_install` makes
/// them (the selftests' `KHDR_INCLUDES`): the host's own are older than the tree (6.12's
/// vm_util.c needs PAGEMAP_SCAN, 6.7) and a test must see the definitions of its kernel.
/// The sed expressions are those of the tree's scripts/headers_install.sh; its unifdef of
/// `__KERNEL__` is left out (the compiler never defines it here).
fn install_headers(src: &Path) -> Result<()> {
    let dest = src.join("usr/include");
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    for from in ["include/uapi/.", "arch/x86/include/uapi/."] {
        let o = Command::new("cp")
            .arg("-a")
            .arg(src.join(from))
            .arg(&dest)
            .output()
            .context("running cp")?;
        if !o.status.success() {
            bail!(
                "copying {from} to {}: {}",
                dest.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    let o = Command::new("find")
        .arg(&dest)
        .args(["-name", "*.h", "-exec", "sed", "-i", "-E"])
        .args([
            "-e",
            r"s/([[:space:](])(__user|__force|__iomem)[[:space:]]/\1/g",
            "-e",
            r"s/__attribute_const__([[:space:]]|$)/\1/g",
            "-e",
            r"s@^#include <linux/compiler(|_types).h>@@",
            "-e",
            r"s/(^|[^a-zA-Z0-9])__packed([^a-zA-Z0-9_]|$)/\1__attribute__((packed))\2/g",
            "-e",
            r"s/(^|[[:space:](])(inline|asm|volatile)([[:space:](]|$)/\1__\2__\3/g",
            "-e",
            r"s@#(ifndef|define|endif[[:space:]]*/[*])[[:space:]]*_UAPI@#\1 @",
            "{}",
            "+",
        ])
        .output()
        .context("running find/sed")?;
    if !o.status.success() {
        bail!(
            "installing the tree's uapi headers into {}: {}",
            dest.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the host's compiler finds liburing (what the selftests' check_config.sh asks),
/// and `local_config.h` in `build` saying so.
fn have_liburing(build: &Path) -> bool {
    let probe = build.join("liburing-probe.c");
    let ok = std::fs::write(
        &probe,
        "#include <sys/types.h>\n#include <liburing.h>\nint func(void) { return 0; }\n",
    )
    .is_ok()
        && Command::new("cc")
            .args(["-c", "-o"])
            .arg(build.join("liburing-probe.o"))
            .arg(&probe)
            .output()
            .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(build.join("liburing-probe.o"));
    let _ = std::fs::remove_file(&probe);
    let text = if ok {
        "#define LOCAL_CONFIG_HAVE_LIBURING 1\n"
    } else {
        "// No liburing support found\n"
    };
    let _ = std::fs::write(build.join("local_config.h"), text);
    ok
}

/// Build one selftest of `tree` with the host's `cc`, as its Makefile would; reuse a binary
/// whose marker holds the same command.
fn build(tree: &Tree, t: &Selftest, liburing: bool) -> Result<PathBuf> {
    let main = tree.tests.join(format!("{}.c", t.name));
    if !main.exists() {
        bail!(
            "{} has no tools/testing/selftests/{}/{}.c (the test is newer than this tree; --kselftest-source SERIES builds it from another)",
            tree.id,
            tree.tests.file_name().map_or("mm".into(), |d| d.to_string_lossy()),
            t.name
        );
    }
    let out = tree.build.join(t.name);
    let mut args: Vec<String> = vec!["-Wall".into(), "-O2".into(), "-I".into()];
    args.push(tree.build.display().to_string());
    // The selftests' directory: newer trees (7.x) include "kselftest.h" without `../`.
    if let Some(up) = tree.tests.parent() {
        args.extend(["-I".into(), up.display().to_string()]);
    }
    args.extend(["-D__EXPORTED_HEADERS__".into(), "-isystem".into()]);
    args.push(tree.headers.display().to_string());
    args.extend(["-o".into(), format!("{}.partial", out.display())]);
    // Sources by their names, compiled in their directory as the Makefile does: gup_longterm
    // makes its `local tmpfile` at `__FILE__ "_tmpfile_XXXXXX"`, which must be relative to
    // the working directory the guest gives it, not a path into the cache.
    args.push(format!("{}.c", t.name));
    // What the Makefile builds every test with: vm_util.c, and thp_settings.c (6.7 to 6.x)
    // or hugepage_settings.c (its name in 7.x) where the tree has it.
    for extra in ["vm_util.c", "thp_settings.c", "hugepage_settings.c"] {
        if tree.tests.join(extra).exists() {
            args.push(extra.into());
        }
    }
    if liburing && t.uses_liburing {
        args.push("-luring".into());
    }
    args.extend(t.libs.iter().map(|l| l.to_string()));
    // The Makefile's LDLIBS.
    args.extend(["-lrt".into(), "-lpthread".into(), "-lm".into()]);
    let marker = tree.build.join(format!(".{}.built", t.name));
    let stamp = format!("{}\ncc {}\n", tree.id, args.join(" "));
    if out.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(&stamp) {
        return Ok(out);
    }
    let _ = std::fs::remove_file(&marker);
    let o = Command::new("cc")
        .args(&args)
        .current_dir(&tree.tests)
        .output()
        .context("running cc (the selftests are built with the host's C compiler)")?;
    let log = tree.build.join(format!("{}.build.log", t.name));
    let _ = std::fs::write(&log, &o.stderr);
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let first: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error") || l.contains("undefined reference"))
            .take(3)
            .collect();
        bail!(
            "building {} from {} failed ({}): {}",
            t.name,
            tree.id,
            log.display(),
            first.join(" | ")
        );
    }
    std::fs::rename(format!("{}.partial", out.display()), &out)?;
    std::fs::write(&marker, stamp)?;
    Ok(out)
}

/// The huge pages the guest reserves for the selftests (`vm.nr_hugepages`).
const HUGE_PAGES: &str = "16";

/// How long one selftest may run in the guest before it is killed.
pub const GUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// The name of a filesystem type by its statfs magic (what gup_longterm decides by).
fn fs_name(path: &Path) -> Option<String> {
    let f = rustix::fs::statfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some(fs_by_magic(f.f_type as u64))
}

fn fs_by_magic(magic: u64) -> String {
    {
        match magic {
            0x0102_1994 => "tmpfs",
            0xEF53 => "ext4",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x958_458f6 => "hugetlbfs",
            0x794c_7630 => "overlayfs",
            0x0102_1997 => "9p",
            _ => return format!("0x{magic:x}"),
        }
        .to_string()
    }
}

/// The line the guest's wrapper prints before the test's output: the filesystem magics
/// (`stat -f -c %t`) of the test's /tmp and working directory, as the test sees them.
const FS_LINE: &str = "# pinstorm-lab fs:";

/// `(tmp, cwd)` filesystem names from the wrapper's line, if it printed one.
fn fs_from_log(text: &str) -> Option<(String, String)> {
    let rest = text.lines().find_map(|l| l.strip_prefix(FS_LINE))?;
    let mut it = rest
        .split_whitespace()
        .map(|h| u64::from_str_radix(h, 16).ok().map(fs_by_magic));
    Some((it.next()??, it.next()??))
}

/// The shell the guest runs a selftest with: its own mount namespace, where `dir` (the
/// test's ext4) is bound on /mnt and /tmp is a fresh tmpfs (glibc's tmpfile() always uses
/// /tmp, which in a guest is an overlay gup_longterm does not know). `$1` is the directory,
/// `$2` the binary's name in it.
const WRAPPER: &str = r##"set -e
mount --bind "$1" /mnt
mount -t tmpfs pinstorm-kselftest-tmp /tmp
cd /mnt
echo "# pinstorm-lab fs: $(stat -f -c %t /tmp) $(stat -f -c %t .)"
exec "./$2""##;

/// In the guest, after the scenario: run each selftest as root with its output in
/// `stage/kselftest-NAME.log`, from a copy on a small ext4 of its own under `work`
/// (gup_longterm's `local tmpfile` lands there: a filesystem on which a R/W long-term pin
/// of a shared mapping must fail) with a tmpfs on /tmp (its `tmpfile`), killed after
/// `timeout`.
pub fn run_in_guest(
    tests: &[GuestSelftest],
    stage: &Path,
    work: &Path,
    timeout: std::time::Duration,
) -> Vec<GuestSelftestRun> {
    if tests.is_empty() {
        return Vec::new();
    }
    let dir = work.join("kselftest");
    let img = work.join("kselftest-ext4.img");
    let mounted = (|| -> Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::File::create(&img)?.set_len(64 << 20)?;
        for (prog, args) in [
            ("mkfs.ext4", vec!["-q", "-F", img.to_str().context("path")?]),
            (
                "mount",
                vec![
                    "-o",
                    "loop",
                    img.to_str().context("path")?,
                    dir.to_str().context("path")?,
                ],
            ),
        ] {
            let o = Command::new(prog).args(&args).output()?;
            if !o.status.success() {
                bail!("{prog}: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
        }
        Ok(())
    })();
    let mount_note = mounted.as_ref().err().map(|e| format!("{e:#}"));
    // A few 2 MiB huge pages, so the hugetlb cases run rather than skip ("need more free
    // huge pages"); the guest is ours and ends after this.
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", HUGE_PAGES);
    let runs = tests
        .iter()
        .map(|t| {
            let mut r = GuestSelftestRun {
                name: t.name.clone(),
                cwd_fs: fs_name(&dir),
                ..GuestSelftestRun::default()
            };
            let log = stage.join(log_name(&t.name));
            let start = std::time::Instant::now();
            let child = std::fs::File::create(&log).and_then(|f| {
                let f2 = f.try_clone()?;
                {
                    use std::io::Write;
                    let mut w = &f;
                    if let Some(n) = &mount_note {
                        let _ =
                            writeln!(w, "# pinstorm-lab: no ext4 for the working directory: {n}");
                    }
                }
                // The binary's name is an allow-listed test name.
                std::fs::copy(&t.binary, dir.join(&t.name))?;
                Command::new("unshare")
                    .args([
                        "-m",
                        "--propagation",
                        "private",
                        "/bin/sh",
                        "-c",
                        WRAPPER,
                        "sh",
                    ])
                    .arg(&dir)
                    .arg(&t.name)
                    .stdin(Stdio::null())
                    .stdout(f)
                    .stderr(f2)
                    .spawn()
            });
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    r.error = Some(format!("starting {}: {e}", t.binary.display()));
                    return r;
                }
            };
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        r.exit_code = st.code();
                        break;
                    }
                    Ok(None) if start.elapsed() >= timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        r.timed_out = true;
                        break;
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(100)),
                    Err(e) => {
                        r.error = Some(format!("waiting for {}: {e}", t.name));
                        break;
                    }
                }
            }
            r.seconds = start.elapsed().as_secs_f64();
            r
        })
        .collect();
    if mounted.is_ok() {
        let _ = Command::new("umount").arg(&dir).output();
    }
    let _ = std::fs::remove_file(&img);
    runs
}

/// One selftest's KTAP output, parsed.
#[derive(Debug, Default, PartialEq)]
pub struct Ktap {
    pub planned: Option<u32>,
    pub cases: Vec<KselftestCase>,
}

/// Parse kselftest KTAP/TAP output: the plan (`1..N`), each `ok N text`/`not ok N text`
/// (with `# SKIP why`, `# XFAIL why`), and the `# [RUN] ...` line before a case (cow.c,
/// gup_longterm.c: the case's real description; the result line only says
/// `Should have worked`). Lines of any other form are ignored.
pub fn parse_ktap(text: &str) -> Ktap {
    let mut k = Ktap::default();
    let mut run: Option<String> = None;
    for line in text.lines().map(str::trim_end) {
        if let Some(n) = line
            .strip_prefix("1..")
            .and_then(|n| n.trim().parse::<u32>().ok())
        {
            k.planned = Some(n);
            continue;
        }
        if let Some(r) = line.strip_prefix("# [RUN] ") {
            run = Some(r.trim().to_string());
            continue;
        }
        let (failed, rest) = if let Some(r) = line.strip_prefix("not ok ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (false, r)
        } else {
            continue;
        };
        let (num, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(number) = num.parse::<u32>() else {
            continue;
        };
        let (message, directive) = match text
            .split_once(" # ")
            .or_else(|| text.strip_prefix("# ").map(|d| ("", d)))
        {
            Some((m, d)) => (m.trim(), Some(d.trim())),
            None => (text.trim(), None),
        };
        // kselftest_harness.h names the case before the directive
        // (`ok 2 migration.shared_anon # SKIP why`); ksft_test_result_skip() does not.
        let name = message.to_string();
        let upper = directive.map(|d| d.to_ascii_uppercase());
        let (result, message) = match upper.as_deref() {
            Some(d) if d.starts_with("SKIP") => ("skip", directive.unwrap()[4..].trim()),
            Some(d) if d.starts_with("XFAIL") => ("xfail", directive.unwrap()[5..].trim()),
            _ if failed => ("fail", message),
            _ => ("ok", message),
        };
        k.cases.push(KselftestCase {
            number,
            result: result.into(),
            description: run.take().unwrap_or_else(|| {
                if name.is_empty() {
                    message.to_string()
                } else {
                    name
                }
            }),
            message: message.to_string(),
        });
    }
    k
}

/// The result's record of each prepared selftest: notrun with the reason, or what the
/// guest's run and log say.
pub(crate) fn records(
    prepared: &[Prepared],
    runs: &[GuestSelftestRun],
    stage: &Path,
) -> Vec<KselftestRecord> {
    prepared
        .iter()
        .map(|p| {
            let mut r = KselftestRecord {
                name: p.name.clone(),
                liburing: p.liburing,
                ..KselftestRecord::default()
            };
            if let Some(s) = &p.source {
                r.source = Some(s.package.clone());
                r.kernel_version = s.kernel_version.clone();
                r.source_matches = s.matches;
                r.source_note = s.note.clone();
            }
            if let Err(why) = &p.binary {
                r.outcome = "notrun".into();
                r.reason = Some(why.clone());
                return r;
            }
            let Some(run) = runs.iter().find(|g| g.name == p.name) else {
                r.outcome = "notrun".into();
                r.reason = Some(
                    "the guest did not run it (it ended before, or returned no report)".into(),
                );
                return r;
            };
            r.exit_code = run.exit_code;
            r.timed_out = run.timed_out;
            r.seconds = Some(run.seconds);
            r.tmp_fs = run.tmp_fs.clone();
            r.cwd_fs = run.cwd_fs.clone();
            if let Some(e) = &run.error {
                r.outcome = "notrun".into();
                r.reason = Some(e.clone());
                return r;
            }
            let text = std::fs::read_to_string(stage.join(log_name(&p.name))).unwrap_or_default();
            r.log = Some(log_name(&p.name));
            if let Some((tmp, cwd)) = fs_from_log(&text) {
                r.tmp_fs = Some(tmp);
                r.cwd_fs = Some(cwd);
            }
            let k = parse_ktap(&text);
            r.planned = k.planned;
            r.cases = k.cases;
            let failed = r.count("fail");
            let why = if run.timed_out {
                Some(format!("killed after {:.0} s (timeout)", run.seconds))
            } else if r.planned.is_none() {
                Some("no KTAP plan in its output".to_string())
            } else if r.planned != Some(r.cases.len() as u32) {
                Some(format!(
                    "planned {} cases, reported {}",
                    r.planned.unwrap_or(0),
                    r.cases.len()
                ))
            } else if failed == 0 && run.exit_code != Some(0) && run.exit_code != Some(4) {
                // 4 is KSFT_SKIP: every case skipped.
                Some(format!(
                    "exit status {:?} with no failed case",
                    run.exit_code
                ))
            } else {
                None
            };
            r.outcome = if failed > 0 || why.is_some() {
                "fail"
            } else {
                "ok"
            }
            .into();
            r.reason = why;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gup_longterm's output on a 6.1 guest (the 6.12 tree's test; TAP of ksft_print_*).
    const GUP_LONGTERM: &str = "\
TAP version 13
1..5
# [INFO] detected hugetlb page size: 2048 KiB
# [RUN] R/W longterm GUP pin in MAP_SHARED file mapping ... with memfd
ok 1 # SKIP gup_test not available
# [RUN] io_uring fixed buffer with MAP_SHARED file mapping ... with memfd
ok 2 Should have worked
# [RUN] io_uring fixed buffer with MAP_SHARED file mapping ... with local tmpfile
ok 3 Should have failed
# [RUN] io_uring fixed buffer with MAP_PRIVATE file mapping ... with local tmpfile
not ok 4 Should have failed
ok 5 # xfail not this time
# Totals: pass:2 fail:1 xfail:1 xpass:0 skip:1 error:0
";

    #[test]
    fn ktap_cases_take_their_description_from_the_run_line_before_them() {
        let k = parse_ktap(GUP_LONGTERM);
        assert_eq!(k.planned, Some(5));
        let r: Vec<(&str, &str, &str)> = k
            .cases
            .iter()
            .map(|c| {
                (
                    c.result.as_str(),
                    c.description.as_str(),
                    c.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            r,
            [
                (
                    "skip",
                    "R/W longterm GUP pin in MAP_SHARED file mapping ... with memfd",
                    "gup_test not available"
                ),
                (
                    "ok",
                    "io_uring fixed buffer with MAP_SHARED file mapping ... with memfd",
                    "Should have worked"
                ),
                (
                    "ok",
                    "io_uring fixed buffer with MAP_SHARED file mapping ... with local tmpfile",
                    "Should have failed"
                ),
                (
                    "fail",
                    "io_uring fixed buffer with MAP_PRIVATE file mapping ... with local tmpfile",
                    "Should have failed"
                ),
                ("xfail", "not this time", "not this time"),
            ]
        );
    }

    #[test]
    fn kselftest_harness_lines_parse_too() {
        let k = parse_ktap(
            "TAP version 13\n1..2\n# Starting 2 tests from 1 test cases.\n#  RUN           migration.private_anon ...\n#            OK  migration.private_anon\nok 1 migration.private_anon\n#  SKIP      Not enough threads or NUMA nodes available\nok 2 migration.shared_anon # SKIP Not enough threads or NUMA nodes available\n",
        );
        assert_eq!(k.planned, Some(2));
        assert_eq!(k.cases[0].result, "ok");
        assert_eq!(k.cases[0].description, "migration.private_anon");
        assert_eq!(k.cases[1].result, "skip");
        assert_eq!(k.cases[1].description, "migration.shared_anon");
        assert_eq!(
            k.cases[1].message,
            "Not enough threads or NUMA nodes available"
        );
    }

    #[test]
    fn the_wrappers_filesystem_line_names_what_the_test_saw() {
        let t = "# pinstorm-lab fs: 1021994 ef53\nTAP version 13\n";
        assert_eq!(fs_from_log(t), Some(("tmpfs".into(), "ext4".into())));
        assert_eq!(fs_from_log("TAP version 13\n"), None);
        assert_eq!(fs_by_magic(0x794c7630), "overlayfs");
    }

    #[test]
    fn only_allow_listed_selftests_are_accepted() {
        assert_eq!(
            parse_names("gup_longterm, cow,gup_longterm").unwrap(),
            ["gup_longterm", "cow"]
        );
        assert!(parse_names("../../bin/sh")
            .unwrap_err()
            .contains("unknown kselftest"));
        assert!(parse_names("cow;rm").is_err());
        assert!(parse_names(",").is_err());
        assert!(valid_series("6.12") && valid_series("7.2"));
        for bad in ["6", "6.12.1", "6.x", "", "../6.1", "6.1 "] {
            assert!(!valid_series(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_source_series_comes_from_the_kernels_debian_version() {
        assert_eq!(series_of("6.1.192-3").as_deref(), Some("6.1"));
        assert_eq!(series_of("6.12.117-1~deb12u1").as_deref(), Some("6.12"));
        assert_eq!(series_of("7.2.13-1").as_deref(), Some("7.2"));
        assert_eq!(series_of("garbage"), None);
        let k = Kernel {
            spec: "deb:6.1".into(),
            release: "6.1.0-57-amd64".into(),
            boot: "/k".into(),
            pvh: None,
            source: vec!["debian:linux-image-6.1.0-57-amd64=6.1.192-3".into()],
            cached: true,
        };
        assert_eq!(debian_version(&k).as_deref(), Some("6.1.192-3"));
        assert!(plain("linux-source-6.12") && !plain("a/b") && !plain(".."));
    }

    #[test]
    fn a_selftest_that_did_not_build_or_ended_badly_is_never_a_pass() {
        let stage = std::env::temp_dir().join(format!("pinstorm-kst-{}", std::process::id()));
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join(log_name("gup_longterm")), GUP_LONGTERM).unwrap();
        std::fs::write(
            stage.join(log_name("cow")),
            "TAP version 13\n1..3\nok 1 x\n",
        )
        .unwrap();
        let prep = |name: &str, binary: std::result::Result<PathBuf, String>| Prepared {
            name: name.into(),
            source: None,
            liburing: true,
            binary,
        };
        let prepared = [
            prep("migration", Err("building migration failed: numa.h".into())),
            prep("gup_longterm", Ok("/b/gup_longterm".into())),
            prep("cow", Ok("/b/cow".into())),
        ];
        let runs = [
            GuestSelftestRun {
                name: "gup_longterm".into(),
                exit_code: Some(1),
                seconds: 2.0,
                ..GuestSelftestRun::default()
            },
            GuestSelftestRun {
                name: "cow".into(),
                exit_code: None,
                timed_out: true,
                seconds: 120.0,
                ..GuestSelftestRun::default()
            },
        ];
        let r = records(&prepared, &runs, &stage);
        assert_eq!(r[0].outcome, "notrun");
        assert!(r[0].reason.as_deref().unwrap().contains("numa.h"));
        assert_eq!(r[1].outcome, "fail", "a failed case");
        assert_eq!(r[1].count("ok"), 2);
        assert_eq!(r[2].outcome, "fail");
        assert!(
            r[2].reason.as_deref().unwrap().contains("timeout"),
            "{:?}",
            r[2]
        );
        let _ = std::fs::remove_dir_all(&stage);
    }
}
