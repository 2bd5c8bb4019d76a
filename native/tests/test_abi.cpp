// The C ABI's error contract, exercised through the shared library exactly as a host sees it:
// bad arguments return a status (never crash), the thread's last error names the argument,
// unsupported dtypes and missing backends are reported, handles free cleanly.
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "realn.h"
#include "realn_selftest.h"

static int g_failures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            ++g_failures;                                                   \
        }                                                                   \
    } while (0)

static bool error_mentions(const char* needle) {
    return std::strstr(realn_last_error(), needle) != nullptr;
}

// realn_process_read from a forked child: the child keeps the original random bytes at the same
// address while the parent overwrites its own copy, so every byte read must come from the child.
// Random intervals: long ones (split in pieces, read by several threads), more short ones
// than one process_vm_readv takes (IOV_MAX), and runs contiguous on one side only, against a
// plain copy of the original bytes.
static void test_process_read() {
    const int64_t bytes = int64_t(40) << 20;
    std::vector<unsigned char> data(static_cast<size_t>(bytes)), original;
    std::mt19937_64 rng(11);
    for (auto& b : data) b = static_cast<unsigned char>(rng());
    original = data;
    int go[2];
    EXPECT(pipe(go) == 0);
    pid_t child = fork();
    if (child == 0) {
        char c;
        ssize_t r = read(go[0], &c, 1);  // until the parent is done reading
        _exit(r == 1 ? 0 : 1);
    }
    std::memset(data.data(), 0, data.size());
    std::vector<int64_t> src, dst, len;
    int64_t at = 0;
    for (int i = 0; i < 3; ++i) {  // long intervals: 8-11 MiB each, to the start of the destination
        int64_t n = (int64_t(8) << 20) + static_cast<int64_t>(rng() % (3u << 20));
        src.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(bytes - n)));
        dst.push_back(at);
        len.push_back(n);
        at += n;
    }
    for (int i = 0; i < 3000; ++i) {  // short ones, with gaps
        int64_t n = 1 + static_cast<int64_t>(rng() % 3000);
        at += static_cast<int64_t>(rng() % 64);
        src.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(bytes - n)));
        dst.push_back(at);
        len.push_back(n);
        at += n;
    }
    // Runs contiguous on one side only (a dimension-1 split read into whole rows, and back): the
    // read merges them into one iovec on that side while the other side keeps its gaps.
    for (int side = 0; side < 2; ++side) {
        int64_t s = static_cast<int64_t>(rng() % static_cast<uint64_t>(bytes / 2));
        for (int i = 0; i < 1500; ++i) {
            int64_t n = 1 + static_cast<int64_t>(rng() % 3000);
            if (side == 0) at += 1 + static_cast<int64_t>(rng() % 64);
            else s += 1 + static_cast<int64_t>(rng() % 64);
            if (s + n > bytes) s = 0;
            src.push_back(s);
            dst.push_back(at);
            len.push_back(n);
            at += n;
            s += n;
        }
    }
    std::vector<unsigned char> out(static_cast<size_t>(at), 0xee), want(static_cast<size_t>(at), 0xee);
    for (size_t i = 0; i < src.size(); ++i) std::memcpy(&want[dst[i]], &original[src[i]], len[i]);
    auto remote = reinterpret_cast<uint64_t>(data.data());
    EXPECT(realn_process_read(child, out.data(), remote, src.data(), dst.data(), len.data(),
                              static_cast<int64_t>(src.size())) == REALN_OK);
    EXPECT(out == want);
    // Bad arguments and a range outside the child's mappings are reported, not crashed on.
    EXPECT(realn_process_read(0, out.data(), remote, src.data(), dst.data(), len.data(), 1) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("pid"));
    int64_t neg = -1;
    EXPECT(realn_process_read(child, out.data(), remote, &neg, dst.data(), len.data(), 1) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("interval 0"));
    int64_t far = int64_t(1) << 46, one = 1, zero = 0;
    EXPECT(realn_process_read(child, out.data(), 4096, &far, &zero, &one, 1) == REALN_ERR_BACKEND);
    EXPECT(error_mentions("process_vm_readv"));
    EXPECT(realn_process_read(child, nullptr, remote, src.data(), dst.data(), len.data(), 0) == REALN_OK);
    EXPECT(write(go[1], "x", 1) == 1);
    int status = 0;
    EXPECT(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    // The child is gone: ESRCH.
    EXPECT(realn_process_read(child, out.data(), remote, src.data(), dst.data(), len.data(), 1) == REALN_ERR_BACKEND);
    EXPECT(error_mentions("No such process"));
    close(go[0]);
    close(go[1]);
}

// Shared host memory (REALN_HOST_SHARED): another process maps it read-only and sees the owner's
// bytes; the mapping outlives the owner; freeing releases the pages even while mapped (the stale
// mapping reads zeros, never faults); a wrong token, a gone process or a descriptor that is not
// the announced memfd is refused, not mapped.
static void test_shared_memory() {
    const int64_t bytes = (int64_t(3) << 20) + 12345;
    void* p = nullptr;
    EXPECT(realn_host_alloc(bytes, REALN_HOST_PREFAULT | REALN_HOST_SHARED, &p) == REALN_OK && p != nullptr);
    EXPECT((reinterpret_cast<uintptr_t>(p) & ((2u << 20) - 1)) == 0);
    auto* bytes_p = static_cast<unsigned char*>(p);
    std::mt19937_64 rng(23);
    for (int64_t i = 0; i < bytes; ++i) bytes_p[i] = static_cast<unsigned char>(rng());
    int32_t fd = -2;
    int64_t offset = -1, size = -1;
    uint64_t token = 0;
    EXPECT(realn_host_shared_info(bytes_p + 4097, &fd, &offset, &size, &token) == REALN_OK);
    EXPECT(fd >= 0 && offset == 4097 && size >= bytes && token != 0);
    int32_t none = 0;
    int64_t o2 = 1, s2 = 1;
    uint64_t t2 = 1;
    std::vector<char> heap(64);
    EXPECT(realn_host_shared_info(heap.data(), &none, &o2, &s2, &t2) == REALN_OK && none == -1 && o2 == 0 && s2 == 0 && t2 == 0);
    void* plain = nullptr;
    EXPECT(realn_host_alloc(1 << 20, REALN_HOST_PREFAULT, &plain) == REALN_OK);
    EXPECT(realn_host_shared_info(plain, &none, &o2, &s2, &t2) == REALN_OK && none == -1);
    EXPECT(realn_host_free(plain) == REALN_OK);

    // Another process maps it and reads the owner's bytes.
    int go[2];
    EXPECT(pipe(go) == 0);
    const pid_t owner = getpid();
    const unsigned char before = static_cast<const unsigned char*>(p)[1];   // read before the child can write it
    pid_t child = fork();
    if (child == 0) {
        const void* m = nullptr;
        bool ok = realn_shared_map(owner, fd, token, size, &m) == REALN_OK && m != nullptr &&
                  std::memcmp(m, p, static_cast<size_t>(bytes)) == 0;  // p: the child's copy-on-write copy of the same bytes
        ok = ok && realn_shared_unmap(m, size) == REALN_OK;
        const void* bad = nullptr;
        ok = ok && realn_shared_map(owner, fd, token ^ 1, size, &bad) == REALN_ERR_NOT_FOUND && bad == nullptr;
        ok = ok && realn_shared_map(owner, fd, token, size + 4096, &bad) == REALN_ERR_NOT_FOUND;
        // Mapped writable, a write lands in the owner's memory (checked by the owner below).
        void* w = nullptr;
        ok = ok && realn_shared_map_writable(owner, fd, token, size, &w) == REALN_OK && w != nullptr;
        if (ok) static_cast<unsigned char*>(w)[1] = static_cast<unsigned char>(~static_cast<const unsigned char*>(w)[1]);
        ok = ok && realn_shared_unmap(w, size) == REALN_OK;
        void* wbad = nullptr;
        ok = ok && realn_shared_map_writable(owner, fd, token ^ 1, size, &wbad) == REALN_ERR_NOT_FOUND && wbad == nullptr;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    EXPECT(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT(static_cast<const unsigned char*>(p)[1] == static_cast<unsigned char>(~before));  // the child's write, through its writable mapping
    const void* m = nullptr;
    EXPECT(realn_shared_map(owner, 0, token, size, &m) == REALN_ERR_NOT_FOUND && m == nullptr);  // stdin: not that memfd
    EXPECT(error_mentions("not the shared buffer announced"));
    EXPECT(realn_shared_map(child, fd, token, size, &m) == REALN_ERR_NOT_FOUND);  // the child is gone
    EXPECT(error_mentions("gone"));
    EXPECT(realn_shared_map(owner, fd, token, 0, &m) == REALN_ERR_INVALID_ARGUMENT);

    // Freed while mapped: the pages are released, the stale mapping reads zeros.
    EXPECT(realn_shared_map(owner, fd, token, size, &m) == REALN_OK && m != nullptr);
    EXPECT(std::memcmp(m, p, static_cast<size_t>(bytes)) == 0);
    EXPECT(realn_host_free(p) == REALN_OK);
    const auto* q = static_cast<const unsigned char*>(m);
    bool zero = true;
    for (int64_t i = 0; i < bytes; i += 4096) zero = zero && q[i] == 0;
    EXPECT(zero);
    EXPECT(realn_shared_unmap(m, size) == REALN_OK);

    // The mapping outlives its owner: a child allocates, announces, exits; its bytes stay readable.
    struct Announce { int32_t fd; int64_t size; uint64_t token; unsigned char first; } a{};
    int back[2];  // child -> parent (go: parent -> child)
    EXPECT(pipe(back) == 0);
    child = fork();
    if (child == 0) {
        void* c = nullptr;
        if (realn_host_alloc(1 << 20, REALN_HOST_PREFAULT | REALN_HOST_SHARED, &c) != REALN_OK) _exit(1);
        std::memset(c, 0x5c, 1 << 20);
        int64_t off = 0;
        Announce x{};
        realn_host_shared_info(c, &x.fd, &off, &x.size, &x.token);
        x.first = 0x5c;
        if (write(back[1], &x, sizeof x) != static_cast<ssize_t>(sizeof x)) _exit(1);
        char wait;
        if (read(go[0], &wait, 1) != 1) _exit(1);  // until the parent has mapped it
        _exit(0);
    }
    EXPECT(read(back[0], &a, sizeof a) == static_cast<ssize_t>(sizeof a));
    EXPECT(realn_shared_map(child, a.fd, a.token, a.size, &m) == REALN_OK);
    EXPECT(write(go[1], "x", 1) == 1);
    EXPECT(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    q = static_cast<const unsigned char*>(m);
    EXPECT(m != nullptr && q[0] == 0x5c && q[(1 << 20) - 1] == 0x5c);
    EXPECT(m == nullptr || realn_shared_unmap(m, a.size) == REALN_OK);
    close(go[0]);
    close(go[1]);
    close(back[0]);
    close(back[1]);
}

// Pages of [p, p + bytes) resident in this process (mincore).
static int64_t resident_pages(const void* p, int64_t bytes) {
    const int64_t page = sysconf(_SC_PAGESIZE);
    std::vector<unsigned char> v(static_cast<size_t>((bytes + page - 1) / page));
    if (mincore(const_cast<void*>(p), static_cast<size_t>(bytes), v.data()) != 0) return -1;
    int64_t n = 0;
    for (unsigned char c : v) n += c & 1;
    return n;
}

// realn_host_release / realn_host_reacquire on random bytes: a released block holds no pages and
// reads zeros; what is written after the release (by the owner, or through another mapping of a
// shared block) survives realn_host_reacquire, the rest reads zero; reacquired, every page is there.
static void test_release_reacquire() {
    std::mt19937 rng(7);
    const int64_t bytes = 6 << 20, page = sysconf(_SC_PAGESIZE);
    auto fill = [&](unsigned char* d, int64_t n) { for (int64_t i = 0; i < n; ++i) d[i] = static_cast<unsigned char>(rng() | 1); };
    for (int shared = 0; shared < 2; ++shared) {
        void* v = nullptr;
        const int32_t flags = REALN_HOST_PREFAULT | (shared ? REALN_HOST_SHARED : REALN_HOST_HUGEPAGE);
        EXPECT(realn_host_alloc(bytes, flags, &v) == REALN_OK && v != nullptr);
        auto* b = static_cast<unsigned char*>(v);
        fill(b, bytes);
        int32_t fd = -1;
        int64_t off = 0, size = 0;
        uint64_t token = 0;
        EXPECT(realn_host_shared_info(b, &fd, &off, &size, &token) == REALN_OK);
        void* peer = nullptr;   // another mapping of the shared block, as a sender of a reallocation holds one
        if (shared) EXPECT(realn_shared_map_writable(getpid(), fd, token, size, &peer) == REALN_OK && peer != nullptr);
        auto file_bytes = [&] { struct stat st{}; return fstat(fd, &st) == 0 ? static_cast<int64_t>(st.st_blocks) * 512 : -1; };
        if (shared) EXPECT(file_bytes() >= bytes);
        EXPECT(resident_pages(b, bytes) == bytes / page);

        EXPECT(realn_host_release(b) == REALN_OK);
        EXPECT(resident_pages(b, bytes) == 0);
        if (shared) EXPECT(file_bytes() == 0);
        bool zero = true;
        for (int64_t i = 0; i < bytes; i += 997) zero = zero && b[i] == 0;
        EXPECT(zero);
        if (shared) EXPECT(static_cast<unsigned char*>(peer)[12345] == 0);

        // Written while released: 1 MiB at 1 MiB + 123, by the peer where there is one.
        std::vector<unsigned char> mark(1 << 20);
        fill(mark.data(), static_cast<int64_t>(mark.size()));
        std::memcpy((shared ? static_cast<unsigned char*>(peer) : b) + (1 << 20) + 123, mark.data(), mark.size());
        EXPECT(realn_host_reacquire(b) == REALN_OK);
        EXPECT(resident_pages(b, bytes) == bytes / page);
        if (shared) EXPECT(file_bytes() >= bytes);
        EXPECT(std::memcmp(b + (1 << 20) + 123, mark.data(), mark.size()) == 0);
        bool rest = true;
        for (int64_t i = 0; i < bytes; ++i)
            if (i < (1 << 20) + 123 || i >= (2 << 20) + 123) rest = rest && b[i] == 0;
        EXPECT(rest);
        fill(b, bytes);   // usable as before
        if (shared) EXPECT(std::memcmp(peer, b, static_cast<size_t>(bytes)) == 0 && realn_shared_unmap(peer, size) == REALN_OK);
        EXPECT(realn_host_release(b + page) == REALN_ERR_INVALID_ARGUMENT);   // not the allocation's start
        EXPECT(error_mentions("realn_host_release"));
        EXPECT(realn_host_free(b) == REALN_OK);
        EXPECT(realn_host_reacquire(b) == REALN_ERR_INVALID_ARGUMENT);       // freed
        EXPECT(realn_host_release(nullptr) == REALN_ERR_INVALID_ARGUMENT);
    }
}

int main() {
    int32_t maj = -1, min = -1, pat = -1;
    EXPECT(realn_version(&maj, &min, &pat) == REALN_OK && maj == REALN_VERSION_MAJOR);
    EXPECT(realn_version(nullptr, &min, &pat) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("major"));
    EXPECT(std::strcmp(realn_status_string(REALN_ERR_UNSUPPORTED), "REALN_ERR_UNSUPPORTED") == 0);
    EXPECT(std::strstr(realn_build_info(), "cpu") != nullptr);

    realn_stream_t s = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 0, &s) == REALN_OK && s != nullptr);
    realn_stream_t bad = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 3, &bad) == REALN_ERR_NOT_FOUND && bad == nullptr);
    EXPECT(error_mentions("device 3"));
    EXPECT(realn_stream_create(42, 0, &bad) == REALN_ERR_NOT_FOUND);

    // Null and negative arguments name themselves.
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, y[4];
    EXPECT(realn_op_rmsnorm_fwd(s, REALN_DTYPE_F32, nullptr, w, y, nullptr, 1, 4, 1e-5f) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("x must not be NULL"));
    EXPECT(realn_op_rmsnorm_fwd(s, REALN_DTYPE_F32, x, w, y, nullptr, -1, 4, 1e-5f) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("rows must be >= 0"));
    EXPECT(realn_op_gemm(nullptr, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("stream must not be NULL"));
    EXPECT(realn_op_gemm(s, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 1, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("lda"));
    EXPECT(realn_op_gemm(s, 7, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) ==
           REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("dtype"));
    // The CPU backend runs bf16 weights for gemm/linear/embedding_fwd/rmsnorm_fwd only: the other
    // ops report bf16 unsupported, naming the op and dtype, not silently wrong.
    EXPECT(realn_op_swiglu_fwd(s, REALN_DTYPE_BF16, x, x, 2, y, 2, 1, 2) == REALN_ERR_UNSUPPORTED);
    EXPECT(error_mentions("bf16"));
    EXPECT(error_mentions("swiglu"));
    // A good call succeeds and leaves the previous message in place (no clearing contract).
    EXPECT(realn_op_gemm(s, REALN_DTYPE_F32, 0, 0, 2, 2, 2, 1, x, 2, 0, w, 2, 0, 0, y, 2, 0, 1) == REALN_OK);
    EXPECT(y[0] == 3 && y[3] == 7);

    // Intervals: negative offsets are rejected with the interval index.
    int64_t off[2] = {0, -4}, len[2] = {4, 4};
    char flat[16] = {}, stage[16] = {};
    EXPECT(realn_interval_gather(s, stage, flat, off, len, 2) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("interval 1"));

    // Option structs must be initialised.
    realn_adamw_opts o = REALN_ADAMW_OPTS_INIT;
    o.version = 9;
    float p[1] = {1}, g[1] = {1}, m[1] = {0}, v[1] = {0};
    EXPECT(realn_op_adamw(s, &o, p, g, m, v, 1) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(error_mentions("REALN_ADAMW_OPTS_INIT"));

    // Last error is per thread.
    std::string other;
    std::thread t([&] {
        realn_version(nullptr, nullptr, nullptr);
        other = realn_last_error();
    });
    t.join();
    EXPECT(error_mentions("REALN_ADAMW_OPTS_INIT"));
    EXPECT(other.find("major") != std::string::npos);

    // Buffers and host memory.
    realn_buf_t b = nullptr;
    EXPECT(realn_buf_alloc(s, 1 << 20, &b) == REALN_OK);
    int64_t size = 0;
    EXPECT(realn_buf_size(b, &size) == REALN_OK && size == (1 << 20));
    EXPECT(realn_buf_free(b) == REALN_OK);
    EXPECT(realn_buf_alloc(s, -1, &b) == REALN_ERR_INVALID_ARGUMENT);
    void* h = nullptr;
    EXPECT(realn_host_alloc(3 << 20, REALN_HOST_PREFAULT | REALN_HOST_HUGEPAGE | REALN_HOST_PINNED, &h) == REALN_OK);
    EXPECT(h != nullptr && (reinterpret_cast<uintptr_t>(h) & ((2u << 20) - 1)) == 0);
    std::memset(h, 0x5a, 3 << 20);
    EXPECT(realn_host_free(h) == REALN_OK);
    EXPECT(realn_host_free(h) == REALN_ERR_INVALID_ARGUMENT);  // double free is caught
    EXPECT(error_mentions("was not returned by realn_host_alloc"));
    test_shared_memory();
    test_release_reacquire();

    // Selftest of a backend without a device: NOT_FOUND where it is not built, UNSUPPORTED (naming
    // the missing driver or device) where it is built but cannot run here.
    int32_t cuda = 0;
    realn_backend_available(REALN_BACKEND_CUDA, &cuda);
    const char* json = nullptr;
    if (!cuda) {
        const bool built = std::strstr(realn_build_info(), "cuda") != nullptr;
        EXPECT(realn_selftest_run(REALN_BACKEND_CUDA, nullptr, &json) == (built ? REALN_ERR_UNSUPPORTED : REALN_ERR_NOT_FOUND));
        if (built) EXPECT(std::strstr(realn_selftest_last_error(), "cuda backend: ") != nullptr);
    }
    EXPECT(realn_selftest_run(REALN_BACKEND_CPU, "gemm", &json) == REALN_OK && json &&
           std::strstr(json, "\"backend\": \"cpu\"") && std::strstr(json, "\"passed\": true"));

    test_process_read();

    EXPECT(realn_stream_destroy(s) == REALN_OK);
    EXPECT(realn_stream_destroy(nullptr) == REALN_OK);
    std::printf("%d failure(s)\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
