//! Steady-state collectives of the thread group do not allocate: buffers are
//! reused across operations. Counted per thread by a wrapping allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use common::{all_ok, run_ranks};
use half::bf16;
use maskddp_runtime::{Collective, Op, Tag, ThreadGroup, WireBuf};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized
// thread-local `Cell`, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn steady_state_operations_do_not_allocate() {
    let counts = all_ok(run_ranks(
        ThreadGroup::new(3),
        Duration::from_secs(60),
        |rank, mut collective| {
            let mut floats = vec![rank as f32; 1000];
            let mut halves = vec![bf16::from_f32(rank as f32); 500];
            let mut usage = vec![1u32; 17];
            let mut step = |step: u64, collective: &mut maskddp_runtime::ThreadCollective| {
                usage.fill(1);
                collective
                    .all_reduce_counts(Tag::new(step, Op::Usage), &mut usage)
                    .unwrap();
                collective
                    .all_reduce_sum(Tag::new(step, Op::Bucket(0)), WireBuf::F32(&mut floats))
                    .unwrap();
                collective
                    .all_reduce_sum(Tag::new(step, Op::Bucket(1)), WireBuf::Bf16(&mut halves))
                    .unwrap();
            };
            // Warm-up sizes the shared buffers.
            step(1, &mut collective);
            let before = ALLOCATIONS.with(Cell::get);
            for s in 2..100 {
                step(s, &mut collective);
            }
            ALLOCATIONS.with(Cell::get) - before
        },
    ));
    assert_eq!(counts, vec![0, 0, 0], "allocations per rank in 98 steps");
}
