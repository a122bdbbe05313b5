//! Which CPUs shards may run on: parsing `--cores` lists and checking them
//! against the CPUs this process is allowed to use (its affinity mask, as
//! core_affinity reports it), so a bad selection is a startup error instead
//! of a panic inside an executor thread. Also how much CPU a thread used.

/// CPU time the calling thread has used so far (user and system,
/// `CLOCK_THREAD_CPUTIME_ID`): how busy an executor's thread was, for the
/// mesh hop benchmark and the loadgen's self-check.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Upper bound on a core number we will even try; real machines are far below.
const MAX_CORE_ID: usize = 4096;

/// Why a core selection is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("could not read this process's CPU affinity")]
    Affinity,
    #[error("this process may not run on any CPU")]
    NoCpu,
    #[error("invalid core list {spec:?}: {part:?} is not a core number or range like 0-3")]
    Syntax { spec: String, part: String },
    #[error("invalid core range {part:?} in {spec:?}: start is after end")]
    Reversed { spec: String, part: String },
    #[error("core {core} in {spec:?} is out of range")]
    OutOfRange { spec: String, core: usize },
    #[error("core(s) {missing} not available to this process (it may use {allowed}); check --cores against `nproc` and the CPU affinity (taskset -p $$)")]
    NotAllowed { missing: String, allowed: String },
}

/// CPUs this process may run on, ascending.
pub fn allowed_cores() -> Result<Vec<usize>, CoreError> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .ok_or(CoreError::Affinity)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(CoreError::NoCpu);
    }
    Ok(ids)
}

/// The CPUs a `--cores` value names, checked against the affinity mask;
/// without one, every CPU the process may use.
pub fn select(spec: Option<&str>) -> Result<Vec<usize>, CoreError> {
    let allowed = allowed_cores()?;
    match spec {
        Some(spec) => {
            let list = parse_core_list(spec)?;
            check_allowed(&list, &allowed)?;
            Ok(list)
        }
        None => Ok(allowed),
    }
}

/// Parses `0-3,5,7-8` into `[0,1,2,3,5,7,8]`, keeping first-seen order and
/// dropping repeats (one shard per core).
pub fn parse_core_list(spec: &str) -> Result<Vec<usize>, CoreError> {
    let mut out: Vec<usize> = Vec::new();
    let bad = |part: &str| CoreError::Syntax {
        spec: spec.to_owned(),
        part: part.to_owned(),
    };
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(part));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().map_err(|_| bad(part))?,
                b.trim().parse::<usize>().map_err(|_| bad(part))?,
            ),
            None => {
                let n = part.parse::<usize>().map_err(|_| bad(part))?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(CoreError::Reversed {
                spec: spec.to_owned(),
                part: part.to_owned(),
            });
        }
        if hi > MAX_CORE_ID {
            return Err(CoreError::OutOfRange {
                spec: spec.to_owned(),
                core: hi,
            });
        }
        for c in lo..=hi {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Fails with a message naming every requested core the process may not use.
pub fn check_allowed(requested: &[usize], allowed: &[usize]) -> Result<(), CoreError> {
    let missing: Vec<String> = requested
        .iter()
        .filter(|c| !allowed.contains(c))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CoreError::NotAllowed {
        missing: missing.join(","),
        allowed: format_core_list(allowed),
    })
}

/// Formats `[0,1,2,5]` as `0-2,5`.
pub fn format_core_list(cores: &[usize]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_core_list("0"), Ok(vec![0]));
        assert_eq!(parse_core_list("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_core_list("4, 0-1,1"), Ok(vec![4, 0, 1]));
        assert!(parse_core_list("").is_err());
        assert!(parse_core_list("3-1").is_err());
        assert!(parse_core_list("a").is_err());
        assert!(parse_core_list("0,,1").is_err());
        assert!(parse_core_list("99999").is_err());
    }

    #[test]
    fn checks_against_allowed() {
        assert!(check_allowed(&[0, 1], &[0, 1, 2]).is_ok());
        let e = check_allowed(&[0, 7], &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("core(s) 7"), "{e}");
        assert!(e.contains("0-1"), "{e}");
        assert_eq!(format_core_list(&[5, 0, 1, 2]), "0-2,5");
    }
}
