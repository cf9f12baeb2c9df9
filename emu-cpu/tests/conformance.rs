//! The `Smp` conformance suite: the trait seam has a reference
//! implementation (`SyncSmp`) and the threaded machine must agree with it.
//!
//! One deterministic program — user threads of two mms on four CPUs
//! touching, MADV_DONTNEED, mprotect, munmap with table freeing, fork +
//! exit, a CPU going lazy, exit + mmdrop — runs once on the synchronous
//! reference `SyncSmp` (one host thread plays every CPU) and once on the
//! threaded machine (`System`: real CPU threads, IPIs over channels).
//! After every step the observable machine state is recorded: every
//! counter per CPU, CAL interrupts received and IPIs sent per CPU, each
//! CPU's loaded mm and lazy flag (`ArchOps::cpu_mm`) and x86's caught-up
//! tlb_gen, mm_cpumask, and the
//! number of TLB and paging-structure-cache entries per CPU.  The two logs
//! must be identical, for every arch profile.

use std::time::Duration;

use emu_cpu::{MachineConfig, System, WaitPolicy};
use mm_core::config::Arch;
use mm_core::mm::MmStruct;
use mm_core::ops::{dup_mmap, exit_mm, madvise_dontneed, mmap_anon, mprotect, munmap};
use mm_core::stats::Stat;
use mm_core::sync::{Arc, Ordering};
use mm_core::tlb::{enter_lazy_tlb, switch_mm};
use mm_core::{CpuId, Kernel, KernelConfig};

const PS: u64 = 4096;
const BASE: u64 = 0x10_0000_0000;
const NCPU: usize = 4;

type UserFn = Box<dyn FnOnce(&Arc<Kernel>, &Arc<MmStruct>) + Send>;
type KthreadFn = Box<dyn FnOnce(&Arc<Kernel>) + Send>;

/// What the program needs from a machine.
trait Runner {
    fn kernel(&self) -> &Arc<Kernel>;
    /// A thread of `mm` runs `f` on `cpu`, then the CPU idles lazily.
    fn user(&self, cpu: u32, mm: &Arc<MmStruct>, f: UserFn);
    /// A kernel thread runs `f` on `cpu` (lazy TLB).
    fn kthread(&self, cpu: u32, f: KthreadFn);
    /// Let RCU callbacks run to completion (grace periods end).
    fn settle(&self);
}

struct SyncRunner(Arc<Kernel>);

impl Runner for SyncRunner {
    fn kernel(&self) -> &Arc<Kernel> {
        &self.0
    }
    fn user(&self, cpu: u32, mm: &Arc<MmStruct>, f: UserFn) {
        self.0.set_cpu(CpuId(cpu));
        switch_mm(&self.0, mm);
        f(&self.0, mm);
        enter_lazy_tlb(&self.0);
    }
    fn kthread(&self, cpu: u32, f: KthreadFn) {
        self.0.set_cpu(CpuId(cpu));
        enter_lazy_tlb(&self.0);
        f(&self.0);
    }
    fn settle(&self) {
        self.0.rcu_barrier();
    }
}

struct MachineRunner(System);

impl Runner for MachineRunner {
    fn kernel(&self) -> &Arc<Kernel> {
        self.0.kernel()
    }
    fn user(&self, cpu: u32, mm: &Arc<MmStruct>, f: UserFn) {
        self.0.run_user(CpuId(cpu), mm, f).unwrap();
    }
    fn kthread(&self, cpu: u32, f: KthreadFn) {
        self.0.run_kthread(CpuId(cpu), f).unwrap();
    }
    fn settle(&self) {
        self.0.quiesce(Duration::from_secs(10)).unwrap();
    }
}

/// Everything observable after a step.
fn observe(k: &Kernel, mms: &[&Arc<MmStruct>]) -> String {
    let mut s = String::new();
    for c in 0..NCPU {
        let cpu = CpuId(c as u32);
        let st = &k.cpus[c];
        let on = k.arch.cpu_mm(k, cpu);
        let tlb = k.hw.tlb(cpu);
        s += &format!(
            "CPU{c}: loaded={} lazy={} x86_gen={} cal={} sent={} tlb={} psc={} |",
            on.mm,
            on.lazy,
            st.tlb_gen.load(Ordering::SeqCst),
            k.smp.call_interrupts(cpu),
            k.smp.ipis_sent(cpu),
            tlb.leaf_entries().count(),
            tlb.psc_entries().count(),
        );
        drop(tlb);
        // RCU callbacks run wherever a grace period is noticed (the idle
        // loop of any CPU here, the caller of rcu_barrier in SyncSmp), so
        // tables_freed is compared as a total below, not per CPU.
        for stat in Stat::ALL.iter().filter(|s| **s != Stat::TablesFreed) {
            let v = k.stats.get_cpu(cpu, *stat);
            if v != 0 {
                s += &format!(" {}={v}", stat.name());
            }
        }
        s += "\n";
    }
    for mm in mms {
        s += &format!(
            "mm{}: cpumask={:?} tlb_gen={}\n",
            mm.id,
            mm.cpumask.snapshot(),
            mm.tlb_gen.load(Ordering::SeqCst)
        );
    }
    s += &format!(
        "tables_freed={} in_use={:?} violations={}\n",
        k.stats.get(Stat::TablesFreed),
        k.alloc.in_use(),
        k.san.count()
    );
    s
}

/// The program; returns the observation after every step.
fn program(r: &dyn Runner) -> Vec<String> {
    let k = r.kernel().clone();
    let mut log = Vec::new();
    let mut mms: Vec<Arc<MmStruct>> = Vec::new();
    let slot = Arc::new(mm_core::sync::Mutex::new(None));
    let s2 = slot.clone();
    r.kthread(0, Box::new(move |k| *s2.lock() = Some((k.mm_alloc(), k.mm_alloc()))));
    let (a, b) = slot.lock().take().unwrap();
    mms.push(a.clone());
    mms.push(b.clone());
    let step = |log: &mut Vec<String>, name: &str| {
        r.settle();
        let refs: Vec<&Arc<MmStruct>> = mms.iter().collect();
        log.push(format!("== {name}\n{}", observe(&k, &refs)));
    };

    // 1. mm A maps 2 MiB + 64 pages; each CPU touches its quarter.
    let pages = 512 + 64;
    r.user(0, &a, Box::new(move |k, mm| mmap_anon(k, mm, BASE, pages * PS, true).unwrap()));
    for c in 0..NCPU as u32 {
        r.user(
            c,
            &a,
            Box::new(move |k, mm| {
                for p in (u64::from(c)..pages).step_by(NCPU) {
                    k.write_user(mm, BASE + p * PS, p).unwrap();
                }
            }),
        );
    }
    step(&mut log, "touch");
    // 2. mm B on CPUs 2 and 3 (they switch away from A: context switch).
    r.user(
        2,
        &b,
        Box::new(|k, mm| {
            mmap_anon(k, mm, BASE, 16 * PS, true).unwrap();
            k.write_user(mm, BASE, 1).unwrap();
        }),
    );
    r.user(3, &b, Box::new(|k, mm| k.write_user(mm, BASE + PS, 2).map(|_| ()).unwrap()));
    step(&mut log, "switch to B");
    // 3. One-page MADV_DONTNEED of A from CPU0: ranged flush; CPUs 1 (lazy
    //    in A) and 2,3 (now in B) are skipped or trimmed per arch.
    r.user(0, &a, Box::new(|k, mm| madvise_dontneed(k, mm, BASE + PS, PS).unwrap()));
    step(&mut log, "madvise one page");
    // 4. A large DONTNEED: above the 33-page ceiling, a full flush.
    r.user(1, &a, Box::new(|k, mm| madvise_dontneed(k, mm, BASE, 100 * PS).unwrap()));
    step(&mut log, "madvise 100 pages");
    // 5. mprotect read-only, then a read on CPU0.
    r.user(
        0,
        &a,
        Box::new(|k, mm| {
            mprotect(k, mm, BASE, 64 * PS, true, false).unwrap();
            assert!(k.write_user(mm, BASE + 200 * PS, 3).is_ok());
            assert!(k.write_user(mm, BASE + 2 * PS, 3).is_err());
        }),
    );
    step(&mut log, "mprotect");
    // 6. A kernel thread on CPU1 (lazy), then munmap of the whole 2 MiB
    //    region from CPU0: tables are freed, so lazy CPUs are interrupted.
    r.kthread(1, Box::new(|_| {}));
    r.user(0, &a, Box::new(|k, mm| munmap(k, mm, BASE, 512 * PS).unwrap()));
    step(&mut log, "munmap with freed tables");
    // 7. fork of A on CPU3, the child writes and exits there.
    r.user(
        3,
        &a,
        Box::new(|k, mm| {
            let child = dup_mmap(k, mm).unwrap();
            switch_mm(k, &child);
            k.write_user(&child, BASE + 520 * PS, 9).unwrap();
            exit_mm(k, &child);
            switch_mm(k, mm);
            assert_eq!(k.read_user(mm, BASE + 520 * PS).unwrap(), 520);
        }),
    );
    step(&mut log, "fork + child exit");
    // 8. Both mms exit.
    r.user(2, &b, Box::new(|k, mm| exit_mm(k, mm)));
    r.user(1, &a, Box::new(|k, mm| exit_mm(k, mm)));
    step(&mut log, "exit");
    // 9. The exited mms' PGDs are still held by the CPUs that have them as
    // active_mm (lazily: mm_count, no IPI at exit); each lets go at its next
    // switch (`drop_lazy_mm` stands for it), the last one frees the PGD.
    for c in 0..NCPU as u32 {
        r.kthread(c, Box::new(|k| mm_core::tlb::drop_lazy_mm(k)));
    }
    step(&mut log, "lazy CPUs let go of the exited mms");
    log
}

fn conformance(arch: Arch) {
    let kc = KernelConfig { nr_cpus: NCPU, arch, ..KernelConfig::default() };
    let reference = program(&SyncRunner(Kernel::new_sync(kc.clone(), NCPU)));
    for wait in [WaitPolicy::Spin, WaitPolicy::Park, WaitPolicy::Adaptive] {
        let mc = MachineConfig { wait, pin: false, ..MachineConfig::default() };
        let threaded = program(&MachineRunner(System::new(kc.clone(), mc).unwrap()));
        for (i, (r, t)) in reference.iter().zip(&threaded).enumerate() {
            assert_eq!(r, t, "{arch:?} {wait:?}: step {i} differs between SyncSmp and the threaded machine");
        }
        assert_eq!(reference.len(), threaded.len());
    }
    let last = reference.last().unwrap();
    assert!(last.contains("violations=0"), "{last}");
    assert!(last.contains("anon: 0, file: 0, page_table: 0"), "leaked frames: {last}");
}

#[test]
fn conformance_x86() {
    conformance(Arch::X86);
}

#[test]
fn conformance_arm64() {
    conformance(Arch::Arm64);
}

#[test]
fn conformance_generic() {
    conformance(Arch::GenericNoRange);
}
