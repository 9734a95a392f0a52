//! Heap profiling for development (`--features dhat-heap`, never in the default build): every
//! allocation goes through dhat, which writes `dhat-heap.json` into the working directory
//! when the process ends normally (the manager after SIGQUIT). Its peak (`t-gmax`) lists the
//! allocation sites live when the heap was largest: what the manager holds per job.
//! Read it with dhat's viewer (`dh_view.html` of Valgrind) or any JSON tool.

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Starts the profiler; it writes its file when the returned guard drops.
#[cfg(feature = "dhat-heap")]
pub(crate) fn start() -> dhat::Profiler {
    // Deep enough to reach the executor's frames from the allocator.
    dhat::Profiler::builder().trim_backtraces(Some(40)).build()
}

/// Nothing: the default build has no profiler.
#[cfg(not(feature = "dhat-heap"))]
pub(crate) fn start() {}
