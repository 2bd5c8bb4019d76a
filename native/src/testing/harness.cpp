// Implementation of the case harness: the case list, the test environment and the error measures.
#include "harness.hpp"

#include <algorithm>
#include <stdexcept>

#include "../core/error.hpp"

namespace realn::testing {

static std::vector<Case>& registry() {
    static std::vector<Case> r;
    return r;
}

bool add_case(Case c) {
    registry().push_back(std::move(c));
    return true;
}

// The order fixes each case's seed: keep it (it is the order the files had when the cases
// registered themselves from static initialisers, alphabetical by file).
const std::vector<Case>& cases() {
    static const bool filled = [] {
        add_attention_cases();
        add_bf16_cases();
        add_dense_cases();
        add_memory_cases();
        add_optim_cases();
        add_rowwise_cases();
        add_small_m_cases();
        return true;
    }();
    (void)filled;
    return registry();
}

Env::Env(int32_t backend, uint64_t seed) : backend_(backend), rng_(seed) {
    check(realn_stream_create(backend, 0, &stream_));
}

Env::~Env() {
    for (auto b : bufs_) realn_buf_free(b);
    realn_stream_destroy(stream_);
}

void Env::check(realn_status st) {
    if (st != REALN_OK)
        throw std::runtime_error(std::string(realn_status_string(st)) + ": " + realn_last_error());
}

void* Env::alloc(int64_t bytes) {
    realn_buf_t b = nullptr;
    check(realn_buf_alloc(stream_, bytes, &b));
    bufs_.push_back(b);
    void* p = nullptr;
    check(realn_buf_ptr(b, &p));
    if (bytes > 0) {
        std::vector<char> zeros(static_cast<size_t>(bytes), 0);
        check(realn_copy(stream_, p, zeros.data(), bytes, REALN_COPY_H2D));
    }
    return p;
}

template <typename R>
static double rel_err_impl(const std::vector<float>& out, const std::vector<R>& ref) {
    if (out.size() != ref.size()) return INFINITY;
    double max_ref = 0.0, max_diff = 0.0;
    for (size_t i = 0; i < out.size(); ++i) {
        const double r = static_cast<double>(ref[i]), o = static_cast<double>(out[i]);
        if (std::isfinite(r)) {
            if (!std::isfinite(o)) return INFINITY;
            max_ref = std::max(max_ref, std::fabs(r));
            max_diff = std::max(max_diff, std::fabs(o - r));
        } else if (!(o == r)) {  // -inf reference must be matched exactly; NaN never matches
            return INFINITY;
        }
    }
    if (max_ref == 0.0) return max_diff;  // all-zero reference: absolute error
    return max_diff / max_ref;
}

double rel_err(const std::vector<float>& out, const std::vector<double>& ref) {
    return rel_err_impl(out, ref);
}
double rel_err(const std::vector<float>& out, const std::vector<float>& ref) {
    return rel_err_impl(out, ref);
}

double worst(std::initializer_list<double> errs) {
    double w = 0.0;
    for (double e : errs) {
        if (std::isnan(e)) return INFINITY;
        w = std::max(w, e);
    }
    return w;
}

std::vector<double> finite_diff(const std::function<double(const std::vector<double>&)>& f,
                                std::vector<double> x, double h) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double xi = x[i];
        x[i] = xi + h;
        const double fp = f(x);
        x[i] = xi - h;
        const double fm = f(x);
        x[i] = xi;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace realn::testing
