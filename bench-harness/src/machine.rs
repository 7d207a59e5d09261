//! What the machine is: CPU model, cores, cache sizes, free memory, and the build's identity
//! (version, git commit, rustc). Everything here degrades to a default or `None` when the
//! information is not available (non-Linux, no git, no rustc on PATH).

use crate::error::{HarnessError, Result};
use std::process::Command;

/// Logical CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The `model name` line of `/proc/cpuinfo`, or the architecture name.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Size in bytes of the cache at `level` (2 or 3) seen by CPU 0, from sysfs.
pub fn cache_bytes(level: u32) -> Option<usize> {
    for idx in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
        let lvl = std::fs::read_to_string(format!("{base}/level")).ok()?;
        if lvl.trim() != level.to_string() {
            continue;
        }
        let ty = std::fs::read_to_string(format!("{base}/type")).unwrap_or_default();
        if ty.trim() == "Instruction" {
            continue;
        }
        let size = std::fs::read_to_string(format!("{base}/size")).ok()?;
        return crate::sweep::parse_bytes(size.trim()).ok();
    }
    None
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The transparent-huge-page mode, the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/enabled` (`always`, `madvise` or `never`).
pub fn transparent_hugepages() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = s.find('[')? + 1;
    let end = start + s[start..].find(']')?;
    Some(s[start..end].to_string())
}

/// Bytes expressed in GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Formats bytes with a binary unit (`1.5 KiB`, `32 MiB`, `2.00 GiB`).
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Refuses an allocation of `bytes` when it exceeds 80% of `available` bytes (when known).
pub fn check_fits(what: &str, bytes: u64, available: Option<u64>) -> Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    if bytes as f64 > 0.8 * avail as f64 {
        return Err(HarnessError::msg(format!(
            "{what} would need {:.2} GiB, have {:.2} GiB available (80% of MemAvailable is the \
             limit); use smaller sizes, fewer layers or --kv-dtype bf16",
            gib(bytes),
            gib(avail)
        )));
    }
    Ok(())
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Short commit of the source tree the binary was built from (`git rev-parse --short HEAD`, run
/// in the crate directory), with `-dirty` when the tree has changes; `None` without git.
pub fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let hash = command_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"])?;
    let dirty = Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// `rustc --version` (of the `rustc` on PATH at run time), or `None`.
pub fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    command_line(&rustc, &["--version"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_format() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(32 << 20), "32 MiB");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
    }

    #[test]
    fn fits() {
        assert!(check_fits("x", 10, None).is_ok());
        assert!(check_fits("x", 79, Some(100)).is_ok());
        let e = check_fits("attention", 3 << 30, Some(2 << 30)).unwrap_err();
        assert!(e.to_string().contains("would need 3.00 GiB, have 2.00 GiB"));
    }
}
