//! Host-kernel anchors: the real Linux paths the emulator is compared with,
//! measured in the same process and run as the emulated figures.
//!
//! - `HostIpi`: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` with a second
//!   thread of this process spinning on another core.  The kernel sends an
//!   IPI to every CPU currently running a thread of this mm and waits for it
//!   (`smp_call_function_many(..., ipi_mb, wait = 1)`): one host IPI round
//!   trip plus a syscall.
//! - `host_munmap_ns_per_page`: munmap of a region of touched 4 KiB pages
//!   (THP off for the region with MADV_NOHUGEPAGE), timed alone.
//! - `HostDontneed`: touch one page then `madvise(MADV_DONTNEED)` it, with or
//!   without a sibling thread spinning on another core (with the sibling the
//!   zap's TLB flush is a real cross-CPU shootdown).
//!
//! Every libc call checks its return value; a missing facility (membarrier
//! not compiled in, a single-core host) is an `Err(String)` saying so, never
//! a panic, so the caller can skip that anchor with a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Host page size the anchors assume (checked at run time).
pub const HOST_PAGE: usize = 4096;

// include/uapi/linux/membarrier.h
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier(2) takes (int cmd, unsigned int flags, int cpu_id)
    // by value and touches no user memory; any cmd value is safe to pass
    // (unknown ones fail with EINVAL).
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) }
}

fn check_page_size() -> Result<(), String> {
    // SAFETY: sysconf only reads a system constant.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps != HOST_PAGE as libc::c_long {
        return Err(format!("host page size is {ps}, the anchors assume {HOST_PAGE}"));
    }
    Ok(())
}

/// CPU time consumed by the calling thread so far (user + system), in ns.
/// Unlike wall time it does not grow while the thread is preempted, so on a
/// shared host it isolates single-threaded work from other jobs (they still
/// share caches and memory bandwidth).
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "{}", errno_msg("clock_gettime(CLOCK_THREAD_CPUTIME_ID)"));
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall time and this thread's CPU time of one measured section.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timed {
    pub wall: Duration,
    pub cpu_ns: u64,
}

impl Timed {
    /// Run `f`, measuring both clocks.
    pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Timed) {
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let r = f();
        let wall = t0.elapsed();
        let cpu_ns = thread_cpu_ns() - c0;
        (r, Timed { wall, cpu_ns })
    }
}

/// Saves this thread's CPU affinity and restores it on drop.
pub struct AffinityGuard {
    saved: libc::cpu_set_t,
}

impl AffinityGuard {
    /// Pin the calling thread to host CPU `cpu`.
    pub fn pin(cpu: usize) -> Result<Self, String> {
        // SAFETY: cpu_set_t is a plain bitmap; all-zero is a valid (empty) set.
        let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable cpu_set_t of the size passed;
        // pid 0 means the calling thread.
        let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) };
        if r != 0 {
            return Err(errno_msg("sched_getaffinity"));
        }
        pin_current(cpu)?;
        Ok(AffinityGuard { saved })
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // SAFETY: `saved` is the cpu_set_t sched_getaffinity filled in; pid 0
        // is the calling thread (the guard is not Send, so the same thread).
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.saved) };
        if r != 0 {
            eprintln!("host anchors: {}", errno_msg("sched_setaffinity (restore)"));
        }
    }
}

/// Pin the calling thread to host CPU `cpu` (the kernel's CPU number, not
/// an index into the current affinity mask: threads inherit the mask, so a
/// helper started by a pinned thread must still reach the other core).
pub fn pin_current(cpu: usize) -> Result<(), String> {
    let n = host_cores();
    if cpu >= n {
        return Err(format!("host has {n} online cores, no core {cpu}"));
    }
    // SAFETY: cpu_set_t is a plain bitmap; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < online cores <= CPU_SETSIZE, within the bitmap.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(errno_msg(&format!("sched_setaffinity(CPU{cpu})")));
    }
    Ok(())
}

/// Online host cores (whatever this thread's affinity mask is).
pub fn host_cores() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}

/// A thread of this process busy on host core `cpu` until dropped.
struct Spinner {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Spinner {
    fn start(cpu: usize) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("host-spinner{cpu}"))
            .spawn(move || {
                let r = pin_current(cpu);
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    while !s.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
            })
            .map_err(|e| format!("spawn spinner: {e}"))?;
        // Constructed before the check so an error still stops the thread.
        let sp = Spinner { stop, handle: Some(handle) };
        rx.recv().map_err(|_| "spinner died".to_string())??;
        // Let it get onto its core.
        std::thread::sleep(Duration::from_millis(2));
        Ok(sp)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The host IPI anchor: this thread pinned to core 0, a sibling spinning on
/// core 1, membarrier registered.  Drop restores the affinity and stops the
/// sibling.
pub struct HostIpi {
    _spinner: Option<Spinner>,
    _pin: AffinityGuard,
}

impl HostIpi {
    /// Check membarrier support, register, pin and start the sibling.
    pub fn start() -> Result<Self, String> {
        Self::start_with(true)
    }

    /// `start`, or with `sibling == false` no other thread runs: membarrier
    /// then interrupts nobody, which gives the syscall's own cost (the
    /// baseline the IPI round trip adds to).
    pub fn start_with(sibling: bool) -> Result<Self, String> {
        if sibling && host_cores() < 2 {
            return Err("host has one core: membarrier would send no IPI".into());
        }
        let q = membarrier(MEMBARRIER_CMD_QUERY);
        if q < 0 {
            return Err(errno_msg("membarrier(QUERY) (kernel without CONFIG_MEMBARRIER?)"));
        }
        if q & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0 {
            return Err(format!("membarrier: PRIVATE_EXPEDITED not supported (QUERY mask {q:#x})"));
        }
        if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0 {
            return Err(errno_msg("membarrier(REGISTER_PRIVATE_EXPEDITED)"));
        }
        let pin = AffinityGuard::pin(0)?;
        let spinner = if sibling { Some(Spinner::start(1)?) } else { None };
        let me = HostIpi { _spinner: spinner, _pin: pin };
        me.call()?; // first call: fail early, warm up
        Ok(me)
    }

    /// One membarrier(PRIVATE_EXPEDITED).
    #[inline]
    pub fn call(&self) -> Result<(), String> {
        if membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
            return Err(errno_msg("membarrier(PRIVATE_EXPEDITED)"));
        }
        Ok(())
    }

    /// Time `iters` calls.
    pub fn time(&self, iters: u64) -> Result<Duration, String> {
        let t0 = Instant::now();
        for _ in 0..iters {
            self.call()?;
        }
        Ok(t0.elapsed())
    }
}

/// An anonymous private mapping, unmapped on drop unless `munmap` was called.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    /// mmap `len` bytes, THP off for the region, every page touched (written).
    fn touched(len: usize) -> Result<Region, String> {
        check_page_size()?;
        // SAFETY: anonymous private mapping at a kernel-chosen address; no
        // existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno_msg(&format!("mmap({len})")));
        }
        let r = Region { ptr: p.cast(), len };
        // SAFETY: [p, p+len) is the mapping just created.
        if unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) } != 0 {
            return Err(errno_msg("madvise(MADV_NOHUGEPAGE)"));
        }
        for off in (0..len).step_by(HOST_PAGE) {
            // SAFETY: off < len, inside the writable mapping owned by `r`.
            unsafe { r.ptr.add(off).write_volatile(1) };
        }
        Ok(r)
    }

    /// munmap the whole region; returns how long the syscall took.
    fn munmap(mut self) -> Result<Timed, String> {
        let (p, len) = (self.ptr, self.len);
        self.len = 0; // Drop does nothing now
                      // SAFETY: [p, p+len) is this region's mapping and nothing borrows it.
        let (r, t) = Timed::measure(|| unsafe { libc::munmap(p.cast(), len) });
        if r != 0 {
            return Err(errno_msg("munmap"));
        }
        Ok(t)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: as in `munmap`; the region is not used after drop.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// Host munmap of `bytes` of touched 4 KiB pages: ns per page (the touch
/// is not timed).
pub fn host_munmap_ns_per_page(bytes: usize) -> Result<f64, String> {
    Ok(host_munmap_timed(bytes)?.wall.as_nanos() as f64 / (bytes / HOST_PAGE) as f64)
}

/// Host munmap of `bytes` of touched 4 KiB pages: wall and CPU time of the
/// syscall alone.
pub fn host_munmap_timed(bytes: usize) -> Result<Timed, String> {
    Region::touched(bytes)?.munmap()
}

/// Touch + madvise(MADV_DONTNEED) of one page, in a loop.
pub struct HostDontneed {
    region: Region,
    _spinner: Option<Spinner>,
    _pin: AffinityGuard,
}

impl HostDontneed {
    /// Pinned to core 0; with `sibling`, a thread of this process spins on
    /// core 1 so every zap's flush must interrupt it.
    pub fn start(sibling: bool) -> Result<Self, String> {
        if sibling && host_cores() < 2 {
            return Err("host has one core: no sibling core for the shootdown".into());
        }
        let region = Region::touched(HOST_PAGE)?;
        let pin = AffinityGuard::pin(0)?;
        let spinner = if sibling { Some(Spinner::start(1)?) } else { None };
        Ok(HostDontneed { region, _spinner: spinner, _pin: pin })
    }

    /// Time `iters` (touch, madvise DONTNEED) pairs.
    pub fn time(&self, iters: u64) -> Result<Duration, String> {
        let p = self.region.ptr;
        let t0 = Instant::now();
        for i in 0..iters {
            // SAFETY: p is the first byte of this one-page writable mapping;
            // after DONTNEED the next write faults a fresh zero page in.
            unsafe { p.write_volatile(i as u8) };
            // SAFETY: [p, p+4096) is our mapping; DONTNEED only drops its pages.
            if unsafe { libc::madvise(p.cast(), HOST_PAGE, libc::MADV_DONTNEED) } != 0 {
                return Err(errno_msg("madvise(MADV_DONTNEED)"));
            }
        }
        Ok(t0.elapsed())
    }
}
