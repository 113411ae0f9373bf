//! What the kernel says about a process: CPU seconds, peak resident memory,
//! and how many TCP connections it holds to PostgreSQL.
//!
//! Everything is read from `/proc` (Linux), so a figure costs no cooperation
//! from the process measured.

use std::{
    collections::{HashMap, HashSet},
    fs,
};

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on Linux x86-64).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The numeric fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let (_, rest) = raw.rsplit_once(')')?;
    Some(
        rest.split_whitespace()
            .skip(1) // state
            .map(|f| {
                f.parse::<i64>()
                    .map_or(0, |v| u64::try_from(v).unwrap_or(0))
            })
            .collect(),
    )
}

/// CPU seconds (user + system) a live process has used so far; with
/// `children`, those of its waited-for children too.
pub fn cpu_seconds(pid: u32, children: bool) -> Option<f64> {
    let f = stat_fields(pid)?;
    // After the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime.
    let own = f.get(10)? + f.get(11)?;
    let reaped = if children { f.get(12)? + f.get(13)? } else { 0 };
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    Some((own + reaped) as f64 / ticks_per_second())
}

/// The whole machine's CPU time so far, summed over its CPUs, from the
/// first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    /// Seconds spent running anything: user, nice, system, interrupts.
    pub busy_secs: f64,
    /// Seconds a virtual CPU was ready to run but the hypervisor ran
    /// something else.
    pub steal_secs: f64,
}

/// [`MachineCpu`] now.
pub fn machine_cpu() -> Option<MachineCpu> {
    parse_machine_cpu(&fs::read_to_string("/proc/stat").ok()?, ticks_per_second())
}

fn parse_machine_cpu(stat: &str, ticks_per_second: f64) -> Option<MachineCpu> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; a
    // guest's time is already counted in user and nice.
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    Some(MachineCpu {
        busy_secs: busy as f64 / ticks_per_second,
        steal_secs: field(7) as f64 / ticks_per_second,
    })
}

/// A `VmXxx:` line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let raw = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size (`VmHWM`) in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    #[expect(clippy::cast_precision_loss, reason = "KiB")]
    status_kib(pid, "VmHWM:").map(|k| k as f64 / 1024.0)
}

/// Resident set size now (`VmRSS`) in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    #[expect(clippy::cast_precision_loss, reason = "KiB")]
    status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0)
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    let raw = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Live children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(pid))
        .collect()
}

/// CPU seconds of PostgreSQL as a whole: the postmaster, every backend it
/// has reaped, and every live backend.
pub fn postgres_cpu_seconds(postmaster: u32) -> Option<f64> {
    let mut total = cpu_seconds(postmaster, true)?;
    for child in children(postmaster) {
        total += cpu_seconds(child, true).unwrap_or(0.0);
    }
    Some(total)
}

/// Socket inodes a process holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Established TCP connections from each of `pids` to local port
/// `remote_port` (PostgreSQL's), found by matching each process's socket
/// inodes against `/proc/net/tcp{,6}`. Reading those tables walks every
/// socket bucket of the network namespace (about a millisecond of kernel
/// time each), so they are read once for all the processes.
pub fn connections_to_port(pids: &[u32], remote_port: u16) -> HashMap<u32, usize> {
    let mut owner: HashMap<u64, u32> = HashMap::new();
    for pid in pids {
        owner.extend(socket_inodes(*pid).into_iter().map(|inode| (inode, *pid)));
    }
    let mut counts: HashMap<u32, usize> = pids.iter().map(|pid| (*pid, 0)).collect();
    if owner.is_empty() {
        return counts;
    }
    for table in ["tcp", "tcp6"] {
        let Ok(raw) = fs::read_to_string(format!("/proc/self/net/{table}")) else {
            continue;
        };
        for line in raw.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(rem), Some(state), Some(inode)) = (cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port = rem
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 01 = ESTABLISHED.
            if port != Some(remote_port) || *state != "01" {
                continue;
            }
            if let Some(pid) = inode.parse::<u64>().ok().and_then(|i| owner.get(&i)) {
                *counts.entry(*pid).or_default() += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me, false).is_some());
        assert!(peak_rss_mib(me).is_some_and(|m| m > 0.0));
        assert!(rss_mib(me).is_some_and(|m| m > 0.0));
        assert!(parent(me).is_some());
    }

    #[test]
    fn the_machine_line_of_proc_stat_splits_into_busy_and_stolen_time() {
        let stat =
            "cpu  300 20 100 5000 40 5 15 60 7 0\ncpu0 150 10 50 2500 20 2 7 30 3 0\nintr 1\n";
        assert_eq!(
            parse_machine_cpu(stat, 100.0),
            Some(MachineCpu {
                busy_secs: 4.4,
                steal_secs: 0.6,
            })
        );
        assert_eq!(parse_machine_cpu("cpu0 1 2 3\n", 100.0), None);
        assert!(machine_cpu().is_some_and(|m| m.busy_secs > 0.0));
    }

    #[test]
    fn connections_to_a_port_are_counted_for_the_process_that_holds_them() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let before = connections_to_port(&[me], port)[&me];
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // The accepted ends have the port as their local one: not counted.
        let _accepted = listener.accept().expect("accept");
        assert_eq!(connections_to_port(&[me], port)[&me], before + 2);
        // A process that holds none of them counts none.
        let other = parent(me).expect("parent");
        assert_eq!(connections_to_port(&[other], port)[&other], 0);
    }
}
