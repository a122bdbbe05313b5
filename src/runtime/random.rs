//! Random bytes from the kernel's CSPRNG, for ids and keys that must not be
//! guessed (session ids, task ids, the request-state key).
//!
//! One place calls `getrandom(2)`: it retries when a signal interrupts the
//! call (`EINTR`) and when the kernel returns fewer bytes than asked, and
//! treats any other failure as fatal (without entropy no id is safe to hand
//! out).

/// Fills `buf` with random bytes from the kernel.
///
/// # Panics
/// If `getrandom(2)` fails for a reason other than an interruption.
pub fn fill(buf: &mut [u8]) {
    fill_with(buf, |chunk| {
        // SAFETY: `chunk` is a valid, writable buffer of `chunk.len()` bytes
        // for the duration of the call; the kernel writes at most that many.
        let n = unsafe { libc::getrandom(chunk.as_mut_ptr().cast(), chunk.len(), 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    });
}

/// [`fill`] over any source that behaves like `getrandom(2)`.
fn fill_with(buf: &mut [u8], mut source: impl FnMut(&mut [u8]) -> std::io::Result<usize>) {
    let mut filled = 0;
    while filled < buf.len() {
        match source(&mut buf[filled..]) {
            Ok(n) => {
                assert!(
                    n > 0 && n <= buf.len() - filled,
                    "getrandom returned {n} bytes for a request of {}",
                    buf.len() - filled
                );
                filled += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("getrandom failed: {e}"),
        }
    }
}

/// `n` random bytes as lowercase hex.
pub fn hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    fill(&mut bytes);
    let mut out = String::with_capacity(2 * N);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_and_short_reads_are_retried() {
        let mut calls = 0;
        let mut buf = [0u8; 8];
        fill_with(&mut buf, |chunk| {
            calls += 1;
            match calls {
                1 => Err(std::io::Error::from_raw_os_error(libc::EINTR)),
                2 => {
                    chunk[..3].fill(1);
                    Ok(3)
                }
                _ => {
                    chunk.fill(2);
                    Ok(chunk.len())
                }
            }
        });
        assert_eq!(calls, 3);
        assert_eq!(buf, [1, 1, 1, 2, 2, 2, 2, 2]);
    }

    #[test]
    #[should_panic(expected = "getrandom failed")]
    fn other_failures_are_fatal() {
        fill_with(&mut [0u8; 4], |_| {
            Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
        });
    }

    #[test]
    fn ids_are_random_hex() {
        let a = hex::<16>();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, hex::<16>());
    }
}
