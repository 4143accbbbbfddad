//! CPU time the whole machine spent between two readings of `/proc/stat`: PostgreSQL, the
//! worker and everything else on it. On a machine that runs nothing else during a bench,
//! busy CPU divided by the actions processed is the CPU per action — a figure that does
//! not move with how fast the (shared, noisy) cores happen to be, unlike throughput.

use std::time::Duration;

/// Linux reports `/proc/stat` in USER_HZ ticks, 100 a second on every architecture
/// (the kernel's `USER_HZ`, independent of `CONFIG_HZ`).
const TICKS_PER_SECOND: u64 = 100;

/// Cumulative busy and steal time of all cores.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    steal: u64,
}

impl MachineCpu {
    /// Read now; None where `/proc/stat` is missing (not Linux).
    pub fn now() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        Some(Self {
            busy: get(0) + get(1) + get(2) + get(5) + get(6),
            steal: get(7),
        })
    }

    /// Busy CPU time since `self` (all cores together), and the time the hypervisor
    /// took from this machine meanwhile (steal: a sign the figures are disturbed).
    pub fn since(&self) -> Option<(Duration, Duration)> {
        let now = Self::now()?;
        let d =
            |a: u64, b: u64| Duration::from_millis(a.saturating_sub(b) * 1000 / TICKS_PER_SECOND);
        Some((d(now.busy, self.busy), d(now.steal, self.steal)))
    }
}
