//! The mmu_gather port (include/asm-generic/tlb.h, mm/mmu_gather.c).
