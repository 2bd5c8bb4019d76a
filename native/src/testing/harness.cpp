// Implementation of the case harness and the realn_selftest_run export.
#include "harness.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
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

const std::vector<Case>& cases() { return registry(); }

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

namespace {

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') { o += '\\'; o += c; }
        else if (static_cast<unsigned char>(c) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
        else o += c;
    }
    return o;
}

std::string json_number(double v) {
    if (std::isnan(v)) return "null";
    if (std::isinf(v)) return "1e308";
    char b[32];
    std::snprintf(b, sizeof b, "%.3e", v);
    return b;
}

thread_local std::string g_selftest_json;

}  // namespace

extern "C" REALN_API realn_status realn_selftest_run(int32_t backend, const char* filter,
                                                     const char** json) {
    using namespace realn::testing;
    return realn::guard("realn_selftest_run", [&] {
        REALN_NOT_NULL(json);
        *json = nullptr;
        int32_t available = 0;
        realn_backend_available(backend, &available);
        if (!available) {
            if (backend == REALN_BACKEND_CUDA) {
                // The stream's refusal names the reason (no driver, no device, not compiled in).
                realn_stream_t probe = nullptr;
                realn_status st = realn_stream_create(backend, 0, &probe);
                if (st == REALN_OK) realn_stream_destroy(probe);
                realn::fail(st == REALN_ERR_UNSUPPORTED ? REALN_ERR_UNSUPPORTED : REALN_ERR_NOT_FOUND, realn_last_error());
            }
            realn::fail(REALN_ERR_NOT_FOUND, "backend ", backend, " is unknown");
        }
        const char* bname = backend == REALN_BACKEND_CPU ? "cpu" : "cuda";
        std::ostringstream os;
        os << "{\"backend\": \"" << bname << "\", \"ops\": [";
        bool first = true;
        uint64_t seed = 1234;
        for (const Case& c : cases()) {
            ++seed;
            if (filter && *filter && c.name.find(filter) == std::string::npos) continue;
            double err;
            std::string note;
            auto t0 = std::chrono::steady_clock::now();
            try {
                Env env(backend, seed);
                Outcome o = c.run(env);
                err = o.max_rel_err;
                note = o.note;
            } catch (const std::exception& e) {
                err = INFINITY;
                note = e.what();
            }
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            bool passed = std::isfinite(err) && err <= c.tol;
            os << (first ? "" : ", ") << "{\"name\": \"" << json_escape(c.name) << "\", \"shape\": \""
               << json_escape(c.shape) << "\", \"max_rel_err\": " << json_number(err)
               << ", \"tol\": " << json_number(c.tol) << ", \"passed\": " << (passed ? "true" : "false")
               << ", \"seconds\": " << json_number(secs);
            if (!note.empty()) os << ", \"note\": \"" << json_escape(note) << "\"";
            os << "}";
            first = false;
        }
        os << "]}";
        g_selftest_json = os.str();
        *json = g_selftest_json.c_str();
    });
}
