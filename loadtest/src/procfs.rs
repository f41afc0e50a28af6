//! What the kernel says about a process and about TCP memory.

/// Resident set size of `pid` in bytes (`VmRSS` in `/proc/<pid>/status`).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
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
