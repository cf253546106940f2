//! Decompression with the host's own xz, zstd or gzip, into a file that only appears once
//! it is whole: the lab's modules and the PVH kernel of an unpacked Debian kernel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A compression format, and the host tool that decompresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Xz,
    Zstd,
    Gzip,
}

impl Codec {
    pub fn tool(self) -> &'static str {
        match self {
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    /// By the data's magic bytes.
    pub fn of_magic(data: &[u8]) -> Option<Codec> {
        if data.starts_with(b"\xfd7zXZ\x00") {
            Some(Codec::Xz)
        } else if data.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Codec::Zstd)
        } else if data.starts_with(b"\x1f\x8b") {
            Some(Codec::Gzip)
        } else {
            None
        }
    }

    /// By a file name's suffix (`xz`, `zst`, `gz`).
    pub fn of_suffix(suffix: &str) -> Option<Codec> {
        match suffix {
            "xz" => Some(Codec::Xz),
            "zst" => Some(Codec::Zstd),
            "gz" => Some(Codec::Gzip),
            _ => None,
        }
    }
}

/// What is decompressed: a file, or bytes in memory.
pub enum Input<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// Decompress `input` into `dest`: written as `DEST.partial`, kept only when the tool
/// succeeded and `check` accepts the partial file, then renamed; otherwise removed.
pub fn decompress(
    codec: Codec,
    input: Input,
    dest: &Path,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let tool = codec.tool();
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut cmd = Command::new(tool);
    cmd.arg("-dc").stdout(out).stderr(Stdio::piped());
    let (data, what) = match input {
        Input::File(p) => {
            cmd.arg(p).stdin(Stdio::null());
            (None, p.display().to_string())
        }
        Input::Bytes(b) => {
            cmd.stdin(Stdio::piped());
            (Some(b), format!("{} bytes", b.len()))
        }
    };
    let run = || -> Result<()> {
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {tool} (to decompress {what})"))?;
        let fed = match (data, child.stdin.take()) {
            (Some(b), Some(mut stdin)) => stdin.write_all(b),
            _ => Ok(()),
        };
        let done = child.wait_with_output()?;
        fed.context("feeding the compressed data")?;
        if !done.status.success() {
            bail!(
                "{tool} -dc {what}: {}: {}",
                done.status,
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
        check(&partial)
    };
    if let Err(e) = run() {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dest)?;
    Ok(())
}

/// `data` compressed by the host's gzip, for tests that need a real compressed input.
#[cfg(test)]
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut c = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    c.wait_with_output().unwrap().stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_are_known_by_magic_and_by_suffix() {
        assert_eq!(Codec::of_magic(b"\xfd7zXZ\x00..."), Some(Codec::Xz));
        assert_eq!(Codec::of_magic(b"\x28\xb5\x2f\xfd."), Some(Codec::Zstd));
        assert_eq!(Codec::of_magic(b"\x1f\x8b."), Some(Codec::Gzip));
        assert_eq!(Codec::of_magic(b"BZh9"), None);
        assert_eq!(Codec::of_suffix("zst"), Some(Codec::Zstd));
        assert_eq!(Codec::of_suffix("bz2"), None);
    }

    #[test]
    fn only_a_whole_checked_file_is_kept() {
        let dir = std::env::temp_dir().join(format!("pinstorm-decompress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gz = gzip(b"hello");
        std::fs::write(dir.join("a.gz"), &gz).unwrap();

        decompress(
            Codec::Gzip,
            Input::File(&dir.join("a.gz")),
            &dir.join("a"),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"hello");
        decompress(Codec::Gzip, Input::Bytes(&gz), &dir.join("b"), |_| Ok(())).unwrap();
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"hello");

        let refused = decompress(Codec::Gzip, Input::Bytes(&gz), &dir.join("c"), |_| {
            bail!("no")
        });
        assert!(refused.is_err());
        let broken = decompress(Codec::Xz, Input::Bytes(&gz), &dir.join("d"), |_| Ok(()));
        assert!(format!("{:#}", broken.unwrap_err()).contains("xz -dc"));
        for gone in ["c", "c.partial", "d", "d.partial"] {
            assert!(!dir.join(gone).exists(), "{gone}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
