//! Appending to a recording through a shared memory mapping of its file.
//!
//! A commit copies the session's buffered events into the file's pages in the
//! page cache: no system call per request, and exactly as durable as
//! `write(2)` against a killed process (the pages belong to the kernel, not to
//! the process). Space is reserved ahead with `fallocate(2)` (in steps that
//! grow from 16 KiB to 1 MiB), so a full disk is an error at reservation time,
//! never a `SIGBUS` on a page fault; only a window of 256 KiB is mapped at a
//! time, so a long session's recording does not grow the gateway's memory.
//! The reserved pages of the window are faulted in together
//! (`MADV_POPULATE_WRITE`) when they are reserved or mapped: one system call
//! instead of a page fault on every fourth or so commit, each of which ran
//! the filesystem's fault and `page_mkwrite` paths on the request path.
//!
//! The reserved, not yet written part of the file reads as NUL bytes, which
//! never occur in a recording (JSON escapes them): readers cut a file at its
//! first NUL ([`super::content`]). [`Appender::finish`] (at session end) and
//! dropping the appender cut the file to its content; after a crash, sealing
//! does. A filesystem without `fallocate` falls back to `write(2)`.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

/// Bytes mapped at a time.
const WINDOW: u64 = 256 * 1024;
/// The first and the largest reservation step.
const STEP_MIN: u64 = 16 * 1024;
const STEP_MAX: u64 = 1024 * 1024;

/// An append-only file written through a sliding shared mapping.
pub struct Appender {
    file: File,
    /// Bytes of content (everything after is reserved NUL space).
    len: u64,
    /// File size: content plus reserved space.
    reserved: u64,
    window: Option<Window>,
    /// `fallocate` or `mmap` is not available here: plain `write(2)`.
    plain: bool,
    page: u64,
    /// Pages of the window below this offset are faulted in.
    populated: u64,
    /// The kernel refused `MADV_POPULATE_WRITE` (before Linux 5.14): pages
    /// fault in one by one as they are written.
    no_populate: bool,
}

/// One mapped range of the file.
struct Window {
    ptr: *mut u8,
    start: u64,
}

// SAFETY: the mapping is owned by one Appender, used under its `&mut self`.
unsafe impl Send for Window {}

impl Window {
    fn end(&self) -> u64 {
        self.start + WINDOW
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: ptr/WINDOW are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), WINDOW as usize) };
    }
}

impl Appender {
    /// Append to `file` (opened read-write) after its current content, which
    /// must have no reserved tail (a fresh file, or one cut by sealing).
    pub fn new(file: File) -> std::io::Result<Appender> {
        let len = file.metadata()?.len();
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        Ok(Appender { file, len, reserved: len, window: None, plain: false, page, populated: 0, no_populate: false })
    }

    /// Bytes of content written.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Append `bytes`; returns how many were appended, also on error (the
    /// file then holds an exact prefix, and the rest can be appended later).
    pub fn append(&mut self, mut bytes: &[u8]) -> (usize, std::io::Result<()>) {
        let mut done = 0;
        while !bytes.is_empty() {
            if self.plain {
                return match self.file.write(bytes) {
                    Ok(0) => (done, Err(std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.len += n as u64;
                        self.reserved = self.reserved.max(self.len);
                        done += n;
                        bytes = &bytes[n..];
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => (done, Err(e)),
                };
            }
            if self.len == self.reserved {
                if let Err(e) = self.reserve(bytes.len() as u64) {
                    return (done, Err(e));
                }
                continue;
            }
            if !self.window.as_ref().is_some_and(|w| w.start <= self.len && self.len < w.end()) {
                self.map();
                continue;
            }
            let w = self.window.as_ref().expect("mapped above");
            let room = (self.reserved.min(w.end()) - self.len) as usize;
            let n = room.min(bytes.len());
            // SAFETY: [len, len + n) lies inside the window and below the file
            // size (`reserved`), so every byte is in a mapped page of the file.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), w.ptr.add((self.len - w.start) as usize), n);
            }
            self.len += n as u64;
            done += n;
            bytes = &bytes[n..];
        }
        (done, Ok(()))
    }

    /// Reserve space for at least `want` more bytes: a growing step when the
    /// disk has room, else just what is needed; an error when not even that.
    fn reserve(&mut self, want: u64) -> std::io::Result<()> {
        let step = self.reserved.clamp(STEP_MIN, STEP_MAX).max(want);
        let round = |n: u64| n.div_ceil(self.page) * self.page;
        let mut last = None;
        for target in [round(self.len + step), round(self.len + want)] {
            // SAFETY: plain syscall on an open descriptor.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, target as libc::off_t) };
            if rc == 0 {
                self.reserved = target;
                self.populate();
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)) {
                self.fall_back();
                return Ok(());
            }
            last = Some(e);
        }
        // A failed reservation may still have grown the file part of the way.
        self.reserved = self.file.metadata()?.len().max(self.len);
        Err(last.expect("two attempts"))
    }

    /// Map the window holding offset `len`.
    fn map(&mut self) {
        self.window = None;
        let start = self.len / self.page * self.page;
        // SAFETY: a fresh shared mapping of our own descriptor; the kernel
        // picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                WINDOW as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            self.fall_back();
        } else {
            self.window = Some(Window { ptr: ptr.cast(), start });
            self.populated = start;
            self.populate();
        }
    }

    /// Fault in the window's reserved pages not yet faulted in, in one call.
    /// Only reserved pages (below the file size) are touched, so this can
    /// never raise `SIGBUS`; a failure only means they fault in when written.
    fn populate(&mut self) {
        let Some(w) = &self.window else { return };
        let from = self.populated.max(self.len / self.page * self.page);
        let to = self.reserved.min(w.end());
        if self.no_populate || to <= from {
            return;
        }
        // SAFETY: [from, to) lies inside the window's mapping and below the
        // file's size; populating changes no byte of it.
        let rc = unsafe {
            libc::madvise(w.ptr.add((from - w.start) as usize).cast(), (to - from) as usize, libc::MADV_POPULATE_WRITE)
        };
        if rc == 0 {
            self.populated = to;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            self.no_populate = true;
        }
    }

    /// Give the reserved tail back and write with `write(2)` from now on.
    fn fall_back(&mut self) {
        tracing::debug!("recording falls back to write(2): no fallocate/mmap here");
        self.plain = true;
        let _ = self.finish();
        let _ = self.file.seek(SeekFrom::Start(self.len));
    }

    /// Cut the file to its content (end of session): unmaps, gives the
    /// reserved space back. Appending afterwards reserves again.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.window = None;
        if self.reserved > self.len {
            self.file.set_len(self.len)?;
            self.reserved = self.len;
        }
        Ok(())
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The content length of a recording file of `size` bytes that may end in
/// reserved NUL space (a live session's): where its first NUL is, found by
/// bisection (content never holds one).
pub fn content_len(file: &File, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let nul_at = |at: u64| -> std::io::Result<bool> {
        let mut b = [0u8; 1];
        Ok(file.read_at(&mut b, at)? == 0 || b[0] == 0)
    };
    if size == 0 || !nul_at(size - 1)? {
        return Ok(size);
    }
    // Invariant: no NUL found before `lo`; the byte at `hi` is NUL.
    let (mut lo, mut hi) = (0u64, size - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if nul_at(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wardgate-mapped-{}", crate::util::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
    }

    #[test]
    fn appends_across_windows_reserves_ahead_and_cuts_to_content() {
        let dir = scratch();
        let path = dir.join("r.jsonl");
        let mut a = Appender::new(open(&path)).unwrap();
        let mut want = Vec::new();
        // Lines of odd sizes, across several windows and reservation steps.
        for i in 0..4000u32 {
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat((i % 300) as usize));
            let (n, r) = a.append(line.as_bytes());
            r.unwrap();
            assert_eq!(n, line.len());
            want.extend_from_slice(line.as_bytes());
        }
        assert_eq!(a.written(), want.len() as u64);
        // While live: the file is content plus NUL space; readers see the content.
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= want.len() as u64);
        let live = std::fs::read(&path).unwrap();
        assert_eq!(super::super::content(&live), &want[..]);
        assert_eq!(content_len(&open(&path), size).unwrap(), want.len() as u64);
        a.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Appending after finish reserves again; dropping cuts again.
        a.append(b"tail\n").1.unwrap();
        drop(a);
        want.extend_from_slice(b"tail\n");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Reopened, it continues after its content.
        let mut a = Appender::new(open(&path)).unwrap();
        a.append(b"more\n").1.unwrap();
        drop(a);
        want.extend_from_slice(b"more\n");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn content_len_finds_the_first_nul_of_any_tail() {
        let dir = scratch();
        let path = dir.join("r");
        for (content, tail) in [(0usize, 0usize), (0, 5), (1, 0), (1, 1), (7, 4096), (4096, 1), (5000, 70000)] {
            let mut bytes = vec![b'a'; content];
            bytes.resize(content + tail, 0);
            std::fs::write(&path, &bytes).unwrap();
            let f = File::open(&path).unwrap();
            assert_eq!(content_len(&f, bytes.len() as u64).unwrap(), content as u64, "{content}+{tail}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
