//! The libc calls the host runner makes, each wrapped once: futexes on
//! shared memory (waits and wakes across processes), pinning, the mm
//! syscalls a script's steps are, fork and wait, and the fault-safe probe
//! behind `peek` and `read … expect segv`.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// The last OS error as text.
pub fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// FUTEX_WAIT on `word` while it holds `val`, for at most `timeout`.  Not
/// FUTEX_PRIVATE: the word may be in memory shared between processes.
pub fn futex_wait(word: &AtomicU32, val: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: `word` is a live, aligned u32 for the call's duration; the
    // kernel only reads it and the timespec.  EAGAIN / ETIMEDOUT / EINTR
    // are all "look again" for the callers, which loop.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, val, &ts as *const libc::timespec);
    }
}

/// FUTEX_WAKE every waiter of `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE reads nothing but the address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Pin the calling thread to host CPU `cpu`; then check it runs there.
pub fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (the refusal checks bound it by the host's CPUs).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!("sched_setaffinity(CPU{cpu}): {}", errno()));
    }
    // SAFETY: sched_getcpu takes no arguments.
    let now = unsafe { libc::sched_getcpu() };
    if now != cpu as i32 {
        return Err(format!("pinned to CPU{cpu} but running on CPU{now}"));
    }
    Ok(())
}

/// mmap; `Err` with the errno text.
pub fn mmap(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> Result<u64, String> {
    // SAFETY: a new mapping; MAP_FIXED is never passed (MAP_FIXED_NOREPLACE
    // fails rather than replace), so no memory the program uses is touched.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len as usize, prot, flags, fd, off as libc::off_t) };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as u64)
    }
}

/// A syscall's return value: 0 or the errno text.
pub fn check(rc: i32) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// A page's first word, read by the kernel on this thread's behalf:
/// write(2) of 8 bytes at `addr` into a pipe, then read back.  The copy
/// goes through this CPU's TLB like a user load, but a missing or
/// inaccessible page is EFAULT, not SIGSEGV: None.
pub struct Probe {
    rd: i32,
    wr: i32,
}

impl Probe {
    pub fn new() -> Result<Probe, String> {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is two writable ints, as pipe2 wants.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
        Ok(Probe { rd: fds[0], wr: fds[1] })
    }

    pub fn read(&self, addr: u64) -> Option<u64> {
        // SAFETY: write(2) reads 8 bytes at `addr` in the kernel
        // (copy_from_user): a bad address is EFAULT, never a fault here.
        let n = unsafe { libc::write(self.wr, addr as *const libc::c_void, 8) };
        if n != 8 {
            return None;
        }
        let mut v = 0u64;
        // SAFETY: `v` is 8 writable bytes; the pipe holds the 8 just written.
        let m = unsafe { libc::read(self.rd, &mut v as *mut u64 as *mut libc::c_void, 8) };
        (m == 8).then_some(v)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: both descriptors are this probe's own.
        unsafe {
            libc::close(self.rd);
            libc::close(self.wr);
        }
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// waitpid for `pid` (retrying EINTR).
pub fn wait_for(pid: i32) -> Result<Ended, String> {
    let mut st = 0i32;
    loop {
        // SAFETY: `st` is a writable int; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(format!("waitpid({pid}): {}", errno()));
        }
    }
    Ok(if libc::WIFSIGNALED(st) { Ended::Signal(libc::WTERMSIG(st)) } else { Ended::Code(libc::WEXITSTATUS(st)) })
}

/// A signal's name for messages.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}
