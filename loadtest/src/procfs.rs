//! What the kernel says about a process and about TCP memory.

/// Memory of a server made of `pids`, in bytes: the sum of their proportional set sizes
/// (`Pss` in `/proc/<pid>/smaps_rollup`, so pages shared between an nginx master and its
/// workers count once), or the resident set size (`VmRSS`) where PSS is unavailable.
/// For a single process the two agree but for shared libraries. `None` for no pids.
pub(crate) fn memory_bytes(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|&pid| {
            kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
                .or_else(|| kib_field(&format!("/proc/{pid}/status"), "VmRSS:"))
        })
        .sum()
}

fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Kernel memory in TCP socket buffers, system-wide, in bytes (`mem` pages in
/// `/proc/net/sockstat`).
pub(crate) fn tcp_mem_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(word) = it.next() {
        if word == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            return Some(pages * 4096);
        }
    }
    None
}

/// Open file descriptors of `pid`.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Kernel slab memory, system-wide, in bytes (`Slab:` in `/proc/meminfo`): where socket,
/// inode, file and epoll structures live.
pub(crate) fn slab_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("Slab:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
