//! Physical memory: `nr_frames` frames of `words_per_frame` 64-bit words.
//!
//! A frame is either a data page (user data words) or a page table (its words
//! are the entries); hardware does not know which.  Each frame also has a
//! *generation* that the page allocator bumps on every free: TLB entries,
//! paging-structure-cache entries and lockless walkers remember the
//! generation they saw, and a mismatch is a use of a freed frame.

use crate::sync::{AtomicU64, Ordering};
use crate::types::Pfn;

/// Emulated physical memory: every frame's words plus its generation
/// (bumped by `Kernel::free_folio`; a stale user sees an older one).
pub struct Ram {
    words: Box<[AtomicU64]>,
    gens: Box<[AtomicU64]>,
    words_per_frame: usize,
    nr_frames: usize,
}

/// Zeroed atomics.  Outside loom this is one calloc, so untouched emulated
/// RAM costs no host memory.
fn zeroed_atomics(n: usize) -> Box<[AtomicU64]> {
    #[cfg(not(mmemu_loom))]
    {
        const _: () = assert!(
            std::mem::size_of::<AtomicU64>() == std::mem::size_of::<u64>()
                && std::mem::align_of::<AtomicU64>() == std::mem::align_of::<u64>()
        );
        let plain: Box<[u64]> = vec![0u64; n].into_boxed_slice();
        let raw = Box::into_raw(plain) as *mut [AtomicU64];
        // SAFETY: AtomicU64 has the same size, alignment (asserted above) and
        // bit validity as u64, so a boxed slice of zeroed u64 is a valid boxed
        // slice of AtomicU64 with the same allocation layout.
        unsafe { Box::from_raw(raw) }
    }
    #[cfg(mmemu_loom)]
    {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }
}

impl Ram {
    /// Zeroed RAM of `nr_frames` frames, every generation 0.
    pub fn new(nr_frames: usize, words_per_frame: usize) -> Self {
        Self {
            words: zeroed_atomics(nr_frames * words_per_frame),
            gens: zeroed_atomics(nr_frames),
            words_per_frame,
            nr_frames,
        }
    }

    /// Frames of RAM (valid pfns are `0..nr_frames`).
    pub fn nr_frames(&self) -> usize {
        self.nr_frames
    }

    /// Words per frame: PTRS_PER_PTE (a table frame holds one entry per word).
    pub fn words_per_frame(&self) -> usize {
        self.words_per_frame
    }

    /// The word `idx` of frame `pfn` (a data word, or a table entry).
    #[inline]
    pub fn word(&self, pfn: Pfn, idx: usize) -> &AtomicU64 {
        // The emulator's own invariant, on the hottest path there is (every
        // emulated load, store and table walk step): a debug assertion only.
        // Out of range in a release build reads the next frame's word, or
        // panics on the slice bound past the last frame.
        debug_assert!(idx < self.words_per_frame, "word index {idx} out of frame");
        &self.words[pfn.idx() * self.words_per_frame + idx]
    }

    /// Current generation of a frame.
    #[inline]
    pub fn gen(&self, pfn: Pfn) -> u64 {
        self.gens[pfn.idx()].load(Ordering::SeqCst)
    }

    /// Bump the generation: called by the page allocator when a frame is freed.
    pub fn bump_gen(&self, pfn: Pfn) -> u64 {
        self.gens[pfn.idx()].fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Zero a frame (allocation with __GFP_ZERO, or a fresh page table).
    pub fn clear_frame(&self, pfn: Pfn) {
        for i in 0..self.words_per_frame {
            self.word(pfn, i).store(0, Ordering::Relaxed);
        }
        crate::sync::fence(Ordering::SeqCst);
    }

    /// Copy a frame's contents (COW, collapse).
    pub fn copy_frame(&self, dst: Pfn, src: Pfn) {
        for i in 0..self.words_per_frame {
            let v = self.word(src, i).load(Ordering::Relaxed);
            self.word(dst, i).store(v, Ordering::Relaxed);
        }
        crate::sync::fence(Ordering::SeqCst);
    }
}
