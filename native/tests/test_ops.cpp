// ctest driver for the op case list (src/testing): runs the cases of one op family on every
// backend present and prints, per case, the shape, the error against the float64 reference and
// the verdict (llm.c style evidence). --check-coverage fails if any op of the ABI has no case or
// the CPU backend lacks it.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "testing/harness.hpp"

using namespace realn::testing;

static const std::map<std::string, std::vector<std::string>> kFamilies = {
    {"gemm", {"gemm"}},
    {"linear", {"linear_fwd", "linear_bwd"}},
    {"small_m", {"linear_fwd_small_m", "small_m_linear_avx512", "small_m_linear_avx2", "small_m_linear_scalar",
                 "small_m_linear_bf16_amx", "small_m_linear_bf16_avx512bf16", "small_m_linear_bf16_avx512", "small_m_linear_bf16_avx2",
                 "small_m_linear_bf16_scalar"}},
    {"elementwise", {"axpby", "add", "sumsq", "scale", "count_nonfinite", "copy", "fill"}},
    {"convert", {"convert"}},
    {"interval", {"interval_gather", "interval_scatter"}},
    {"hash", {"hash_bytes"}},
    {"embedding", {"embedding_fwd", "embedding_bwd"}},
    {"rmsnorm", {"rmsnorm_fwd", "rmsnorm_bwd"}},
    {"rotary", {"rotary_fwd", "rotary_bwd", "rotary_freqs_fwd", "rotary_freqs_bwd"}},
    {"swiglu", {"swiglu_fwd", "swiglu_bwd"}},
    {"attention", {"attention_fwd", "attention_bwd", "attention_decode", "attention_decode_bf16_avx512",
                   "attention_decode_bf16_scalar"}},
    {"kv_store", {"kv_store"}},
    {"logprobs", {"logprobs_fwd", "logprobs_bwd"}},
    {"cross_entropy", {"cross_entropy_fwd", "cross_entropy_bwd"}},
    {"adamw", {"adamw"}},
    {"sample", {"sample"}},
    {"gae", {"gae"}},
};

static int check_coverage() {
    std::set<std::string> have;
    for (const auto& c : cases()) have.insert(c.name);
    int missing = 0;
    const realn::Backend* cpu = realn::backend_get(REALN_BACKEND_CPU);
    for (int i = 0; i < static_cast<int>(realn::Op::Count_); ++i) {
        auto op = static_cast<realn::Op>(i);
        std::string name = realn::op_name(op);
        if (!have.count(name)) {
            std::printf("MISSING case for op %s\n", name.c_str());
            ++missing;
        }
        if (!cpu->supports_op(op, REALN_DTYPE_F32)) {
            std::printf("MISSING cpu support for op %s\n", name.c_str());
            ++missing;
        }
    }
    // Probe the table through the ABI: an op whose entry is null reports UNSUPPORTED.
    std::printf("%zu cases registered, %d problem(s)\n", cases().size(), missing);
    return missing == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
    std::string family, only_backend;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--check-coverage")) return check_coverage();
        if (!std::strcmp(argv[i], "--family") && i + 1 < argc) family = argv[++i];
        if (!std::strcmp(argv[i], "--backend") && i + 1 < argc) only_backend = argv[++i];  // cpu | cuda
    }
    std::set<std::string> ops;
    if (!family.empty()) {
        auto it = kFamilies.find(family);
        if (it == kFamilies.end()) {
            std::fprintf(stderr, "unknown family '%s'\n", family.c_str());
            return 2;
        }
        ops.insert(it->second.begin(), it->second.end());
    }
    int failed = 0, ran = 0, unsupported = 0;
    for (int32_t backend : {REALN_BACKEND_CPU, REALN_BACKEND_CUDA}) {
        if (!only_backend.empty() && only_backend != (backend == REALN_BACKEND_CPU ? "cpu" : "cuda")) continue;
        int32_t avail = 0;
        realn_backend_available(backend, &avail);
        if (!avail) {
            if (backend != REALN_BACKEND_CPU) std::printf("backend %d not present: skipped\n", backend);
            continue;
        }
        uint64_t seed = 1234;
        for (const Case& c : cases()) {
            ++seed;  // same seeds as realn_selftest_run
            if (!ops.empty() && !ops.count(c.name)) continue;
            double err;
            std::string note;
            try {
                Env env(backend, seed);
                Outcome o = c.run(env);
                err = o.max_rel_err;
                note = o.note;
            } catch (const std::exception& e) {
                err = INFINITY;
                note = e.what();
            }
            // An op the cuda backend does not implement yet is listed, not failed (the CPU backend
            // implements every op: --check-coverage).
            if (backend != REALN_BACKEND_CPU && note.rfind("REALN_ERR_UNSUPPORTED", 0) == 0) {
                std::printf("[SKIP] cuda  %-18s %-44s not implemented on this backend\n", c.name.c_str(), c.shape.c_str());
                ++unsupported;
                continue;
            }
            const bool ok = std::isfinite(err) && err <= c.tol;
            ++ran;
            failed += ok ? 0 : 1;
            std::printf("[%s] %-5s %-18s %-44s err=%.3e tol=%.1e %s\n", ok ? "PASS" : "FAIL",
                        backend == REALN_BACKEND_CPU ? "cpu" : "cuda", c.name.c_str(),
                        c.shape.c_str(), err, c.tol, note.c_str());
        }
    }
    if (ran == 0) {
        std::printf("no cases ran for family '%s'\n", family.c_str());
        return 1;
    }
    std::printf("%d passed, %d failed%s\n", ran - failed, failed,
                unsupported ? (", " + std::to_string(unsupported) + " not implemented on cuda").c_str() : "");
    return failed == 0 ? 0 : 1;
}
