//! File-system helpers for outputs: comparing paths, temporary ("partial") names, removing the
//! partial files a killed process left behind, and removing the current partial files when the
//! process is interrupted (SIGINT, SIGTERM, SIGHUP).
//!
//! Temporary names look like `.<stem>.partial-<pid>-<n>-<host><ext>` in the destination folder:
//! hidden, and carrying the writer's process id and host. A later run that writes the same
//! output removes such files when their process is gone ([`clean_stale_partials`]); a partial
//! file from another host (a shared folder) or from a live process is never touched.
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// `p` made absolute (against the current folder) with `.` and `..` resolved and symbolic links
/// resolved for the part of it that exists. Never fails: a path that cannot be resolved is
/// returned lexically normalised.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let norm = lexical(&abs);
    // Canonicalise the longest existing ancestor, keep the rest as written.
    let mut head = norm.clone();
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = head.canonicalize() {
            let mut r = c;
            for t in tail.iter().rev() {
                r.push(t);
            }
            return r;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(n), Some(parent)) => {
                tail.push(n);
                head = parent.to_path_buf();
            }
            _ => return norm,
        }
    }
}

fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether `a` and `b` name the same file (after resolving links, `.` and `..`).
pub fn same_path(a: &Path, b: &Path) -> bool {
    resolve(a) == resolve(b)
}

/// Whether `inner` is `outer` or lies inside it.
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    resolve(inner).starts_with(resolve(outer))
}

/// This host's name reduced to `[A-Za-z0-9_]` (at most 32 characters), "host" if unknown.
pub fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let raw = hostname().unwrap_or_default();
        let t: String = raw
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(32)
            .collect();
        if t.is_empty() {
            "host".into()
        } else {
            t
        }
    })
}

#[cfg(unix)]
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len() - 1` bytes and outlives the call; the last
    // byte stays 0, so the result is NUL-terminated even when the name was truncated.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return None;
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(not(unix))]
fn hostname() -> Option<String> {
    std::env::var("COMPUTERNAME").ok()
}

/// Whether process `pid` exists on this host (true when that cannot be told).
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return true;
        };
        if p <= 0 {
            return true;
        }
        // SAFETY: kill with signal 0 sends nothing; it only checks that process `p` (> 0, so
        // never a process group) exists. It touches no memory of ours.
        if unsafe { libc::kill(p, 0) } == 0 {
            return true;
        }
        // ESRCH: no such process; EPERM: it exists but belongs to someone else.
        std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The temporary name for `final_path` with counter `n`: `.<stem>.partial-<pid>-<n>-<host><ext>`
/// where `<ext>` is the final extension (kept last: FFmpeg picks the container from it).
pub fn partial_name(final_path: &Path, n: usize) -> Option<PathBuf> {
    let name = final_path.file_name()?.to_string_lossy().into_owned();
    let (stem, ext) = split_ext(final_path, &name);
    Some(parent_dir(final_path).join(format!(
        ".{stem}.partial-{}-{n}-{}{ext}",
        std::process::id(),
        host_tag()
    )))
}

fn split_ext(p: &Path, name: &str) -> (String, String) {
    let ext = p
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let stem = name.strip_suffix(&ext).unwrap_or(name).to_string();
    (stem, ext)
}

/// The folder `p` is in (`.` for a bare file name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes the partial files (or folders) for `final_path` that a process of this host which
/// no longer runs left behind (killed, power loss). Returns the paths removed.
pub fn clean_stale_partials(final_path: &Path) -> Vec<PathBuf> {
    let Some(name) = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    let (stem, ext) = split_ext(final_path, &name);
    let dir = parent_dir(final_path);
    let prefix = format!(".{stem}.partial-");
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let fname = e.file_name();
        let Some(f) = fname.to_str() else { continue };
        let Some(rest) = f.strip_prefix(&prefix).and_then(|r| r.strip_suffix(&ext)) else {
            continue;
        };
        // rest = <pid>-<n>-<host>
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(n), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), true) = (pid.parse::<u32>(), n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        if host != host_tag() || pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let ok = if p.is_dir() && !is_symlink(&p) {
            std::fs::remove_dir_all(&p).is_ok()
        } else {
            std::fs::remove_file(&p).is_ok()
        };
        if ok {
            removed.push(p);
        }
    }
    removed
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// A path for messages and JSON: lossy UTF-8 (a file name that is not valid UTF-8 shows U+FFFD).
pub fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Like [`lossy`] for an `OsStr`.
pub fn lossy_os(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

// ----- removing partial files when interrupted ------------------------------------------------

#[cfg(unix)]
mod interrupt {
    use std::os::raw::{c_char, c_int};
    use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

    const SLOTS: usize = 64;
    #[allow(clippy::declare_interior_mutable_const)]
    const NULL: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());
    static PATHS: [AtomicPtr<c_char>; SLOTS] = [NULL; SLOTS];
    static INSTALLED: AtomicBool = AtomicBool::new(false);

    /// The signals that remove the partial files.
    const SIGNALS: [c_int; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM];

    extern "C" fn on_signal(sig: c_int) {
        // Only async-signal-safe calls here (POSIX signal-safety(7)): atomic loads, unlink,
        // write, _exit. No allocation, no locks, no std I/O.
        let mut n = 0;
        for s in PATHS.iter() {
            let p = s.load(Ordering::SeqCst);
            // SAFETY: a non-null slot holds a NUL-terminated string from `CString::into_raw`
            // that is never freed (see `unregister`), so the pointer is valid here.
            if !p.is_null() && unsafe { libc::unlink(p) } == 0 {
                n += 1;
            }
        }
        let msg: &[u8] = if n > 0 {
            b"\ncontentv: interrupted; the unfinished output was removed\n"
        } else {
            b"\ncontentv: interrupted\n"
        };
        // SAFETY: `msg` is a static byte string valid for `msg.len()` bytes; write and _exit
        // are async-signal-safe. _exit ends the process without running atexit handlers or
        // destructors, which could deadlock inside a signal handler.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }

    pub fn install() {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return;
        }
        for sig in SIGNALS {
            // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); the
            // fields set below are a plain handler (no SA_SIGINFO) of the signature
            // `extern "C" fn(c_int)` that sigaction expects, and the handler only makes
            // async-signal-safe calls. `act` lives across the call; the old action is not
            // asked for (null). SA_RESTART is what glibc's `signal()`, used before, sets.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
                act.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
    }

    pub fn register(path: &std::path::Path) -> Option<usize> {
        if !INSTALLED.load(Ordering::SeqCst) {
            return None;
        }
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let p = c.into_raw();
        for (i, s) in PATHS.iter().enumerate() {
            if s.compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Some(i);
            }
        }
        // All slots busy: not registered (the next run still removes the file).
        // SAFETY: `p` came from `into_raw` above and was never published to a slot, so this
        // is its only owner.
        drop(unsafe { std::ffi::CString::from_raw(p) });
        None
    }

    pub fn unregister(slot: usize) {
        // The string is deliberately leaked: a signal handler on another thread may be reading
        // it right now, and a few bytes per output are cheap.
        PATHS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

#[cfg(not(unix))]
mod interrupt {
    pub fn install() {}
    pub fn register(_: &std::path::Path) -> Option<usize> {
        None
    }
    pub fn unregister(_: usize) {}
}

/// Makes SIGINT / SIGTERM / SIGHUP remove the registered partial files before the process
/// exits (status 128 + signal). Called once by the command line; libraries and tests that do
/// not call it keep the default signal behaviour.
pub fn install_interrupt_cleanup() {
    interrupt::install();
}

/// Writes `bytes` to `path` through a hidden partial file that is renamed into place when
/// complete; the partial file is removed on an error or an interruption, and partial files of
/// `path` left by killed runs of this host are cleaned up first.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    clean_stale_partials(path);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = partial_name(path, n).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        )
    })?;
    let _guard = InterruptGuard::new(&tmp);
    let r = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A partial file removed if the process is interrupted while it is registered.
pub struct InterruptGuard(Option<usize>);

impl InterruptGuard {
    pub fn new(path: &Path) -> InterruptGuard {
        InterruptGuard(interrupt::register(path))
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            interrupt::unregister(s);
        }
    }
}

/// Why `p` is not a usable file (`want_dir` false) or folder (`want_dir` true), worded as the
/// rest of a sentence that starts with the path ("is missing", "is a folder, not a file", "is a
/// symbolic link to X, which does not exist ..."): `None` when it is one. A path that exists
/// with the wrong type is reported as such, not as missing.
pub fn path_kind_problem(p: &Path, want_dir: bool) -> Option<String> {
    let want = if want_dir { "folder" } else { "file" };
    match std::fs::symlink_metadata(p) {
        Err(_) => Some("is missing".into()),
        Ok(m) => match std::fs::metadata(p) {
            Err(_) if m.file_type().is_symlink() => Some(format!(
                "is a symbolic link to {}, which does not exist (a dangling link), not a {want}",
                std::fs::read_link(p).map_or_else(|_| "?".into(), |t| t.display().to_string())
            )),
            Err(e) => Some(format!("cannot be read: {e}")),
            Ok(t) if t.is_dir() && !want_dir => Some("is a folder, not a file".into()),
            Ok(t) if t.is_file() && want_dir => Some("is a file, not a folder".into()),
            Ok(t) if !t.is_dir() && !t.is_file() => {
                Some(format!("is neither a file nor a folder, not a {want}"))
            }
            Ok(_) => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compare_after_normalising() {
        let d = std::env::temp_dir().join(format!("contentv-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        assert!(same_path(&d.join("a/b/../x.mp4"), &d.join("a/x.mp4")));
        assert!(same_path(&d.join("a/./b"), &d.join("a/b/")));
        assert!(is_within(&d.join("a/b/new/q"), &d.join("a")));
        assert!(is_within(&d.join("a"), &d.join("a")));
        assert!(!is_within(&d.join("ab"), &d.join("a")));
        assert!(!is_within(&d, &d.join("a")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn stale_partials_of_dead_processes_are_removed() {
        let d = std::env::temp_dir().join(format!("contentv-partials-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join("v.mp4");
        let mine = partial_name(&out, 0).unwrap();
        assert!(mine
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".v.partial-"));
        assert!(mine.to_string_lossy().ends_with(".mp4"));
        // a dead pid on this host (pid 0x7fff_fff0 does not exist), one from another host,
        // our own, and an unrelated file
        let dead = d.join(format!(".v.partial-2147483632-0-{}.mp4", host_tag()));
        let other_host = d.join(".v.partial-2147483632-0-elsewhere.mp4");
        let other_name = d.join(format!(".w.partial-2147483632-0-{}.mp4", host_tag()));
        for p in [&mine, &dead, &other_host, &other_name] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = clean_stale_partials(&out);
        assert_eq!(removed, vec![dead.clone()]);
        assert!(mine.exists() && other_host.exists() && other_name.exists() && !dead.exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
