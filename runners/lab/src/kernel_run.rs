//! One kernel of the matrix, phase by phase: prepare the kernel and choose the accelerator,
//! make the run directory and the guest's plan, boot under the watchdog, collect what came
//! back, judge it, and file the result under the guest's release.

use std::path::{Path, PathBuf};

use anyhow::Result;

use pinstorm_analysis::schema::{LabRecord, RunResult};
use pinstorm_analysis::store;

use crate::apt::Apt;
use crate::build;
use crate::cache::RunDir;
use crate::console;
use crate::guest::{GuestPlan, GuestReport, PmemMode};
use crate::kernels::{self, Kernel, KernelSpec};
use crate::kselftest;
use crate::options::LabOptions;
use crate::record;
use crate::status::{self, Evidence, KernelOutcome, KernelStatus};
use crate::template;
use crate::timings;
use crate::vm::{self, Accel, GuestEnd};
use pinstorm_workloads::scenario::Scenario;

/// What every kernel of a lab run shares.
pub(crate) struct Lab<'a> {
    pub opts: &'a LabOptions,
    pub cache: PathBuf,
    pub results_root: PathBuf,
    pub apt: Apt,
    pub vng: PathBuf,
    pub guest_exe: PathBuf,
    /// The seed the guests run the scenario with.
    pub seed: u64,
    pub log: &'a (dyn Fn(&str) + Sync),
    /// Guests run at once (`--jobs`), but kernels are fetched and the accelerator probed one
    /// at a time: they share the apt state and the probe's files in the cache.
    pub prepare_lock: std::sync::Mutex<()>,
}

/// Fetch (or find in the cache) the kernel `spec` names.
pub(crate) fn prepare_kernel(
    opts: &LabOptions,
    cache: &Path,
    apt: &Apt,
    spec: &KernelSpec,
    log: &dyn Fn(&str),
) -> Result<Kernel> {
    match spec {
        KernelSpec::Deb(w) => kernels::prepare_deb(cache, apt, w, opts.refresh, log),
        KernelSpec::Path { image, modules } => {
            kernels::prepare_path(cache, image, modules.as_deref())
        }
        KernelSpec::Tree(d) if opts.plan.build => {
            let vng = vm::find_vng(opts.vng.as_deref(), cache)?;
            build::build_tree(cache, &vng, d, log)
        }
        KernelSpec::Tree(d) => kernels::prepare_tree(d),
    }
}

/// Boot `spec` and file what came of it: once, or twice when the first boot died or
/// stopped before the lab's agent started (see `LabRecord::boot_retry`).
pub(crate) fn run_kernel(lab: &Lab, spec: &KernelSpec) -> Result<KernelOutcome> {
    boot_and_file(lab, spec, None)
}

/// How long a booting guest's console may stay silent before its agent starts (a normal
/// boot prints every second or so, slower than 5 s only under heavy load).
const BOOT_STALL: std::time::Duration = std::time::Duration::from_secs(90);

/// The first boot that died (or stopped) before the agent: why, and its console.
struct EarlyDeath {
    reason: String,
    console: String,
}

fn boot_and_file(lab: &Lab, spec: &KernelSpec, first: Option<EarlyDeath>) -> Result<KernelOutcome> {
    let opts = lab.opts;
    let log = lab.log;
    let prepare_start = std::time::Instant::now();
    let prepared = lab.prepare_lock.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = prepare_kernel(opts, &lab.cache, &lab.apt, spec, log)?;
    log(&format!(
        "{spec}: kernel {} ({}{})",
        kernel.release,
        kernel.source.join(", "),
        if kernel.cached { ", cached" } else { "" }
    ));
    let accel = choose_accel(lab, spec, &kernel);
    // Under the same lock: the selftests' source comes through the same apt state.
    let selftests = kselftest::prepare(
        &lab.cache,
        &lab.apt,
        &kernel,
        &opts.plan.kselftests,
        opts.plan.kselftest_source.as_deref(),
        log,
    );
    drop(prepared);

    let mut run = RunDir::create(
        &lab.cache,
        (opts.plan.pmem == PmemMode::Nvdimm).then(|| vm::nvdimm_mib(opts.plan.kmem_node)),
    )?;
    let written = write_plan(lab, spec, &run, &selftests)?;
    let (plan_path, template_maker) = (written.path.clone(), written.maker);
    // Fetching, unpacking, the run directory and the NVDIMM template's copy.
    let prepare = prepare_start.elapsed();
    let exec = format!(
        "{} __lab-guest {}",
        shell_quote(&lab.guest_exe.display().to_string()),
        shell_quote(&plan_path.display().to_string())
    );
    let shape = vm::GuestShape {
        boot: &kernel.boot,
        accel: &accel,
        stage: &run.stage,
        pmem: opts.plan.pmem,
        nvdimm_image: &run.nvdimm,
        memory_mib: opts.plan.memory_mib,
        cpus: opts.plan.cpus,
        kmem_node: opts.plan.kmem_node,
        movablecore: opts.plan.movablecore.clone(),
        pvh: kernel.pvh.as_deref(),
        exec,
    };
    let args = vm::vng_args(&shape);
    let env = vm::vng_env(&lab.vng, &run.home, &run.tmp);
    let qemu = vm::qemu_command(&lab.vng, &args, &env);
    // The lab's init in front of virtme-ng's (no udev, no systemd-tmpfiles); the recorded
    // QEMU command is the one that runs.
    let (args, qemu) = match lab_init(&run, &args, qemu.as_deref(), &written.modules) {
        Ok(init) => {
            if let Some(why) = init.initramfs_why {
                log(&format!(
                    "{spec}: booting virtme-ng's initramfs (the lab's init loads the modules): {why}"
                ));
            }
            if let Some(why) = init.own_why {
                log(&format!(
                    "{spec}: virtme-ng's init runs the agent (not the lab's own init): {why}"
                ));
            }
            let q = vm::qemu_command(&lab.vng, &init.args, &env);
            (init.args, q)
        }
        Err(why) => {
            log(&format!(
                "{spec}: booting with virtme-ng's init as it is (udev and all): {why}"
            ));
            (args, qemu)
        }
    };
    log(&format!(
        "{spec}: booting {} (timeout {}s)",
        kernel.release,
        opts.timeout.as_secs()
    ));
    // The host while the guest runs: QEMU is this process's descendant, so what is left is
    // everything else on the host (the guest sees its own side, steal included).
    let host = pinstorm_runners::disturbance::Monitor::start();
    let host_interval = host.begin().ok();
    let (end, console_text) = boot(lab, &mut run, &args, &env)?;
    drop(template_maker);
    let host_disturbance = host_interval.and_then(|iv| host.measure(&iv).ok());
    drop(host);

    let (report, guest_result) = collect(&run.stage);
    let events = console::events(&console_text);
    let judgement = status::judge(&Evidence {
        console: &console_text,
        events: &events,
        end: &end,
        report: report.as_ref(),
        result: guest_result.as_ref(),
        timeout: opts.timeout,
    });

    // A kernel that died while booting, before the agent's first step (no inject asked for
    // it: an injected panic comes after that step), gets one more boot.
    if first.is_none()
        && end.first_step.is_none()
        && (end.stalled.is_some()
            || matches!(judgement.guest, KernelStatus::Panic | KernelStatus::Oops))
    {
        let reason = judgement.reason.clone().unwrap_or_default();
        log(&format!(
            "{spec}: the kernel {} while booting, before the lab's agent started ({}); booting it once more",
            if end.stalled.is_some() { "stopped" } else { "died" },
            reason.lines().next().unwrap_or("")
        ));
        drop(run);
        return boot_and_file(
            lab,
            spec,
            Some(EarlyDeath {
                reason,
                console: console_text,
            }),
        );
    }
    let timings = timings::account(&timings::Measured {
        prepare,
        wall: end.wall,
        first_step: end.first_step,
        report: report.as_ref(),
        result: guest_result.as_ref(),
    });
    log(&format!("{spec}: {}", timings::describe(&timings)));
    let lab_record = LabRecord {
        kernel_spec: spec.to_string(),
        kernel_source: kernel.source.clone(),
        status: judgement.guest.as_str().into(),
        reason: judgement.reason.clone(),
        accel: if accel.kvm { "kvm" } else { "tcg" }.into(),
        accel_reason: accel.reason.clone(),
        vng_command: std::iter::once(lab.vng.display().to_string())
            .chain(args.iter().cloned())
            .collect(),
        qemu_command: qemu,
        console_log: "console.log".into(),
        console_events: events,
        wall_seconds: end.wall.as_secs_f64(),
        guest: report.as_ref().map(|r| r.facts.clone()).unwrap_or_default(),
        host_disturbance,
        timings: Some(timings.clone()),
        boot_retry: first.as_ref().map(|f| f.reason.clone()),
        kselftests: kselftest::records(
            &selftests,
            report
                .as_ref()
                .map(|r| r.kselftests.as_slice())
                .unwrap_or_default(),
            &run.stage,
        ),
    };
    let mut result = match guest_result {
        Some(r) => r,
        None => record::placeholder_result(
            record::scenario_record(opts, lab.seed),
            opts.plan.label.clone(),
            &kernel.release,
            &run.id,
            judgement.reason.as_deref().unwrap_or(""),
        ),
    };
    record::file_as(
        &mut result,
        lab_record,
        opts.plan.label.as_ref(),
        &run.id,
        &kernel.release,
    );
    let path = store(lab, &mut run, &result, &console_text)?;
    if let Some(f) = &first {
        // Beside the result: what the first boot's console showed.
        let _ = store::write_atomic(
            &path.with_file_name("console-boot1.log"),
            f.console.as_bytes(),
        );
    }
    drop(run);

    Ok(KernelOutcome {
        spec: spec.to_string(),
        release: Some(result.environment.kernel_release.clone()),
        status: judgement.kernel,
        result: Some(path),
        summary: record::summarize(&result),
        wall_seconds: end.wall.as_secs_f64(),
        timings: Some(timings),
    })
}

/// The vng arguments that boot the lab's init script (written into the run directory, which
/// the guest cannot write) in front of virtme-ng's, and the lab's initramfs in place of
/// virtme-ng's (see [`crate::initramfs`]), and the script as the agent's init in place of
/// virtme-ng's (see [`crate::guest_init::OwnInit`]) where it can be.
fn lab_init(
    run: &RunDir,
    args: &[String],
    qemu: Option<&str>,
    modules: &[crate::guest_init::EarlyGroup],
) -> std::result::Result<LabInit, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = run.dir.join("lab-init");
    let q = qemu.ok_or("vng --dry-run printed no QEMU command")?;
    let (a, next) = vm::with_lab_init(args, q, &path)
        .ok_or("its kernel command line could not be rewritten")?;
    // The modules directory virtme-ng links into the guest (`virtme_link_mods=BASE/lib/
    // modules/RELEASE`): the script loads from there before virtme-ng's init links it.
    let link_mods = q
        .split_whitespace()
        .find_map(|w| w.strip_prefix("virtme_link_mods="));
    let base = link_mods
        .and_then(|m| m.rsplitn(3, '/').nth(2))
        .and_then(|b| b.strip_suffix("/lib"));
    // Each group's files in load order, from that directory's modules.dep, softdep and
    // alias files: busybox's insmod loads them without a kmod process (the script checks
    // each path).
    let index = link_mods.and_then(|m| crate::kernels::ModIndex::read(Path::new(m)).ok());
    let files_of = |names: &[&str]| -> Option<Vec<String>> {
        index.as_ref().zip(link_mods).map(|(ix, dir)| {
            ix.load_order(names)
                .into_iter()
                .map(|f| format!("{dir}/{f}"))
                .collect()
        })
    };
    let groups: Vec<crate::guest_init::EarlyGroup> = modules
        .iter()
        .map(|g| crate::guest_init::EarlyGroup {
            files: files_of(&g.modules),
            ..g.clone()
        })
        .collect();
    let busybox = std::fs::metadata(crate::guest_init::BUSYBOX).is_ok_and(|m| m.is_file());
    // The 9p root's modules, for the lab's initramfs.
    let boot = files_of(crate::kernels::BOOT_MODULES).unwrap_or_default();
    let initrd = run.dir.join("initrd.cpio");
    let built = if !busybox {
        Err(format!("no {}", crate::guest_init::BUSYBOX))
    } else {
        crate::initramfs::build(
            &initrd,
            Path::new(crate::guest_init::BUSYBOX),
            &boot,
            &groups,
        )
        .and_then(|()| {
            initrd
                .to_str()
                .and_then(|p| shlex::try_quote(p).ok())
                .map(|p| format!("--qemu-opts=-initrd {p}"))
                .ok_or_else(|| format!("{} cannot be quoted", initrd.display()))
        })
    };
    let (a, early_groups, why) = match built {
        // QEMU keeps the last -initrd: the lab's, whose loaders started the modules.
        Ok(opt) => {
            let mut a = a;
            a.push(opt);
            (a, &[][..], None)
        }
        Err(why) => (a, &groups[..], Some(why)),
    };
    let early = base.map(|base| crate::guest_init::EarlyModules {
        base,
        groups: early_groups,
    });
    let own = if busybox {
        vm::own_init(args, q)
    } else {
        Err(format!("no {}", crate::guest_init::BUSYBOX))
    };
    let text = crate::guest_init::script(&next, early.as_ref(), busybox, own.as_ref().ok())
        .ok_or("virtme-ng's init path cannot be quoted")?;
    std::fs::write(&path, text)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(LabInit {
        args: a,
        initramfs_why: why,
        own_why: own.err(),
    })
}

/// The guest's boot with the lab's init: the vng arguments, and why the initramfs or the
/// init that runs the agent is virtme-ng's after all, where it is.
struct LabInit {
    args: Vec<String>,
    initramfs_why: Option<String>,
    own_why: Option<String>,
}

/// KVM or TCG for this kernel (the probe boots it under KVM), and say which.
fn choose_accel(lab: &Lab, spec: &KernelSpec, kernel: &Kernel) -> Accel {
    let image = if kernel.boot.is_dir() {
        kernel.boot.join("arch/x86/boot/bzImage")
    } else {
        kernel.boot.clone()
    };
    let accel = vm::probe_accel(&lab.cache, &image, &lab.opts.plan.accel);
    (lab.log)(&format!(
        "{spec}: {} ({})",
        if accel.kvm { "KVM" } else { "TCG" },
        accel.reason
    ));
    accel
}

/// The guest's plan as written into the staging directory.
struct WrittenPlan {
    path: PathBuf,
    /// Kept alive while the guest runs when this guest makes the cache's NVDIMM template.
    maker: Option<template::Maker>,
    /// The modules its set-up loads, in groups (the lab's init starts loading them early).
    modules: Vec<crate::guest_init::EarlyGroup>,
}

/// Write the guest's plan into the staging directory.
fn write_plan(
    lab: &Lab,
    spec: &KernelSpec,
    run: &RunDir,
    selftests: &[kselftest::Prepared],
) -> Result<WrittenPlan> {
    let p = &lab.opts.plan;
    let mut plan = GuestPlan {
        scenario_text: p.scenario_text.clone(),
        origin: lab.opts.origin.clone(),
        seed: p.seed,
        label: p.label.clone(),
        expectations: p.expectations.clone(),
        stage: run.stage.clone(),
        pmem: p.pmem,
        devdax: p.devdax,
        rxe: p.rxe,
        inject: p.inject.as_ref().and_then(|i| i.for_kernel(spec)),
        guest_exec: p.guest_exec.clone(),
        reproduce_as: reproduce_as(spec, p.build),
        pmem_scratch_dev: p.pmem_scratch_dev,
        kmem_node: p.kmem_node,
        movablecore: p.movablecore.is_some(),
        nvdimm_template: None,
        kselftests: selftests
            .iter()
            .filter_map(|t| {
                t.binary.as_ref().ok().map(|b| kselftest::GuestSelftest {
                    name: t.name.clone(),
                    binary: b.clone(),
                })
            })
            .collect(),
    };
    // A guest that sets up its NVDIMM starts from the cache's template image, or makes it.
    let mut maker = None;
    // Validated on the host already; the guest parses the same text.
    let scenario = Scenario::parse(&plan.scenario_text, &plan.origin).ok();
    let (pmem, devdax) = scenario
        .as_ref()
        .map_or((true, false), |s| crate::guest::wants(&plan, s));
    plan.devdax |= devdax && p.pmem == PmemMode::Nvdimm;
    if p.pmem == PmemMode::Nvdimm && !p.pmem_scratch_dev && pmem {
        let layout = template::Layout {
            mib: vm::nvdimm_mib(p.kmem_node),
            devdax: plan.devdax,
        };
        let t = template::prepare(&lab.cache, layout, &run.nvdimm);
        if matches!(t, template::TemplatePlan::Make { .. }) {
            maker = Some(template::Maker::start(
                &lab.cache,
                layout,
                &run.nvdimm,
                &run.stage,
            ));
        }
        plan.nvdimm_template = Some(t);
    }
    let path = run.stage.join("plan.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&plan)?)?;
    Ok(WrittenPlan {
        path,
        maker,
        modules: scenario
            .as_ref()
            .map(|s| crate::guest::early_modules(&plan, s))
            .unwrap_or_default(),
    })
}

/// Boot the guest under the watchdog; returns how it ended and its console (with the
/// guest's stdout after it). When the guest's processes outlive the watchdog, the run
/// directory (and its pgid file) is kept: the next lab or cleanup finds them.
fn boot(
    lab: &Lab,
    run: &mut RunDir,
    args: &[String],
    env: &[(String, String)],
) -> Result<(GuestEnd, String)> {
    let console_path = run.dir.join("console.log");
    let stdout_path = run.dir.join("guest-stdout.log");
    let end = vm::boot(
        &lab.vng,
        args,
        env,
        &vm::BootFiles {
            console: &console_path,
            stdout: &stdout_path,
            pgid: &run.dir.join("pgid"),
            started: &run.stage.join(crate::guest::STARTED_MARKER),
            stall: BOOT_STALL,
        },
        lab.opts.timeout,
    );
    let console_text = std::fs::read_to_string(&console_path).unwrap_or_default()
        + &std::fs::read_to_string(&stdout_path)
            .map(|s| {
                if s.is_empty() {
                    s
                } else {
                    format!("\n--- guest stdout ---\n{s}")
                }
            })
            .unwrap_or_default();
    match end {
        Ok(e) => Ok((e, console_text)),
        Err(e) => {
            if vm::run_dir_processes(&run.dir) {
                run.keep();
                return Err(e.context(format!(
                    "guest processes of {} are still alive; `pinstorm cleanup --cache` will try again",
                    run.dir.display()
                )));
            }
            Err(e)
        }
    }
}

/// What the guest left in the staging directory: its report, and its result (only a
/// result file inside the staging directory counts).
fn collect(stage: &Path) -> (Option<GuestReport>, Option<RunResult>) {
    let report: Option<GuestReport> = std::fs::read(stage.join("guest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let result = report
        .as_ref()
        .and_then(|r| r.result.as_ref())
        .filter(|p| p.starts_with(stage))
        .and_then(|p| store::read_result(p).ok());
    (report, result)
}

/// File the result under `RESULTS/<release>/<run-id>/` with the console log (and the
/// `--guest-exec` log). Nothing measured is lost: if that fails, the staged result stays
/// where it is and the error says where.
fn store(lab: &Lab, run: &mut RunDir, result: &RunResult, console_text: &str) -> Result<PathBuf> {
    let dir = store::result_dir(
        &lab.results_root,
        &result.environment.kernel_release,
        &result.run_id,
    );
    let stored = (|| -> Result<PathBuf> {
        let path = store::write_result(&dir, result)?;
        store::write_atomic(&dir.join("console.log"), console_text.as_bytes())?;
        if let Ok(g) = std::fs::read(run.stage.join("guest-exec.log")) {
            store::write_atomic(&dir.join("guest-exec.log"), &g)?;
        }
        // Names from the allow-list only (the record's names are the prepared tests').
        for k in result.lab.iter().flat_map(|l| &l.kselftests) {
            let name = kselftest::log_name(&k.name);
            if crate::kselftest::SELFTESTS.iter().any(|t| t.name == k.name) {
                if let Ok(g) = std::fs::read(run.stage.join(&name)) {
                    store::write_atomic(&dir.join(&name), &g)?;
                }
            }
        }
        Ok(path)
    })();
    stored.map_err(|e| {
        run.keep();
        e.context(format!(
            "storing the result under {} failed; the guest's result is kept in {}",
            dir.display(),
            run.stage.display()
        ))
    })
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command a finding in this kernel's guest is reproduced with, up to the scenario:
/// the same kernel, built or with its modules as it was given.
fn reproduce_as(spec: &KernelSpec, build: bool) -> Vec<String> {
    let mut cmd: Vec<String> = vec!["pinstorm".into(), "lab".into(), "--kernels".into()];
    cmd.push(spec.to_string());
    match spec {
        KernelSpec::Tree(_) if build => cmd.push("--build".into()),
        KernelSpec::Path {
            modules: Some(m), ..
        } => cmd.extend(["--modules".into(), m.display().to_string()]),
        _ => {}
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_guest_command_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/usr/bin/pinstorm"), "/usr/bin/pinstorm");
        assert_eq!(shell_quote("/a b/pinstorm"), "'/a b/pinstorm'");
        assert_eq!(shell_quote("/it's"), "'/it'\\''s'");
        assert_eq!(shell_quote("/x;rm -rf /"), "'/x;rm -rf /'");
    }

    #[test]
    fn a_guest_finding_is_reproduced_on_the_same_kernel_as_it_was_given() {
        let deb = KernelSpec::parse("deb:sid", None).unwrap();
        assert_eq!(
            reproduce_as(&deb, false),
            ["pinstorm", "lab", "--kernels", "deb:sid"]
        );
        let tree = KernelSpec::parse("tree:/src/linux", None).unwrap();
        assert_eq!(
            reproduce_as(&tree, true),
            ["pinstorm", "lab", "--kernels", "tree:/src/linux", "--build"]
        );
        let path =
            KernelSpec::parse("path:/k/bzImage", Some(std::path::Path::new("/k/mods"))).unwrap();
        assert_eq!(
            reproduce_as(&path, false),
            [
                "pinstorm",
                "lab",
                "--kernels",
                "path:/k/bzImage",
                "--modules",
                "/k/mods"
            ]
        );
    }
}
