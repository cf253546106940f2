//! The uncompressed kernel of a Debian image, for QEMU's PVH entry.
//!
//! A bzImage under TCG spends about five seconds before the kernel's first line: the
//! firmware's real-mode boot and the kernel decompressing itself, both emulated (measured:
//! the 6.1 image's first line after 5.5 s, its `vmlinux` after 0.4 s). QEMU boots an ELF
//! `vmlinux` that carries the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`, CONFIG_PVH, which
//! Debian's kernels set) directly, with the same command line and initramfs. So the lab
//! decompresses each unpacked kernel's payload once, with the host's own xz, zstd or gzip,
//! checks that the result is the ELF the image says (its length) and has the note, and
//! gives QEMU that file. Nothing here executes the kernel's code: the bzImage's setup header
//! says where the payload is.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::decompress::{decompress, Codec, Input};

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The compressed kernel inside a bzImage (x86 boot protocol 2.08 or later:
/// `payload_offset` and `payload_length` in the setup header), its codec, and the
/// uncompressed length the build appended to it (xz and zstd; gzip carries its own).
pub fn payload(image: &[u8]) -> Result<(Codec, &[u8], Option<u32>)> {
    ensure!(
        image.get(0x202..0x206) == Some(b"HdrS"),
        "not a bzImage (no HdrS setup header)"
    );
    let version = u16_at(image, 0x206).context("truncated setup header")?;
    ensure!(
        version >= 0x208,
        "boot protocol {:x}.{:02x} has no payload fields",
        version >> 8,
        version & 0xff
    );
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start =
        (setup_sects + 1) * 512 + u32_at(image, 0x248).context("no payload_offset")? as usize;
    let len = u32_at(image, 0x24c).context("no payload_length")? as usize;
    let p = image
        .get(start..start + len)
        .context("the payload runs past the end of the image")?;
    let codec = Codec::of_magic(p).context("the payload is not xz, zstd or gzip")?;
    Ok(match codec {
        Codec::Gzip => (codec, p, None),
        _ => {
            ensure!(p.len() > 4, "payload too short");
            let (data, size) = p.split_at(p.len() - 4);
            (codec, data, u32_at(size, 0))
        }
    })
}

/// Whether an ELF64 little-endian file has the PVH entry note (type 18 of owner "Xen").
pub fn has_pvh_note(elf: &[u8]) -> bool {
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38))
    else {
        return false;
    };
    (0..phnum as usize).any(|i| {
        let ph = phoff as usize + i * phentsize as usize;
        // PT_NOTE
        if u32_at(elf, ph) != Some(4) {
            return false;
        }
        let (Some(off), Some(size)) = (u64_at(elf, ph + 8), u64_at(elf, ph + 32)) else {
            return false;
        };
        let Some(notes) = elf.get(off as usize..(off as usize).saturating_add(size as usize))
        else {
            return false;
        };
        let mut at = 0;
        let align = |n: usize| (n + 3) & !3;
        while let (Some(namesz), Some(descsz), Some(kind)) = (
            u32_at(notes, at),
            u32_at(notes, at + 4),
            u32_at(notes, at + 8),
        ) {
            let name = notes.get(at + 12..at + 12 + namesz as usize);
            if kind == 18 && name == Some(b"Xen\0") {
                return true;
            }
            at += 12 + align(namesz as usize) + align(descsz as usize);
        }
        false
    })
}

/// The PVH `vmlinux` beside a Debian image (`boot/vmlinux-RELEASE`), made once: decompressed
/// into a partial file, checked (length, ELF, note) and renamed, so a lab killed halfway
/// leaves no file that looks finished. Returns the path and whether it was made now.
pub fn prepare(image: &Path, out: &Path) -> Result<(PathBuf, bool)> {
    if out.is_file() {
        return Ok((out.to_path_buf(), false));
    }
    let bz = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let (codec, data, size) = payload(&bz).with_context(|| image.display().to_string())?;
    decompress(codec, Input::Bytes(data), out, |partial| {
        let elf = std::fs::read(partial)?;
        if let Some(n) = size {
            ensure!(
                elf.len() == n as usize,
                "decompressed {} bytes, the image says {n}",
                elf.len()
            );
        }
        ensure!(
            has_pvh_note(&elf),
            "the kernel has no PVH entry note (CONFIG_PVH)"
        );
        Ok(())
    })?;
    Ok((out.to_path_buf(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage's first bytes with a setup header pointing at `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(payload);
        b.extend_from_slice(b"trailing setup data");
        b
    }

    #[test]
    fn the_payload_is_found_by_the_setup_header_with_its_appended_size() {
        let mut p = b"\xfd7zXZ\x00compressed".to_vec();
        p.extend_from_slice(&1234u32.to_le_bytes());
        let b = bzimage(&p);
        let (codec, data, size) = payload(&b).unwrap();
        assert_eq!(codec, Codec::Xz);
        assert_eq!(data, b"\xfd7zXZ\x00compressed");
        assert_eq!(size, Some(1234));
        let g = bzimage(b"\x1f\x8bgzip data");
        assert_eq!(
            payload(&g).unwrap(),
            (Codec::Gzip, &b"\x1f\x8bgzip data"[..], None)
        );
    }

    #[test]
    fn images_that_are_not_bzimages_or_whose_payload_is_odd_are_refused() {
        assert!(payload(b"\x7fELF").is_err());
        let mut old = bzimage(b"\x1f\x8b..");
        old[0x206..0x208].copy_from_slice(&0x206u16.to_le_bytes());
        assert!(format!("{:#}", payload(&old).unwrap_err()).contains("2.06"));
        assert!(
            payload(&bzimage(b"BZh91AY&SY")).is_err(),
            "bzip2 is not handled"
        );
        let mut long = bzimage(b"\x1f\x8b..");
        long[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&long).is_err());
    }

    /// An ELF64 with one PT_NOTE segment holding `notes`.
    fn elf(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut seg = Vec::new();
        for (name, kind) in notes {
            seg.extend_from_slice(&(name.len() as u32).to_le_bytes());
            seg.extend_from_slice(&4u32.to_le_bytes());
            seg.extend_from_slice(&kind.to_le_bytes());
            seg.extend_from_slice(name);
            seg.resize(seg.len().div_ceil(4) * 4, 0);
            seg.extend_from_slice(&[1, 2, 3, 4]);
        }
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes());
        e[72..80].copy_from_slice(&120u64.to_le_bytes());
        e[96..104].copy_from_slice(&(seg.len() as u64).to_le_bytes());
        e.extend_from_slice(&seg);
        e
    }

    #[test]
    fn the_pvh_note_is_found_only_under_its_owner_and_type() {
        assert!(has_pvh_note(&elf(&[(b"GNU\0", 3), (b"Xen\0", 18)])));
        assert!(!has_pvh_note(&elf(&[(b"Xen\0", 6), (b"GNU\0", 18)])));
        assert!(!has_pvh_note(b"\x7fELF\x01\x01 a 32-bit one"));
        let mut cut = elf(&[(b"Xen\0", 18)]);
        cut.truncate(130);
        assert!(!has_pvh_note(&cut));
    }

    #[test]
    fn a_decompressed_kernel_is_checked_and_only_a_finished_one_is_kept() {
        let dir = std::env::temp_dir().join(format!("pinstorm-pvh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gz = crate::decompress::gzip;
        let good = elf(&[(b"Xen\0", 18)]);
        std::fs::write(dir.join("vmlinuz"), bzimage(&gz(&good))).unwrap();
        let out = dir.join("vmlinux");
        let (p, made) = prepare(&dir.join("vmlinuz"), &out).unwrap();
        assert!(made);
        assert_eq!(std::fs::read(&p).unwrap(), good);
        assert!(!prepare(&dir.join("vmlinuz"), &out).unwrap().1, "made once");

        std::fs::write(dir.join("nopvh"), bzimage(&gz(&elf(&[(b"Xen\0", 6)])))).unwrap();
        let e = prepare(&dir.join("nopvh"), &dir.join("nopvh.elf")).unwrap_err();
        assert!(format!("{e:#}").contains("PVH"), "{e:#}");
        assert!(!dir.join("nopvh.elf").exists() && !dir.join("nopvh.elf.partial").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
