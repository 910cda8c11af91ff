//! Small helpers of requests that the server uses too: shell quoting, seeds, the clock,
//! `--shard`.
use crate::error::{Error, Result};

/// `s` in single quotes for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A seed from the clock and the process id (0 ..= 2^31-1, like the reference app's range).
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut z = (t as u64) ^ ((std::process::id() as u64) << 32) ^ (&t as *const _ as u64);
    z = crate::model::pipeline::splitmix64(z, 0);
    z & 0x7FFF_FFFF
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses `--shard I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Input(format!(
            "--shard must look like I/N with 0 <= I < N, counting from 0 (the 4 shards of a 4-way split are 0/4, 1/4, 2/4, 3/4), got {s:?}"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}
