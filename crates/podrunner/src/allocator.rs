//! The heap allocator of the default build: jemalloc (`tikv-jemallocator`), set up when it
//! is built by `JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`: one arena (the
//! manager runs one thread) and freed pages returned to the system after about a second.
//! A manager's heap is many small, long-lived pieces per job among the short-lived ones of
//! each pod's start; glibc's malloc kept the holes between them, about 76 KiB per running
//! pod for some 25 KB of live heap, and never gave them back (docs/benchmarks.md, scale).
//! The profiling build (`dhat-heap`) has dhat's allocator instead.

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
