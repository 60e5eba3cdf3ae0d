//! Resident set size of another process, from `/proc/<pid>/status`.

use std::io;

/// `VmRSS` of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no VmRSS for pid {pid}"),
            )
        })
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_rss() {
        let rss = super::rss_bytes(std::process::id()).unwrap();
        assert!(
            rss > 100 * 1024,
            "a running test process uses more than 100 KiB: {rss}"
        );
    }
}
