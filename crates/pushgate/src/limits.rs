//! The open-files limit: raised to the hard limit at start, since every connection is a
//! descriptor.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    let (soft, _) = rlimit::Resource::NOFILE.get()?;
    Ok(soft)
}
