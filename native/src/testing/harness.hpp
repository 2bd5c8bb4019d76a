// One list of op test cases (the static library realn_cases), used by ctest (native/tests) and by
// `realn selftest` (through realn_selftest_run, exported by librealn_selftest.so, not by librealn).
// A case draws random inputs, runs the op on the backend under test through the public C ABI, and compares with a float64 reference computed here; backward cases compare
// with central finite differences of the float64 reference forward. The reported error is
// normwise: max|out - ref| / max|ref| (non-finite output => infinite error, so NaN never passes).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "realn.h"

namespace realn::testing {

// Deterministic random inputs (seeded per case, so a failure reproduces).
struct Rng {
    std::mt19937_64 gen;
    explicit Rng(uint64_t seed) : gen(seed) {}
    float uniform(float lo = -1.0f, float hi = 1.0f) {
        return std::uniform_real_distribution<float>(lo, hi)(gen);
    }
    float normal(float stddev = 1.0f) { return std::normal_distribution<float>(0.0f, stddev)(gen); }
    int32_t integer(int32_t lo, int32_t hi) {  // inclusive
        return std::uniform_int_distribution<int32_t>(lo, hi)(gen);
    }
    std::vector<float> uniform_vec(int64_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& x : v) x = uniform(lo, hi);
        return v;
    }
    std::vector<float> normal_vec(int64_t n, float stddev = 1.0f) {
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& x : v) x = normal(stddev);
        return v;
    }
};

// What a case runs against: a stream of the backend under test, memory on that backend, and
// transfers. Every buffer is freed when the Env goes away.
class Env {
public:
    explicit Env(int32_t backend, uint64_t seed);
    ~Env();
    Env(const Env&) = delete;
    Env& operator=(const Env&) = delete;

    realn_stream_t stream() const { return stream_; }
    int32_t backend() const { return backend_; }
    Rng& rng() { return rng_; }

    void* alloc(int64_t bytes);  // backend memory, zero-filled
    template <typename T>
    T* upload(const std::vector<T>& host) {
        void* d = alloc(static_cast<int64_t>(host.size() * sizeof(T)));
        if (!host.empty()) check(realn_copy(stream_, d, host.data(), host.size() * sizeof(T), REALN_COPY_H2D));
        return static_cast<T*>(d);
    }
    template <typename T>
    std::vector<T> download(const T* dev, int64_t n) {
        std::vector<T> host(static_cast<size_t>(n));
        if (n > 0) check(realn_copy(stream_, host.data(), dev, n * sizeof(T), REALN_COPY_D2H));
        check(realn_stream_synchronize(stream_));
        return host;
    }
    // Metadata the ABI reads from HOST memory (cu_seqlens, interval lists) stays on the host.
    // Throws std::runtime_error with the native message on a failed status.
    static void check(realn_status st);

private:
    int32_t backend_;
    realn_stream_t stream_ = nullptr;
    std::vector<realn_buf_t> bufs_;
    Rng rng_;
};

struct Outcome {
    double max_rel_err;
    std::string note;  // optional detail (first mismatch)
};

struct Case {
    std::string name;   // op name, e.g. "rmsnorm_bwd"
    std::string shape;  // human-readable shape, e.g. "rows=7 dim=64"
    double tol;         // pass if max_rel_err <= tol (0 => bit-exact)
    std::function<Outcome(Env&)> run;
};

// The case list: every case file's add_<family>_cases() appends its cases through add_case, in
// the order cases() calls them (explicit calls, not static initialisers, so the list survives
// linking from the static library realn_cases). A case's seed is 1235 + its index in the list.
bool add_case(Case c);
const std::vector<Case>& cases();
void add_attention_cases();  // cases_attention.cpp
void add_bf16_cases();       // cases_bf16.cpp
void add_dense_cases();      // cases_dense.cpp
void add_memory_cases();     // cases_memory.cpp
void add_optim_cases();      // cases_optim.cpp
void add_rowwise_cases();    // cases_rowwise.cpp
void add_small_m_cases();    // cases_small_m.cpp

// Normwise error of out against ref; +inf if out has a non-finite value where ref is finite.
double rel_err(const std::vector<float>& out, const std::vector<double>& ref);
double rel_err(const std::vector<float>& out, const std::vector<float>& ref);
// Max over several (out, ref) pairs.
double worst(std::initializer_list<double> errs);

// Central finite differences of a scalar function of x (float64), step h.
std::vector<double> finite_diff(const std::function<double(const std::vector<double>&)>& f,
                                std::vector<double> x, double h = 1e-6);
std::vector<double> to_double(const std::vector<float>& v);
// The bf16 nearest to f, ties to even, from a float64 comparison of its two neighbours (independent
// of the library's conversion; NaN gives 0: callers compare NaNs separately). cases_bf16.cpp.
uint16_t ref_bf16(float f);

// "rows=7 dim=64"-style shape strings.
template <typename... Args>
std::string concat_shape(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}

// Default tolerances. Forward fp32 vs float64: rounding of long dot products; backward vs finite
// differences: fp32 compute plus FD truncation.
constexpr double kTolF32 = 2e-5;
constexpr double kTolGrad = 2e-4;

}  // namespace realn::testing
