//! The lab's own initramfs, in place of virtme-ng's: the same job (load the 9p and virtio
//! modules, mount the host's root read-only over 9p, switch to it and run `init=`), plus the
//! modules the guest's set-up needs, loaded from the initramfs in the background from its
//! first instruction on.
//!
//! Why: under TCG the lab's set-up waited for its modules. Loaded from the 9p root by the
//! lab's init, they started only after the initramfs and the switch to the root (about 5.5 s
//! into a 7.2 guest) and every byte came over 9p (xfs.ko, 9.6 MB, took about 1 s to read);
//! the set-up could start only at 12-15 s. From the initramfs they start about 2 s earlier
//! and come from memory (QEMU loads the initrd with the kernel).
//!
//! virtme-ng gives QEMU its initramfs as `-initrd`; the lab's comes later on the command
//! line, and QEMU keeps the last. The loaders keep their module files on a tmpfs mounted in
//! the initramfs: `switch_root` deletes the initramfs's own files but not another
//! filesystem, and the loaders, still rooted there, see it. They run under the names
//! [`crate::guest_init::loader_name`] gives, which the agent waits for.

use std::io::Write;
use std::path::Path;

use crate::guest_init::{insmod_body, loader_line, EarlyGroup, BUSYBOX};

/// The 9p mount virtme-ng's initramfs makes of the host's root (`virtme/mkinitramfs.py`).
const ROOT_MOUNT: &str =
    "-t 9p -o ro,version=9p2000.L,trans=virtio,access=any,msize=524288 /dev/root /newroot";

/// A file name that is safe in the script and in the archive: what a module's file is
/// called in `modules.dep`, uncompressed.
fn plain_module_file(name: &str) -> bool {
    name.ends_with(".ko")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// One file of the archive.
enum Entry {
    Dir(String),
    CharDev(&'static str, u32, u32),
    File(String, u32, Vec<u8>),
}

/// The archive's path of the `i`-th (0-based) file `path` of a list: numbered so the
/// order is visible in the guest too.
fn archive_name(dir: &str, i: usize, path: &str) -> Result<String, String> {
    let base = path.rsplit('/').next().unwrap_or(path);
    if !plain_module_file(base) {
        return Err(format!(
            "{path} is not an uncompressed module file busybox can insmod"
        ));
    }
    Ok(format!("{dir}/{:02}-{base}", i + 1))
}

/// Quote for the script: the names are [`plain_module_file`]s under fixed directories.
fn q(s: &str) -> String {
    format!("'{s}'")
}

/// Build the archive at `out` (written as `out.partial` and renamed): busybox from the
/// host, the `boot` module files (the 9p root's, in load order), each early group's files
/// (in load order), and the init script. Err says why it cannot (then the guest boots with
/// virtme-ng's initramfs and the lab's init loads the modules).
pub fn build(
    out: &Path,
    busybox: &Path,
    boot: &[String],
    groups: &[EarlyGroup],
) -> Result<(), String> {
    if boot.is_empty() {
        return Err("no 9p modules found in modules.dep".into());
    }
    let busybox = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let mut entries: Vec<Entry> = [
        "bin",
        "dev",
        "proc",
        "newroot",
        "lab",
        "lab-files",
        "modules",
    ]
    .into_iter()
    .map(|d| Entry::Dir(d.into()))
    .collect();
    entries.extend([
        // The kernel opens it as init's stdin, stdout and stderr.
        Entry::CharDev("dev/console", 5, 1),
        // The loaders' output goes there.
        Entry::CharDev("dev/null", 1, 3),
        Entry::File("bin/busybox".into(), 0o755, busybox),
    ]);
    let mut boot_names = Vec::new();
    for (i, f) in boot.iter().enumerate() {
        let name = archive_name("modules", i, f)?;
        entries.push(Entry::File(name.clone(), 0o644, read(f)?));
        boot_names.push(name);
    }
    let mut loaders = String::new();
    for g in groups {
        let files = g
            .files
            .as_ref()
            .ok_or_else(|| format!("the {} modules' files are not known", g.tag))?;
        if files.is_empty() {
            // Built in, all of them: nothing to load.
            continue;
        }
        let dir = format!("lab-files/{}", g.tag);
        if !g.tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("group tag {:?}", g.tag));
        }
        entries.push(Entry::Dir(dir.clone()));
        let mut in_guest = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let name = archive_name(&dir, i, f)?;
            entries.push(Entry::File(name.clone(), 0o644, read(f)?));
            // Where the loader finds it: on the tmpfs at /lab.
            in_guest.push(format!("/lab/{}", &name["lab-files/".len()..]));
        }
        loaders.push_str("    ");
        loaders.push_str(&loader_line(
            "$B sh",
            &insmod_body("/lab/busybox"),
            g.tag,
            &in_guest,
        ));
    }
    let boot_list: Vec<String> = boot_names.iter().map(|n| q(&format!("/{n}"))).collect();
    // The loaders keep busybox and their files on a tmpfs: switch_root deletes this
    // filesystem's files, not another's. No modules to load (a scenario that needs none, or
    // all built in): no loaders.
    let loaders = if loaders.is_empty() {
        String::new()
    } else {
        format!(
            "if $B mount -t tmpfs -o mode=0700 pinstorm-lab-modules /lab &&\n\
             \x20   $B cp -R /lab-files/* $B /lab/; then\n\
             {loaders}\
             \x20   say 'modules loading in the background; switching to the host root'\n\
             else\n\
             \x20   say 'could not copy the modules to a tmpfs; the agent loads them'\n\
             fi\n"
        )
    };
    // The 9p root's modules first, in the foreground: a module load waits for the one in
    // progress at some steps, and xfs's takes seconds under TCG (loaded beside it, the root's
    // mount came 3 s late). The set-up's modules start once the root is mounted.
    let script = format!(
        "#!{BUSYBOX} sh\n\
         # pinstorm lab: the initramfs (runners/lab/src/initramfs.rs). Load the 9p root's\n\
         # modules, mount the host's root, start loading the set-up's modules in the\n\
         # background, become init=.\n\
         B={BUSYBOX}\n\
         say() {{ echo \"pinstorm lab initramfs: $*\"; }}\n\
         $B mount -t proc proc /proc\n\
         for f in {}; do $B insmod \"$f\" || say \"insmod $f failed\"; done\n\
         init=\n\
         for arg in $($B cat /proc/cmdline); do\n\
         \x20   case \"${{arg%%=*}}\" in init) init=\"${{arg#init=}}\" ;; esac\n\
         done\n\
         $B umount /proc\n\
         if [ -z \"$init\" ]; then say 'no init= on the command line'; exit 1; fi\n\
         n=0\n\
         until $B mount {ROOT_MOUNT}; do\n\
         \x20   n=$((n + 1))\n\
         \x20   if [ $n -ge 50 ]; then say 'cannot mount the host root over 9p'; exit 1; fi\n\
         \x20   $B sleep 0.1\n\
         done\n\
         {loaders}\
         exec $B switch_root /newroot \"$init\"\n",
        boot_list.join(" ")
    );
    entries.push(Entry::File("init".into(), 0o755, script.into_bytes()));
    write(out, &entries).map_err(|e| format!("writing {}: {e}", out.display()))
}

fn write(out: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let partial = out.with_extension("partial");
    let result = (|| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        for (i, e) in entries.iter().enumerate() {
            let ino = i as u32 + 1;
            let b = |name: &str| cpio::newc::Builder::new(name).ino(ino).uid(0).gid(0);
            match e {
                Entry::Dir(name) => {
                    b(name).mode(0o040755).nlink(2).write(&mut w, 0).finish()?;
                }
                Entry::CharDev(name, major, minor) => {
                    b(name)
                        .mode(0o020666)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor)
                        .write(&mut w, 0)
                        .finish()?;
                }
                Entry::File(name, mode, data) => {
                    let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
                    let mut f = b(name).mode(0o100000 | mode).nlink(1).write(&mut w, len);
                    f.write_all(data)?;
                    f.finish()?;
                }
            }
        }
        cpio::newc::trailer(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&partial, out),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_files_must_be_plain_uncompressed_names() {
        assert!(plain_module_file("xfs.ko"));
        assert!(plain_module_file("9pnet_virtio.ko"));
        for bad in ["xfs.ko.xz", "x'y.ko", "a b.ko", ".ko", "x.ko;reboot", ""] {
            assert!(!plain_module_file(bad), "{bad}");
        }
        assert_eq!(
            archive_name("modules", 0, "/k/lib/modules/r/kernel/fs/9p/9p.ko").unwrap(),
            "modules/01-9p.ko"
        );
        assert!(archive_name("modules", 0, "/k/x.ko.zst").is_err());
    }

    /// One entry read back: name, mode, rdev (major, minor) and contents.
    type Read = (String, u32, (u32, u32), Vec<u8>);

    /// Every entry of a newc archive.
    fn entries(path: &Path) -> Vec<Read> {
        use std::io::Read;
        let mut r = std::fs::File::open(path).unwrap();
        let mut out = Vec::new();
        loop {
            let mut e = cpio::NewcReader::new(r).unwrap();
            if e.entry().is_trailer() {
                return out;
            }
            let (name, mode, rdev) = (
                e.entry().name().to_string(),
                e.entry().mode(),
                (e.entry().rdev_major(), e.entry().rdev_minor()),
            );
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((name, mode, rdev, data));
            r = e.finish().unwrap();
        }
    }

    #[test]
    fn the_archive_holds_busybox_the_modules_in_order_and_an_init_that_loads_them() {
        let d = std::env::temp_dir().join(format!("pinstorm-initramfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let file = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let busybox = file("busybox", "BUSYBOX");
        let boot = vec![file("9pnet.ko", "9PNET"), file("9p.ko", "9P")];
        let groups = vec![
            EarlyGroup {
                tag: "devices",
                modules: vec!["nfit"],
                files: Some(vec![
                    file("libnvdimm.ko", "LIBNVDIMM"),
                    file("nfit.ko", "NFIT"),
                ]),
            },
            // Built in: nothing to load, no loader.
            EarlyGroup {
                tag: "fs",
                modules: vec!["loop"],
                files: Some(Vec::new()),
            },
        ];
        let out = d.join("initrd.cpio");
        build(&out, Path::new(&busybox), &boot, &groups).unwrap();
        assert!(!out.with_extension("partial").exists());
        let e = entries(&out);
        let get = |n: &str| {
            e.iter()
                .find(|x| x.0 == n)
                .unwrap_or_else(|| panic!("{n}: {e:?}"))
        };
        assert_eq!(get("bin/busybox").3, b"BUSYBOX");
        assert_eq!(get("bin/busybox").1, 0o100755);
        assert_eq!(get("modules/01-9pnet.ko").3, b"9PNET");
        assert_eq!(get("modules/02-9p.ko").3, b"9P");
        assert_eq!(get("lab-files/devices/01-libnvdimm.ko").3, b"LIBNVDIMM");
        assert_eq!(get("lab-files/devices/02-nfit.ko").3, b"NFIT");
        assert_eq!(
            (get("dev/console").1, get("dev/console").2),
            (0o020666, (5, 1))
        );
        assert_eq!((get("dev/null").1, get("dev/null").2), (0o020666, (1, 3)));
        assert_eq!(get("lab-files/devices").1, 0o040755);
        assert!(!e.iter().any(|x| x.0.starts_with("lab-files/fs")), "{e:?}");
        let init = String::from_utf8(get("init").3.clone()).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh\n"), "{init}");
        // The root's modules, then the root, then the loaders, then init=.
        let at = |s: &str| init.find(s).unwrap_or_else(|| panic!("{s}: {init}"));
        assert!(
            at("for f in '/modules/01-9pnet.ko' '/modules/02-9p.ko'; do")
                < at("until $B mount -t 9p -o ro,")
        );
        assert!(at("until $B mount -t 9p") < at("pinstorm-lab-modules-devices '/lab/devices/01-libnvdimm.ko' '/lab/devices/02-nfit.ko' >/dev/null 2>&1 &"));
        assert!(at("pinstorm-lab-modules-devices") < at("exec $B switch_root /newroot \"$init\""));
        // The loaders' busybox is the tmpfs's copy: switch_root deletes the archive's.
        assert!(init.contains("do /lab/busybox insmod"), "{init}");
        assert!(!init.contains("pinstorm-lab-modules-fs"), "{init}");
        // A compressed module, an unknown file list or no 9p modules: no archive.
        let mut bad = groups.clone();
        bad[0].files = Some(vec![file("nfit.ko.xz", "")]);
        assert!(build(&out.with_file_name("x"), Path::new(&busybox), &boot, &bad).is_err());
        bad[0].files = None;
        assert!(build(&out.with_file_name("x"), Path::new(&busybox), &boot, &bad).is_err());
        assert!(build(&out.with_file_name("x"), Path::new(&busybox), &[], &groups).is_err());
        assert!(!out.with_file_name("x").exists());
        // Nothing to load: no tmpfs, no loaders, straight to init=.
        let none = out.with_file_name("none.cpio");
        build(&none, Path::new(&busybox), &boot, &groups[1..]).unwrap();
        let init = entries(&none)
            .into_iter()
            .find(|x| x.0 == "init")
            .unwrap()
            .3;
        let init = String::from_utf8(init).unwrap();
        assert!(
            !init.contains("pinstorm-lab-modules") && !init.contains("mount -t tmpfs"),
            "{init}"
        );
        assert!(init.contains("exec $B switch_root"), "{init}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
