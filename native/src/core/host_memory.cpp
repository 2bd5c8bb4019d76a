// Host memory for staging and parameter buffers: page-aligned mmap allocations, 2 MiB aligned
// when large (so transparent huge pages apply), optionally pre-faulted in parallel and
// page-locked. First touch of fresh pages costs ~3-4 us per 4 KiB page on the development
// machine (MACHINE.md), so long-lived buffers are touched once here and then pooled by callers.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "backend.hpp"
#include "error.hpp"

namespace {

struct Mapping {
    void* base;
    size_t length;
    bool locked;
};

std::mutex g_mutex;
std::unordered_map<void*, Mapping> g_maps;

constexpr size_t kHuge = size_t(2) << 20;

void prefault(void* p, size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    auto* c = static_cast<volatile char*>(p);
    const int64_t pages = static_cast<int64_t>((bytes + page - 1) / page);
#pragma omp parallel for schedule(static) if (pages > 4096)
    for (int64_t i = 0; i < pages; ++i) c[static_cast<size_t>(i) * page] = 0;
}

}  // namespace

extern "C" {

REALN_API realn_status realn_host_alloc(int64_t bytes, int32_t flags, void** out) {
    return realn::guard("realn_host_alloc", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        REALN_POSITIVE(bytes);
        REALN_REQUIRE((flags & ~(REALN_HOST_PREFAULT | REALN_HOST_PINNED | REALN_HOST_HUGEPAGE)) == 0,
                      "unknown flags ", flags);
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        size_t want = (static_cast<size_t>(bytes) + page - 1) / page * page;
        const bool big = want >= kHuge;
        size_t length = big ? want + kHuge : want;  // over-map to align to 2 MiB, trim below
        void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            realn::fail(REALN_ERR_OUT_OF_MEMORY, "mmap of ", bytes, " bytes failed: ", strerror(errno));
        char* p = static_cast<char*>(base);
        if (big) {
            auto addr = reinterpret_cast<uintptr_t>(base);
            uintptr_t aligned = (addr + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
            size_t head = aligned - addr;
            size_t tail = length - head - want;
            if (head) munmap(base, head);
            if (tail) munmap(reinterpret_cast<char*>(aligned) + want, tail);
            p = reinterpret_cast<char*>(aligned);
            base = p;
            length = want;
        }
#ifdef MADV_HUGEPAGE
        if ((flags & REALN_HOST_HUGEPAGE) && big) madvise(p, length, MADV_HUGEPAGE);
#endif
        if (flags & REALN_HOST_PREFAULT) prefault(p, want);
        bool locked = false;
        // Page-locking can exceed RLIMIT_MEMLOCK for unprivileged users; the memory stays
        // usable (and pre-faulted) without it, so a refusal is not an error.
        if (flags & REALN_HOST_PINNED) locked = mlock(p, length) == 0;
        std::lock_guard<std::mutex> lock(g_mutex);
        g_maps[p] = Mapping{base, length, locked};
        *out = p;
    });
}

REALN_API realn_status realn_host_free(void* ptr) {
    return realn::guard("realn_host_free", [&] {
        if (ptr == nullptr) return;
        Mapping m;
        {
            std::lock_guard<std::mutex> lock(g_mutex);
            auto it = g_maps.find(ptr);
            if (it == g_maps.end())
                realn::fail(REALN_ERR_INVALID_ARGUMENT, "pointer ", ptr,
                            " was not returned by realn_host_alloc (or was freed already)");
            m = it->second;
            g_maps.erase(it);
        }
        if (m.locked) munlock(m.base, m.length);
        munmap(m.base, m.length);
    });
}

}  // extern "C"
