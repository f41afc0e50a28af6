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

/// CPU time (user + system) of the processes `pids` so far, in microseconds: fields
/// `utime` and `stime` of `/proc/<pid>/stat`, which include threads that have exited.
/// `None` for no pids or a process that is gone.
pub(crate) fn cpu_micros(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|&pid| stat_cpu_micros(&format!("/proc/{pid}/stat")))
        .sum()
}

/// `utime + stime` of one `stat` file (a process's or a thread's), in microseconds.
pub(crate) fn stat_cpu_micros(path: &str) -> Option<u64> {
    stat_user_sys_micros(path).map(|(user, sys)| user + sys)
}

/// `utime` and `stime` of one `stat` file, in microseconds.
pub(crate) fn stat_user_sys_micros(path: &str) -> Option<(u64, u64)> {
    // The kernel reports these in USER_HZ ticks, an ABI constant (100 on every Linux
    // architecture this tool builds for), not the configured scheduler HZ.
    const MICROS_PER_TICK: u64 = 10_000;
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last
    // ')' are plain numbers, starting with field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime * MICROS_PER_TICK, stime * MICROS_PER_TICK))
}

/// CPU time of the whole machine so far, all cores, in microseconds: (busy, softirq) from
/// the `cpu` line of `/proc/stat`, busy being everything but idle and iowait. Softirq time
/// (loopback TCP delivery among it) is busy but charged to no process.
pub(crate) fn machine_cpu_micros() -> Option<(u64, u64)> {
    const MICROS_PER_TICK: u64 = 10_000;
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = v.get(..8)?.iter().sum::<u64>() - v[3] - v[4];
    Some((busy * MICROS_PER_TICK, v[6] * MICROS_PER_TICK))
}

/// The server's CPU time over an interval of a scenario.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    start: Option<u64>,
}

impl CpuMeter {
    pub(crate) fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: cpu_micros(pids),
        }
    }

    /// Seconds of CPU the server used since `start`; `None` without pids.
    pub(crate) fn seconds(&self) -> Option<f64> {
        let end = cpu_micros(&self.pids)?;
        Some(end.saturating_sub(self.start?) as f64 / 1e6)
    }
}

/// `cpu_secs` in microseconds per `n` things (`None` when either is missing or zero).
pub(crate) fn micros_per(cpu_secs: Option<f64>, n: u64) -> Option<f64> {
    cpu_secs.filter(|_| n > 0).map(|s| s * 1e6 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_this_process() {
        assert!(stat_cpu_micros("/proc/self/stat").is_some());
        assert_eq!(cpu_micros(&[]), None);
        assert_eq!(micros_per(Some(1.5), 3), Some(500_000.0));
        assert_eq!(micros_per(Some(1.5), 0), None);
        let (busy, softirq) = machine_cpu_micros().unwrap_or_else(|| panic!("/proc/stat"));
        assert!(busy >= softirq);
    }
}
