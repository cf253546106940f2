//! `pinstorm list`: the pin paths, backings, layout operations, presets and RDMA devices of
//! this build on this machine, with whether each can run here and why not.
//!
//! The fields of each record are in alphabetical order: that is the order `--format json`
//! has always printed them in.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Format, Global};
use crate::cmd::common::{bad, configure_rdma};
use pinstorm_workloads::backing::{BackingKind, SetupEnv};
use pinstorm_workloads::layout::LayoutKind;
use pinstorm_workloads::pin::rdma::{self, DeviceReport};
use pinstorm_workloads::pin::{Availability, PinKind, PinSettings};
use pinstorm_workloads::scenario::{Scenario, PRESETS};
use pinstorm_workloads::scratch::ScratchDir;

/// Whether a thing can run on this machine.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Usable,
    NotRun,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Usable => "usable",
            Status::NotRun => "notrun",
        }
    }
}

/// A pin path or a backing.
#[derive(Serialize)]
struct Item {
    description: &'static str,
    name: &'static str,
    /// Empty when usable.
    reason: String,
    status: Status,
}

impl Item {
    fn new(name: &'static str, description: &'static str, a: Availability) -> Item {
        let (status, reason) = match a {
            Availability::Usable => (Status::Usable, String::new()),
            Availability::NotRun(r) => (Status::NotRun, r),
        };
        Item {
            description,
            name,
            reason,
            status,
        }
    }
}

/// A layout operation: whether a filesystem has it is measured in each storm, so it is
/// always listed as usable.
#[derive(Serialize)]
struct LayoutOp {
    description: &'static str,
    name: &'static str,
    note: &'static str,
    reason: &'static str,
    status: Status,
}

/// A preset compiled in from `configs/`.
#[derive(Serialize)]
struct Preset {
    description: String,
    file: String,
    name: &'static str,
}

/// The RDMA devices, or why there are none.
#[derive(Serialize)]
struct RdmaDevices {
    devices: Vec<DeviceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    status: Status,
}

/// Everything `pinstorm list` shows.
#[derive(Serialize)]
struct List {
    backings: Vec<Item>,
    layout_operations: Vec<LayoutOp>,
    pin_paths: Vec<Item>,
    rdma_devices: RdmaDevices,
    scenarios: Vec<Preset>,
}

impl List {
    fn gather(g: &Global, settings: &PinSettings) -> Result<List> {
        let env = SetupEnv {
            is_root: pinstorm_workloads::is_root(),
            scratch_dir: match &g.scratch_dir {
                Some(d) => Some(bad(ScratchDir::new(d, "--scratch-dir"))?),
                None => None,
            },
            dax_dirs: g.dax_dirs()?,
            devdax: g.devdax.clone(),
            unavailable: Default::default(),
            before_attach: None,
        };
        let pin_paths = PinKind::ALL
            .iter()
            .map(|p| Item::new(p.name(), p.describe(), p.path(settings).availability()))
            .collect();
        let backings = BackingKind::ALL
            .iter()
            .map(|b| Item::new(b.name(), b.describe(), b.availability(&env)))
            .collect();
        let scenarios = PRESETS
            .iter()
            .map(|(name, text)| Preset {
                description: Scenario::parse(text, name)
                    .map(|s| s.description)
                    .unwrap_or_default(),
                file: format!("configs/{name}.toml"),
                name,
            })
            .collect();
        let layout_operations = LayoutKind::ALL
            .iter()
            .map(|k| LayoutOp {
                description: k.describe(),
                name: k.name(),
                note: "whether a filesystem has it is measured in each storm (notrun with the reason when not)",
                reason: "",
                status: Status::Usable,
            })
            .collect();
        let rdma_devices = match rdma::inventory() {
            Ok(devices) => RdmaDevices {
                devices,
                reason: None,
                status: Status::Usable,
            },
            Err(why) => RdmaDevices {
                devices: Vec::new(),
                reason: Some(why),
                status: Status::NotRun,
            },
        };
        Ok(List {
            backings,
            layout_operations,
            pin_paths,
            rdma_devices,
            scenarios,
        })
    }
}

pub fn run(g: &Global) -> Result<ExitCode> {
    let settings = PinSettings {
        rdma: configure_rdma(g, None),
    };
    let list = List::gather(g, &settings)?;
    if g.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let section = |title: &str, items: &[Item]| {
        println!("{title}:");
        for i in items {
            println!(
                "  {:<14} {:<7} {}",
                i.name,
                i.status.as_str(),
                i.description
            );
            if !i.reason.is_empty() {
                println!("  {:<14} {:<7} why: {}", "", "", i.reason);
            }
        }
        println!();
    };
    section("Pin paths", &list.pin_paths);
    print_rdma_devices(&list.rdma_devices, &settings.rdma);
    section("Backings", &list.backings);
    println!("Layout operations (whether a filesystem has one is measured per storm; notrun with the reason if not):");
    for l in &list.layout_operations {
        println!("  {:<18} {}", l.name, l.description);
    }
    println!();
    println!("Scenarios (presets compiled in from configs/NAME.toml; a file path works too):");
    for s in &list.scenarios {
        println!("  {:<21} {}", s.name, s.description);
    }
    Ok(ExitCode::SUCCESS)
}

/// The RDMA devices section of `pinstorm list`: devices, ports, link layer, firmware, ODP.
fn print_rdma_devices(v: &RdmaDevices, cfg: &rdma::RdmaConfig) {
    println!("RDMA devices (for the rdma pin paths; --rdma-dev NAME, --rdma-port N):");
    if v.devices.is_empty() {
        println!("  none: {}", v.reason.as_deref().unwrap_or(""));
        println!();
        return;
    }
    let selected = rdma::selected(cfg);
    for d in &v.devices {
        println!(
            "  {:<14} {:<5} fw {:<12} vendor {:#x}:{:#x}  ODP: {}",
            d.name,
            d.transport,
            if d.fw_ver.is_empty() { "-" } else { &d.fw_ver },
            d.vendor_id,
            d.vendor_part_id,
            d.odp
        );
        for p in &d.ports {
            // No padding after the MTU: this line was printed from a JSON value before,
            // whose Display ignores widths, and its output is kept as it was.
            println!(
                "  {:<14} port {}: {:<7} {:<10} mtu {} gid {}",
                "",
                p.port,
                p.state,
                p.link_layer,
                p.active_mtu,
                p.gid.as_deref().unwrap_or("-")
            );
        }
        if let Some(e) = &d.error {
            println!("  {:<14} error: {e}", "");
        }
    }
    match selected {
        Ok(s) => println!("  the rdma pin paths use: {s}"),
        Err(why) => println!("  the rdma pin paths cannot run: {why}"),
    }
    println!();
}
