//! `--kmem-node` in the guest: a device-dax namespace onlined as system RAM, the target of
//! the memory-offline operation. What `daxctl reconfigure-device --mode=system-ram
//! --no-movable` does, through sysfs (the host's root, which the guest sees, has no daxctl):
//! unbind the device from `device_dax`, hand it to the `kmem` driver (`new_id`), which
//! hot-adds its memory blocks on the device's target node, and online each block in
//! ZONE_NORMAL (`online_kernel`), where a long-term pin may stay (ZONE_MOVABLE would have the
//! pin migrate the pages out first). [`restore`] undoes it at the guest's end: blocks
//! offline, device back on `device_dax`.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use pinstorm_workloads::layout::KmemNode;
use pinstorm_workloads::memblock::{self, StateWrite};

const DAX: &str = "/sys/bus/dax";

fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {path}"))
}

fn read(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// The memory blocks wholly inside `[start, start + size)`.
pub fn blocks_within(start: u64, size: u64, block_size: u64) -> Vec<u32> {
    if block_size == 0 {
        return Vec::new();
    }
    let first = start.div_ceil(block_size);
    let end = (start + size) / block_size;
    (first..end).map(|b| b as u32).collect()
}

/// The memory blocks wholly inside the device's range (those kmem can add).
pub fn device_blocks(dev: &str) -> Result<Vec<u32>> {
    let devdir = format!("{DAX}/devices/{dev}");
    let start = u64::from_str_radix(
        read(&format!("{devdir}/resource"))?.trim_start_matches("0x"),
        16,
    )
    .context("the device's resource")?;
    let size: u64 = read(&format!("{devdir}/size"))?
        .parse()
        .context("the device's size")?;
    Ok(blocks_within(start, size, memblock::block_size()?))
}

/// Bind `dev` (`dax1.0`) to kmem and online its blocks in ZONE_NORMAL.
pub fn online(dev: &str) -> Result<KmemNode> {
    let devdir = format!("{DAX}/devices/{dev}");
    let node: i32 = read(&format!("{devdir}/target_node"))?
        .parse()
        .context("the device's target_node")?;
    if node < 0 {
        bail!("{dev} has no target node ({node}): the NVDIMM has no NUMA proximity domain");
    }
    write(&format!("{DAX}/drivers/device_dax/unbind"), dev)?;
    write(&format!("{DAX}/drivers/kmem/new_id"), dev)?;
    if !std::path::Path::new(&format!("{DAX}/drivers/kmem/{dev}")).exists() {
        bail!("{dev} did not bind to kmem");
    }
    let blocks: Vec<u32> = device_blocks(dev)?
        .into_iter()
        .filter(|b| memblock::state(*b).is_ok())
        .collect();
    if blocks.is_empty() {
        bail!(
            "kmem added no whole memory block ({} bytes at {})",
            read(&format!("{devdir}/size"))?,
            read(&format!("{devdir}/resource"))?
        );
    }
    // The last block first, alone: what the kernel allocates on a node when it comes online
    // and when it first holds user pages (per-node slab: memcg per-node data, ...) lands
    // there, measured on 6.1 at the node's first page, which then never goes offline. A
    // user page moved there and freed again makes the kernel set up the rest now.
    let last = *blocks.last().expect("not empty");
    if memblock::state(last)? == "offline" {
        match memblock::write_state(last, "online_kernel", Duration::from_secs(30))? {
            StateWrite::Done { .. } => {}
            other => bail!("onlining memory{last} in ZONE_NORMAL: {other:?}"),
        }
    }
    warm_up(node)?;
    for b in &blocks {
        if memblock::state(*b)? == "offline" {
            match memblock::write_state(*b, "online_kernel", Duration::from_secs(30))? {
                StateWrite::Done { .. } => {}
                other => bail!("onlining memory{b} in ZONE_NORMAL: {other:?}"),
            }
        }
    }
    let zone = memblock::zone(blocks[0])?;
    Ok(KmemNode {
        device: dev.to_string(),
        node,
        blocks,
        zone,
    })
}

/// Move a few pages of our own to `node` and free them: the kernel's first use of a node
/// allocates its per-node structures there.
fn warm_up(node: i32) -> Result<()> {
    use pinstorm_workloads::sys::{MapMode, Mapping};
    let m = Mapping::anonymous(
        2 << 20,
        MapMode {
            shared: false,
            writable: true,
            hugetlb: false,
            populate: true,
        },
    )
    .map_err(|e| anyhow::anyhow!("a mapping to warm the kmem node up: {}", e.name()))?;
    m.write_at(0, &vec![0x6b; 2 << 20]);
    let st = pinstorm_workloads::layout::move_to_node(&m, node)
        .map_err(|e| anyhow::anyhow!("move_pages to node {node}: {}", e.name()))?;
    if !st.contains(&node) {
        bail!("move_pages put no page on node {node}: {st:?}");
    }
    Ok(())
}

/// Which blocks of the node can be taken offline with nothing of ours on them: the kernel
/// puts the new node's own structures (its slab caches, its page tables' and per-node data)
/// on its first block, which then never goes offline whatever pins do. Each block is
/// offlined once and put back; those that refuse are left out of the operation's blocks,
/// so an offline that fails under a pin is the pin's doing. Returns the clean blocks and a
/// line per refusing block.
pub fn clean_blocks(k: &KmemNode) -> Result<(Vec<u32>, Vec<String>)> {
    let mut clean = Vec::new();
    let mut refused = Vec::new();
    let online = memblock::Online::of_zone(&k.zone);
    for b in &k.blocks {
        match memblock::write_state(*b, "offline", Duration::from_secs(5))? {
            StateWrite::Done { .. } => {
                match memblock::write_state(*b, online.state(), Duration::from_secs(30))? {
                    StateWrite::Done { .. } => clean.push(*b),
                    other => bail!("putting memory{b} back {}: {other:?}", online.state()),
                }
            }
            StateWrite::Failed { errno, .. } => {
                refused.push(format!("memory{b}: {}", errno.name()))
            }
            StateWrite::Interrupted { ms } => {
                refused.push(format!("memory{b}: still migrating after {ms:.0} ms"))
            }
        }
    }
    Ok((clean, refused))
}

/// Put the device back: its blocks offline (bounded: a page that will not migrate keeps a
/// block online), then unbound from kmem and bound to device_dax again.
pub fn restore(k: &KmemNode) -> Result<String> {
    let mut problems = Vec::new();
    for b in &k.blocks {
        if memblock::state(*b)? != "offline" {
            match memblock::write_state(*b, "offline", Duration::from_secs(20))? {
                StateWrite::Done { .. } => {}
                other => problems.push(format!("memory{b}: {other:?}")),
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "blocks still online, {} left on kmem: {}",
            k.device,
            problems.join("; ")
        );
    }
    write(&format!("{DAX}/drivers/kmem/unbind"), &k.device)?;
    write(&format!("{DAX}/drivers/kmem/remove_id"), &k.device)?;
    write(&format!("{DAX}/drivers/device_dax/bind"), &k.device)
        .or_else(|_| write(&format!("{DAX}/drivers/device_dax/new_id"), &k.device))?;
    Ok(format!(
        "memory blocks {:?} offline, {} back on device_dax",
        k.blocks, k.device
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_blocks_inside_the_device_are_its() {
        let m = 128 << 20;
        // 384 MiB starting 8 MiB past a block boundary: the two whole blocks after it.
        assert_eq!(blocks_within(40 * m + (8 << 20), 3 * m, m), vec![41, 42]);
        assert_eq!(blocks_within(40 * m, 2 * m, m), vec![40, 41]);
        assert!(blocks_within(40 * m + 1, m, m).is_empty());
        assert!(blocks_within(0, m, 0).is_empty());
    }
}
