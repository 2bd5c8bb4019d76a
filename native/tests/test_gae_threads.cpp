// ctest: realn_op_gae on an RL batch (fewer than 2^20 packed tokens) runs on the calling thread and
// starts no OpenMP team (cpu/gae.cpp): the op runs on the master, whose cores the worker processes
// fill, and a team there woke threads on those cores and left them spinning (it slowed an async
// run's trainer). A team is observed as the threads the OpenMP runtime starts for its first
// parallel region (/proc/self/task); a batch of 2^20 tokens or more still takes the parallel path,
// which also shows the probe sees a team where one starts.
#include <dirent.h>

#include <cstdio>
#include <vector>

#include "realn.h"

static int threads_of_this_process() {
    DIR* d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n;
}

static bool gae(realn_stream_t s, int64_t nseq, int32_t len) {
    std::vector<int32_t> cu(nseq + 1);
    for (int64_t i = 0; i <= nseq; ++i) cu[i] = static_cast<int32_t>(i * len);
    const int64_t t = cu[nseq];
    std::vector<float> rew(t, 0.5f), val(t + nseq, 0.25f), adv(t), ret(t);
    return realn_op_gae(s, rew.data(), val.data(), cu.data(), nseq, 1.0f, 0.95f, adv.data(), ret.data()) == REALN_OK &&
           realn_stream_synchronize(s) == REALN_OK;
}

int main() {
    // Four threads asked for, so a parallel region starts a team whatever the core count.
    if (realn_set_num_threads(4) != REALN_OK) { std::printf("FAIL set threads: %s\n", realn_last_error()); return 1; }
    realn_stream_t s = nullptr;
    if (realn_stream_create(REALN_BACKEND_CPU, 0, &s) != REALN_OK) { std::printf("FAIL stream: %s\n", realn_last_error()); return 1; }
    int failures = 0;
    const int before = threads_of_this_process();
    // ppo-tiny's batch: 256 sequences of 8 tokens; grpo-math's size: 512 of 14; one just under 2^20 tokens.
    for (auto [nseq, len] : {std::pair<int64_t, int32_t>{256, 8}, {512, 14}, {4095, 256}}) {
        if (!gae(s, nseq, len)) { std::printf("FAIL gae %lld x %d: %s\n", (long long)nseq, len, realn_last_error()); ++failures; }
        const int now = threads_of_this_process();
        if (now != before) {
            std::printf("FAIL gae of %lld sequences x %d tokens started %d thread(s) (OpenMP team on the master)\n",
                        (long long)nseq, len, now - before);
            ++failures;
        }
    }
    // 4097 x 256 = 2^20 + 256 tokens: the parallel path, which the probe must see.
    if (!gae(s, 4097, 256)) { std::printf("FAIL gae 4097 x 256: %s\n", realn_last_error()); ++failures; }
    if (threads_of_this_process() <= before) {
        std::printf("FAIL gae of 2^20 + 256 tokens started no OpenMP team: the probe cannot see one\n");
        ++failures;
    }
    realn_stream_destroy(s);
    if (failures == 0) std::printf("gae threads: ok (%d threads before)\n", before);
    return failures == 0 ? 0 : 1;
}
