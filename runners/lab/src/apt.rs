//! A private apt configuration for fetching Debian kernel packages into the lab cache.
//!
//! Nothing is installed on the host and the host's apt state is never touched: the
//! configuration (sources, lists, archives, status) lives entirely under `CACHE/apt`, and
//! `APT_CONFIG` points apt at it so the host's `/etc/apt/apt.conf.d` is not read either.
//! Signatures are checked with Debian's archive keyring as always; for sid only the
//! `Valid-Until` date check is relaxed (its Release file can look expired to a machine
//! whose clock is ahead), never the signature.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// Debian's archive keyring, from the `debian-archive-keyring` package.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// How old the package lists may be before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct Apt {
    dir: PathBuf,
    config: PathBuf,
}

/// One version of a package, as `apt-cache madison` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub version: String,
    /// e.g. `sid/main`, `bookworm-security/main`.
    pub suite: String,
}

impl Apt {
    /// Set up (or reuse) the private configuration under `dir` (absolute, checked by the
    /// caller).
    pub fn new(dir: &Path, mirror: &str, security_mirror: &str) -> Result<Apt> {
        for d in [
            "lists/partial",
            "archives/partial",
            "cache",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
        ] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        if !Path::new(KEYRING).exists() {
            bail!(
                "{KEYRING} is missing: install the debian-archive-keyring package (apt verifies kernel packages with it; pinstorm never turns that off)"
            );
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        let signed = format!("signed-by={KEYRING}");
        let sources = format!(
            "# Written by pinstorm lab: where Debian kernel packages come from.\n\
             deb [{signed}] {mirror} bookworm main\n\
             deb [{signed}] {mirror} bookworm-updates main\n\
             deb [{signed}] {security_mirror} bookworm-security main\n\
             deb [{signed}] {mirror} trixie main\n\
             deb [{signed}] {security_mirror} trixie-security main\n\
             deb [{signed} check-valid-until=no] {mirror} sid main\n"
        );
        let src_path = dir.join("etc/sources.list");
        write_if_changed(&src_path, &sources)?;
        let d = dir.display();
        let config = format!(
            "// Written by pinstorm lab: a private apt that touches nothing outside {d}.\n\
             Dir::Etc \"{d}/etc\";\n\
             Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
             Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             Dir::State \"{d}\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Cache::archives \"{d}/archives\";\n\
             Dir::Log \"{d}/log\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n"
        );
        let config_path = dir.join("apt.conf");
        write_if_changed(&config_path, &config)?;
        Ok(Apt {
            dir: dir.to_path_buf(),
            config: config_path,
        })
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        // apt hands gpgv its configuration through a file in $TMPDIR: keep that in the
        // cache too, so a lab confined to its cache (tests/lab.rs) can verify signatures.
        let tmp = self.dir.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        c.env("APT_CONFIG", &self.config)
            .env("TMPDIR", &tmp)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// Whether package lists from an earlier update are there.
    pub fn has_lists(&self) -> bool {
        self.lists_stamp().exists()
    }

    fn lists_stamp(&self) -> PathBuf {
        self.dir.join("lists.updated")
    }

    /// `apt-get update` unless the lists are younger than a day (or `force`). Returns
    /// whether anything was fetched.
    pub fn update(&self, force: bool) -> Result<bool> {
        let fresh = std::fs::metadata(self.lists_stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(false);
        }
        let out = self
            .command("apt-get")
            .args(["-q", "--error-on=any", "update"])
            .output()
            .context("running apt-get update (is apt installed?)")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("NO_PUBKEY") || stderr.contains("not signed") {
            bail!(
                "apt-get update with the lab's private configuration ({}) failed:\n{}",
                self.config.display(),
                stderr.trim()
            );
        }
        std::fs::write(self.lists_stamp(), "")?;
        Ok(true)
    }

    /// Every version of `package` the configured suites offer, newest first.
    pub fn madison(&self, package: &str) -> Result<Vec<Candidate>> {
        let out = self
            .command("apt-cache")
            .args(["madison", package])
            .output()
            .context("running apt-cache madison")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut v = parse_madison(&text, package);
        v.sort_by(|a, b| version_cmp(&b.version, &a.version));
        Ok(v)
    }

    /// The `Depends` of `package=version`, package names only (alternatives flattened).
    pub fn depends(&self, package: &str, version: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["show", &format!("{package}={version}")])
            .output()
            .context("running apt-cache show")?;
        if !out.status.success() {
            bail!(
                "apt-cache show {package}={version}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(parse_depends(&text))
    }

    /// Download `pkg=version` for each entry into `dest` (apt checks each file's hash against
    /// the signed index). Returns the `.deb` paths.
    pub fn download(&self, pkgs: &[(String, String)], dest: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dest)?;
        let mut c = self.command("apt-get");
        c.current_dir(dest).args(["-q", "download"]);
        for (p, v) in pkgs {
            c.arg(format!("{p}={v}"));
        }
        let out = c.output().context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {}: {}",
                pkgs.iter()
                    .map(|(p, v)| format!("{p}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut debs = Vec::new();
        for (p, v) in pkgs {
            // apt escapes ':' in versions as %3a in file names; linux-source is arch all.
            let v = v.replace(':', "%3a");
            let path = ["amd64", "all"]
                .iter()
                .map(|arch| dest.join(format!("{p}_{v}_{arch}.deb")))
                .find(|p| p.exists())
                .unwrap_or_else(|| dest.join(format!("{p}_{v}_amd64.deb")));
            if !path.exists() {
                bail!(
                    "apt-get download said it fetched {p}={v} but {} is missing",
                    path.display()
                );
            }
            debs.push(path);
        }
        Ok(debs)
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn parse_madison(text: &str, package: &str) -> Vec<Candidate> {
    let mut v = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 3 || cols[0] != package {
            continue;
        }
        // "http://deb.debian.org/debian sid/main amd64 Packages"
        let suite = cols[2].split_whitespace().nth(1).unwrap_or("").to_string();
        let c = Candidate {
            version: cols[1].to_string(),
            suite,
        };
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

pub fn parse_depends(show: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in show.lines() {
        if let Some(rest) = line.strip_prefix("Depends:") {
            for alt in rest.split([',', '|']) {
                let name = alt.split_whitespace().next().unwrap_or("");
                if !name.is_empty() && !out.iter().any(|n| n == name) {
                    out.push(name.to_string());
                }
            }
            break;
        }
    }
    out
}

/// Debian version order, enough for kernel versions: compare numeric and non-numeric runs,
/// with `~` sorting before everything (as dpkg does).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn split(s: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match s.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, s),
        };
        match rest.rsplit_once('-') {
            Some((u, d)) => (epoch, u, d),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<char>) -> i32 {
        match c {
            None => 0,
            Some('~') => -1,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn cmp_part(mut a: &str, mut b: &str) -> Ordering {
        while !a.is_empty() || !b.is_empty() {
            let na = a.find(|c: char| c.is_ascii_digit()).unwrap_or(a.len());
            let nb = b.find(|c: char| c.is_ascii_digit()).unwrap_or(b.len());
            let (sa, sb) = (&a[..na], &b[..nb]);
            let mut ia = sa.chars();
            let mut ib = sb.chars();
            loop {
                let (ca, cb) = (ia.next(), ib.next());
                if ca.is_none() && cb.is_none() {
                    break;
                }
                match order(ca).cmp(&order(cb)) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            a = &a[na..];
            b = &b[nb..];
            let da = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
            let db = b.find(|c: char| !c.is_ascii_digit()).unwrap_or(b.len());
            let va: u128 = a[..da].parse().unwrap_or(0);
            let vb: u128 = b[..db].parse().unwrap_or(0);
            match va.cmp(&vb) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[da..];
            b = &b[db..];
        }
        Ordering::Equal
    }
    let (ea, ua, da) = split(a);
    let (eb, ub, db) = split(b);
    ea.cmp(&eb)
        .then_with(|| cmp_part(ua, ub))
        .then_with(|| cmp_part(da, db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn debian_versions_order_like_dpkg() {
        assert_eq!(version_cmp("6.1.192-2", "6.1.176-1"), Ordering::Greater);
        assert_eq!(
            version_cmp("6.12.95-1~bpo12+1", "6.12.95-1"),
            Ordering::Less
        );
        assert_eq!(version_cmp("7.2.13-1", "6.12.107-1"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.9-1", "6.1.10-1"), Ordering::Less);
        assert_eq!(version_cmp("1:1.0-1", "2.0-1"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0-1", "6.1.0-1"), Ordering::Equal);
    }

    #[test]
    fn madison_and_depends_are_parsed() {
        let m = "linux-image-amd64 |   7.2.13-1 | http://deb.debian.org/debian sid/main amd64 Packages\n\
                 linux-image-amd64 | 6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
                 other | 1 | x y z\n";
        let v = parse_madison(m, "linux-image-amd64");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].suite, "sid/main");
        assert_eq!(v[1].version, "6.1.192-2");
        let show = "Package: linux-image-7.2.13+deb14-amd64\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\nDescription: x\n";
        let d = parse_depends(show);
        assert_eq!(
            d,
            vec![
                "dracut",
                "initramfs-tools",
                "linux-binary-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64"
            ]
        );
    }
}
