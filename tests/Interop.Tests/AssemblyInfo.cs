// The interop tests share process-global native state (the OpenMP/OpenBLAS thread count, the UCX
// library's signal handlers, the host-allocation registry): they run one at a time.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
