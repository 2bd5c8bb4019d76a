// Reading another process's memory on the same host: process_vm_readv(2), one kernel copy from
// the other process's pages into ours, no shared-memory staging and no work by the other process
// (it only keeps the memory alive and unchanged until the reader says it is done). The
// reallocation uses it between worker processes on one host (TransportRealloc); UCX's cma
// transport uses the same system call under its rendezvous protocol, but one message per
// interval, while here one call reads up to IOV_MAX intervals.
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "error.hpp"

namespace {

// Pieces of at most this many bytes, so the OpenMP threads share long intervals too.
constexpr int64_t kPiece = int64_t(4) << 20;
// Bytes of one process_vm_readv call (several pieces): large enough to amortise the call.
constexpr int64_t kBatchBytes = int64_t(16) << 20;
#ifdef IOV_MAX
constexpr int64_t kMaxIov = IOV_MAX;
#else
constexpr int64_t kMaxIov = 1024;
#endif

struct Piece {
    uint64_t remote;
    char* local;
    int64_t bytes;
};

// Appends [base, base + bytes) to an iovec list, extending the last iovec when it continues it.
void append(std::vector<iovec>& list, char* base, int64_t bytes) {
    if (!list.empty() && static_cast<char*>(list.back().iov_base) + list.back().iov_len == base)
        list.back().iov_len += static_cast<size_t>(bytes);
    else
        list.push_back({base, static_cast<size_t>(bytes)});
}

// Moves the first not yet complete iovec of a list (at) past `bytes` bytes.
void advance(std::vector<iovec>& list, size_t& at, size_t bytes) {
    while (bytes > 0 && at < list.size()) {
        if (bytes >= list[at].iov_len) {
            bytes -= list[at].iov_len;
            ++at;
        } else {
            list[at].iov_base = static_cast<char*>(list[at].iov_base) + bytes;
            list[at].iov_len -= bytes;
            bytes = 0;
        }
    }
    while (at < list.size() && list[at].iov_len == 0) ++at;
}

// Reads pieces [first, end) with as many process_vm_readv calls as it takes (a call may stop
// early at an iovec boundary); returns 0 or the errno of the call that failed. Pieces that are
// contiguous on one side share one iovec there: the two lists are byte streams matched in order,
// so a run of the other process's memory read into many places here (a dimension-1 split merged
// into full rows) is one remote iovec. That matters: the kernel pins the remote pages once per
// remote iovec, which costs as much as copying a few KiB (measured: 5.5 KiB pieces at 2.6 GB/s
// one remote iovec each, 3.2 GB/s merged, 3.2 GB/s one contiguous read).
int read_batch(pid_t pid, const Piece* p, int64_t count) {
    std::vector<iovec> local, remote;
    local.reserve(static_cast<size_t>(count));
    remote.reserve(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
        append(local, p[i].local, p[i].bytes);
        append(remote, reinterpret_cast<char*>(p[i].remote), p[i].bytes);
    }
    size_t at_local = 0, at_remote = 0;  // first iovec not yet complete on each side
    while (at_local < local.size() && at_remote < remote.size()) {
        ssize_t got = process_vm_readv(pid, &local[at_local], static_cast<unsigned long>(local.size() - at_local),
                                       &remote[at_remote], static_cast<unsigned long>(remote.size() - at_remote), 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (got == 0) return EFAULT;
        // Advance past what was read; a partially read iovec continues where it stopped.
        advance(local, at_local, static_cast<size_t>(got));
        advance(remote, at_remote, static_cast<size_t>(got));
    }
    return 0;
}

}  // namespace

extern "C" {

REALN_API realn_status realn_process_read(int32_t pid, void* local, uint64_t remote, const int64_t* remote_offsets,
                                          const int64_t* local_offsets, const int64_t* lengths, int64_t count) {
    return realn::guard("realn_process_read", [&] {
        REALN_POSITIVE(pid);
        REALN_NON_NEGATIVE(count);
        if (count == 0) return;
        REALN_NOT_NULL(local);
        REALN_REQUIRE(remote != 0, "remote must not be 0");
        REALN_NOT_NULL(remote_offsets);
        REALN_NOT_NULL(local_offsets);
        REALN_NOT_NULL(lengths);
        std::vector<Piece> pieces;
        int64_t total = 0;
        for (int64_t i = 0; i < count; ++i) {
            REALN_REQUIRE(remote_offsets[i] >= 0 && local_offsets[i] >= 0 && lengths[i] >= 0, "interval ", i,
                          " has remote offset ", remote_offsets[i], ", local offset ", local_offsets[i], ", length ",
                          lengths[i]);
            for (int64_t o = 0; o < lengths[i]; o += kPiece)
                pieces.push_back({remote + static_cast<uint64_t>(remote_offsets[i] + o),
                                  static_cast<char*>(local) + local_offsets[i] + o,
                                  lengths[i] - o < kPiece ? lengths[i] - o : kPiece});
            total += lengths[i];
        }
        // Batches of at most kMaxIov pieces and about kBatchBytes, read in parallel.
        std::vector<int64_t> starts;
        int64_t bytes = 0;
        for (int64_t i = 0; i < static_cast<int64_t>(pieces.size()); ++i) {
            if (starts.empty() || i - starts.back() >= kMaxIov || bytes >= kBatchBytes) {
                starts.push_back(i);
                bytes = 0;
            }
            bytes += pieces[i].bytes;
        }
        starts.push_back(static_cast<int64_t>(pieces.size()));
        const auto batches = static_cast<int64_t>(starts.size()) - 1;
        int error = 0;
#pragma omp parallel for schedule(dynamic, 1) if (total >= 2 * kBatchBytes)
        for (int64_t b = 0; b < batches; ++b) {
            int e = read_batch(static_cast<pid_t>(pid), &pieces[starts[b]], starts[b + 1] - starts[b]);
            if (e != 0) {
#pragma omp critical(realn_process_read_error)
                if (error == 0) error = e;
            }
        }
        if (error == EPERM || error == ENOSYS)
            realn::fail(REALN_ERR_UNSUPPORTED, "process_vm_readv from process ", pid, ": ", strerror(error),
                        " (not allowed to read it: another user, or ptrace restricted by kernel.yama.ptrace_scope)");
        if (error != 0)
            realn::fail(REALN_ERR_BACKEND, "process_vm_readv of ", total, " bytes in ", count, " intervals from process ",
                        pid, ": ", strerror(error));
    });
}

}  // extern "C"
