// Host memory for staging and parameter buffers: page-aligned mmap allocations, 2 MiB aligned
// when large (so transparent huge pages apply), optionally pre-faulted in parallel and
// page-locked. First touch of fresh pages costs ~3-4 us per 4 KiB page on the development
// machine (MACHINE.md), so long-lived buffers are touched once here and then pooled by callers.
//
// Shared allocations (REALN_HOST_SHARED) are a memfd mapped MAP_SHARED: another process of this
// host maps it read-only (realn_shared_map) and copies straight out of it, the way CUDA IPC maps
// another process's device memory. Life cycle:
// - the owner creates the memfd (named "realn-shard-<token>", a random 64-bit token), sizes it
//   and seals it against shrinking (so no reader can ever touch a page beyond its end: no
//   SIGBUS), and keeps the descriptor open while the allocation lives;
// - a reader opens /proc/<owner>/fd/<fd> (the kernel allows it where it allows process_vm_readv
//   style access: same user, ptrace rules), checks the name's token, the size and the seal, maps
//   it PROT_READ and closes the descriptor; its mapping keeps the pages alive even if the owner
//   exits, until the reader unmaps (realn_shared_unmap) or exits;
// - the owner frees by punching the whole file (FALLOC_FL_PUNCH_HOLE): the pages go back to the
//   system at once even while a reader still maps them (a stale mapping then holds no memory and
//   reads zero pages, never faults), then unmaps and closes.
// No name in /dev/shm is ever created, so a process that dies leaks nothing: the memory lives
// exactly as long as the last descriptor or mapping of it.
// Huge pages: shared memory gets transparent huge pages only where the administrator allows them
// for shmem (/sys/kernel/mm/transparent_hugepage/shmem_enabled; "never" on the development
// machine), and 4 KiB pages cost a copy out of it up to a third of its bandwidth (TLB misses on both
// sides). So a block of at least 2 MiB is allocated with fallocate and then collapsed into 2 MiB
// pages with MADV_COLLAPSE (Linux 6.1+, which does not depend on that setting): the owner computes
// on huge pages as with private memory, and a reader whose mapping is 2 MiB aligned maps those
// pages with one entry per 2 MiB at its first touch. Best effort: where the collapse fails (older
// kernel, no free huge page) the block keeps 4 KiB pages.
#include <fcntl.h>
#include <sys/mman.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>

#include "backend.hpp"
#include "error.hpp"

namespace {

struct Mapping {
    void* base;
    size_t length;
    bool locked;
    int fd;          // the memfd of a shared allocation, else -1
    uint64_t token;  // its name's token
    int32_t flags;   // as allocated (realn_host_reacquire repeats what they asked for)
};

std::mutex g_mutex;
std::map<uintptr_t, Mapping> g_maps;  // by start address, so an interior pointer finds its allocation

constexpr const char* kSharedPrefix = "realn-shard-";

void shared_name(char* out, size_t n, uint64_t token) {
    std::snprintf(out, n, "%s%016" PRIx64, kSharedPrefix, token);
}

constexpr size_t kHuge = size_t(2) << 20;

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

// A range of `length` bytes of address space aligned to 2 MiB (when at least that long), reserved
// with no access; the caller maps over it with MAP_FIXED. nullptr when the address space is short.
char* reserve_aligned(size_t length) {
    const bool big = length >= kHuge;
    size_t over = big ? length + kHuge : length;
    void* base = mmap(nullptr, over, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    if (!big) return static_cast<char*>(base);
    auto addr = reinterpret_cast<uintptr_t>(base);
    uintptr_t aligned = (addr + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
    size_t head = aligned - addr, tail = over - head - length;
    if (head) munmap(base, head);
    if (tail) munmap(reinterpret_cast<char*>(aligned) + length, tail);
    return reinterpret_cast<char*>(aligned);
}

void prefault(void* p, size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    auto* c = static_cast<volatile char*>(p);
    const int64_t pages = static_cast<int64_t>((bytes + page - 1) / page);
#pragma omp parallel for schedule(static) if (pages > 4096)
    for (int64_t i = 0; i < pages; ++i) c[static_cast<size_t>(i) * page] = 0;
}

// As prefault, keeping the contents: the pages of a shared block whose file already has them are
// mapped by reading (nobody else's writes are raced); private pages, which only this process writes,
// by writing back what they hold.
void refault(void* p, size_t bytes, bool shared) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    auto* c = static_cast<volatile char*>(p);
    const int64_t pages = static_cast<int64_t>((bytes + page - 1) / page);
    int64_t sink = 0;
#pragma omp parallel for schedule(static) reduction(+ : sink) if (pages > 4096)
    for (int64_t i = 0; i < pages; ++i) {
        volatile char* at = c + static_cast<size_t>(i) * page;
        if (shared) sink += *at;
        else *at = *at;
    }
    (void)sink;
}

}  // namespace

extern "C" {

REALN_API realn_status realn_host_alloc(int64_t bytes, int32_t flags, void** out) {
    return realn::guard("realn_host_alloc", [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        REALN_POSITIVE(bytes);
        REALN_REQUIRE((flags & ~(REALN_HOST_PREFAULT | REALN_HOST_PINNED | REALN_HOST_HUGEPAGE | REALN_HOST_SHARED)) == 0,
                      "unknown flags ", flags);
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        size_t want = (static_cast<size_t>(bytes) + page - 1) / page * page;
        const bool big = want >= kHuge;
        const bool shared = (flags & REALN_HOST_SHARED) != 0;
        int fd = -1;
        uint64_t token = 0;
        if (shared) {
            if (getrandom(&token, sizeof token, 0) != static_cast<ssize_t>(sizeof token))
                realn::fail(REALN_ERR_BACKEND, "getrandom for a shared allocation's token failed: ", strerror(errno));
            char name[64];
            shared_name(name, sizeof name, token);
            fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
            if (fd < 0) realn::fail(REALN_ERR_UNSUPPORTED, "memfd_create for ", bytes, " shared bytes failed: ", strerror(errno));
            if (ftruncate(fd, static_cast<off_t>(want)) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
                int e = errno;
                close(fd);
                realn::fail(REALN_ERR_OUT_OF_MEMORY, "sizing a shared allocation of ", bytes, " bytes failed: ", strerror(e));
            }
        }
        size_t length = big ? want + kHuge : want;  // over-map to align to 2 MiB, trim below
        void* base = mmap(nullptr, length, shared ? PROT_NONE : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) {
            int e = errno;
            if (fd >= 0) close(fd);
            realn::fail(REALN_ERR_OUT_OF_MEMORY, "mmap of ", bytes, " bytes failed: ", strerror(e));
        }
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
        if (shared) {
            // Its pages now (zeroed; no page tables yet), then the memfd over the reserved range.
            if (big && fallocate(fd, 0, 0, static_cast<off_t>(want)) != 0) {
                int e = errno;
                munmap(base, length);
                close(fd);
                realn::fail(REALN_ERR_OUT_OF_MEMORY, "allocating a shared block of ", bytes, " bytes failed: ", strerror(e));
            }
            if (mmap(p, want, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
                int e = errno;
                munmap(base, length);
                close(fd);
                realn::fail(REALN_ERR_OUT_OF_MEMORY, "mapping a shared allocation of ", bytes, " bytes failed: ", strerror(e));
            }
            // Into 2 MiB pages (best effort, see the top of this file).
            if (big) madvise(p, want, MADV_COLLAPSE);
        }
#ifdef MADV_HUGEPAGE
        if ((flags & REALN_HOST_HUGEPAGE) && big && !shared) madvise(p, length, MADV_HUGEPAGE);
#endif
        if (flags & REALN_HOST_PREFAULT) prefault(p, want);
        bool locked = false;
        // Page-locking can exceed RLIMIT_MEMLOCK for unprivileged users; the memory stays
        // usable (and pre-faulted) without it, so a refusal is not an error.
        if (flags & REALN_HOST_PINNED) locked = mlock(p, length) == 0;
        std::lock_guard<std::mutex> lock(g_mutex);
        g_maps[reinterpret_cast<uintptr_t>(p)] = Mapping{base, length, locked, fd, token, flags};
        *out = p;
    });
}

REALN_API realn_status realn_host_free(void* ptr) {
    return realn::guard("realn_host_free", [&] {
        if (ptr == nullptr) return;
        Mapping m;
        {
            std::lock_guard<std::mutex> lock(g_mutex);
            auto it = g_maps.find(reinterpret_cast<uintptr_t>(ptr));
            if (it == g_maps.end())
                realn::fail(REALN_ERR_INVALID_ARGUMENT, "pointer ", ptr,
                            " was not returned by realn_host_alloc (or was freed already)");
            m = it->second;
            g_maps.erase(it);
        }
        if (m.locked) munlock(m.base, m.length);
        if (m.fd >= 0) {
            // Back to the system now, whoever still maps it (their mapping then reads zero pages).
            fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(m.length));
            close(m.fd);
        }
        munmap(m.base, m.length);
    });
}

// The allocation that starts at ptr (as realn_host_alloc returned it).
static Mapping find_allocation(const char* what, void* ptr) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_maps.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == g_maps.end())
        realn::fail(REALN_ERR_INVALID_ARGUMENT, what, ": pointer ", ptr, " was not returned by realn_host_alloc (or was freed)");
    return it->second;
}

REALN_API realn_status realn_host_release(void* ptr) {
    return realn::guard("realn_host_release", [&] {
        REALN_NOT_NULL(ptr);
        Mapping m = find_allocation("realn_host_release", ptr);
        if (m.fd >= 0) {
            // The file's pages go (and with them this mapping's entries); readers' mappings stay valid.
            if (fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(m.length)) != 0)
                realn::fail(REALN_ERR_BACKEND, "punching the pages of a shared block of ", m.length, " bytes failed: ", strerror(errno));
        } else if (madvise(m.base, m.length, MADV_DONTNEED) != 0) {
            realn::fail(REALN_ERR_BACKEND, "madvise(MADV_DONTNEED) of ", m.length, " bytes failed: ", strerror(errno));
        }
    });
}

REALN_API realn_status realn_host_reacquire(void* ptr) {
    return realn::guard("realn_host_reacquire", [&] {
        REALN_NOT_NULL(ptr);
        Mapping m = find_allocation("realn_host_reacquire", ptr);
        const bool big = m.length >= kHuge;
        if (m.fd >= 0 && big) {
            // As at allocation: the file's pages (holes only; pages written meanwhile stay), then 2 MiB pages (best effort).
            if (fallocate(m.fd, 0, 0, static_cast<off_t>(m.length)) != 0)
                realn::fail(REALN_ERR_OUT_OF_MEMORY, "taking the pages of a shared block of ", m.length, " bytes again failed: ", strerror(errno));
            madvise(m.base, m.length, MADV_COLLAPSE);
        }
        if (m.flags & REALN_HOST_PREFAULT) refault(m.base, m.length, m.fd >= 0);
    });
}

REALN_API realn_status realn_host_shared_info(const void* ptr, int32_t* fd, int64_t* offset, int64_t* size, uint64_t* token) {
    return realn::guard("realn_host_shared_info", [&] {
        REALN_NOT_NULL(fd);
        REALN_NOT_NULL(offset);
        REALN_NOT_NULL(size);
        REALN_NOT_NULL(token);
        *fd = -1;
        *offset = *size = 0;
        *token = 0;
        auto at = reinterpret_cast<uintptr_t>(ptr);
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = g_maps.upper_bound(at);
        if (it == g_maps.begin()) return;
        --it;
        const Mapping& m = it->second;
        if (m.fd < 0 || at >= it->first + m.length) return;
        *fd = m.fd;
        *offset = static_cast<int64_t>(at - it->first);
        *size = static_cast<int64_t>(m.length);
        *token = m.token;
    });
}

static realn_status shared_map(const char* name, int32_t pid, int32_t fd, uint64_t token, int64_t size, bool writable, void** out) {
    return realn::guard(name, [&] {
        REALN_NOT_NULL(out);
        *out = nullptr;
        REALN_POSITIVE(pid);
        REALN_NON_NEGATIVE(fd);
        REALN_POSITIVE(size);
        char path[64];
        std::snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
        int mine = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (mine < 0) {
            int e = errno;
            if (e == EACCES || e == EPERM)
                realn::fail(REALN_ERR_UNSUPPORTED, "opening ", path, ": ", strerror(e),
                            " (not allowed to open another process's descriptors: another user, or ptrace restrictions)");
            realn::fail(REALN_ERR_NOT_FOUND, "opening ", path, ": ", strerror(e), " (the process or its shared buffer is gone)");
        }
        // It must be the memfd announced: its name carries the token (a freed buffer's descriptor
        // number may have been reused for something else), its size and its shrink seal.
        char want[96], link[128], self[64];
        shared_name(want, sizeof want, token);
        std::snprintf(self, sizeof self, "/proc/self/fd/%d", mine);
        ssize_t n = readlink(self, link, sizeof link - 1);
        link[n > 0 ? n : 0] = 0;
        struct stat st{};
        const bool named = std::strncmp(link, "/memfd:", 7) == 0 && std::strncmp(link + 7, want, std::strlen(want)) == 0 &&
                           (link[7 + std::strlen(want)] == 0 || link[7 + std::strlen(want)] == ' ');
        const bool sized = fstat(mine, &st) == 0 && st.st_size == size;
        const int seals = fcntl(mine, F_GET_SEALS);
        if (!named || !sized || seals < 0 || !(seals & F_SEAL_SHRINK)) {
            close(mine);
            realn::fail(REALN_ERR_NOT_FOUND, path, " is not the shared buffer announced (", want, ", ", size, " bytes): it is '",
                        link, "', ", static_cast<int64_t>(st.st_size), " bytes", seals >= 0 && !(seals & F_SEAL_SHRINK) ? ", not sealed" : "");
        }
        // 2 MiB aligned, so the owner's huge pages map with one entry each.
        char* at = reserve_aligned(static_cast<size_t>(size));
        void* p = at == nullptr ? MAP_FAILED : mmap(at, static_cast<size_t>(size), writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED | MAP_FIXED, mine, 0);
        int e = errno;
        close(mine);  // the mapping keeps the memory alive
        if (p == MAP_FAILED) {
            if (at != nullptr) munmap(at, static_cast<size_t>(size));
            realn::fail(REALN_ERR_OUT_OF_MEMORY, "mapping ", size, " shared bytes of process ", pid, ": ", strerror(e));
        }
        *out = p;
    });
}

REALN_API realn_status realn_shared_map(int32_t pid, int32_t fd, uint64_t token, int64_t size, const void** out) {
    return shared_map("realn_shared_map", pid, fd, token, size, false, const_cast<void**>(out));
}

REALN_API realn_status realn_shared_map_writable(int32_t pid, int32_t fd, uint64_t token, int64_t size, void** out) {
    return shared_map("realn_shared_map_writable", pid, fd, token, size, true, out);
}

REALN_API realn_status realn_shared_unmap(const void* ptr, int64_t size) {
    return realn::guard("realn_shared_unmap", [&] {
        REALN_NOT_NULL(ptr);
        REALN_POSITIVE(size);
        if (munmap(const_cast<void*>(ptr), static_cast<size_t>(size)) != 0)
            realn::fail(REALN_ERR_INVALID_ARGUMENT, "munmap of ", size, " bytes at ", ptr, ": ", strerror(errno));
    });
}

// Doorbells between the processes of a job (src/Engine/Transport/Doorbell.cs): a word in a shared
// block, waited on and woken with the shared (not FUTEX_PRIVATE_FLAG) futex, which the kernel keys
// by the block's page, so a waiter and a waker in two processes with two mappings meet.
REALN_API realn_status realn_futex_wait(const int32_t* word, int32_t expected, int64_t timeout_us) {
    return realn::guard("realn_futex_wait", [&] {
        REALN_NOT_NULL(word);
        REALN_REQUIRE(timeout_us > 0, "timeout_us must be > 0 (got ", timeout_us, ")");
#ifdef __linux__
        timespec t{static_cast<time_t>(timeout_us / 1000000), static_cast<long>(timeout_us % 1000000) * 1000};
        if (syscall(SYS_futex, word, FUTEX_WAIT, expected, &t, nullptr, 0) != 0 && errno != EAGAIN &&
            errno != ETIMEDOUT && errno != EINTR)
            realn::fail(REALN_ERR_BACKEND, "futex wait at ", static_cast<const void*>(word), ": ", strerror(errno));
#else
        (void)expected;
        realn::fail(REALN_ERR_UNSUPPORTED, "futex: Linux only");
#endif
    });
}

REALN_API realn_status realn_futex_wake(int32_t* word, int32_t count) {
    return realn::guard("realn_futex_wake", [&] {
        REALN_NOT_NULL(word);
        REALN_REQUIRE(count > 0, "count must be > 0 (got ", count, ")");
#ifdef __linux__
        if (syscall(SYS_futex, word, FUTEX_WAKE, count, nullptr, nullptr, 0) < 0)
            realn::fail(REALN_ERR_BACKEND, "futex wake at ", static_cast<void*>(word), ": ", strerror(errno));
#else
        realn::fail(REALN_ERR_UNSUPPORTED, "futex: Linux only");
#endif
    });
}

}  // extern "C"
