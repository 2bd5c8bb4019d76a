// realn_selftest_run, the one export of librealn_selftest.so (include/realn_selftest.h): the case
// list run on one backend, reported as JSON. Lives beside the cases, outside librealn, so
// librealn.so exports the ABI only; its op cases call librealn's exports like any other caller.
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>

#include "../core/error.hpp"
#include "harness.hpp"
#include "realn_selftest.h"

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
thread_local std::string g_selftest_error;

void report_selftest_error(const std::string& message) { g_selftest_error = message; }

}  // namespace

extern "C" REALN_SELFTEST_API const char* realn_selftest_last_error(void) { return g_selftest_error.c_str(); }

extern "C" REALN_SELFTEST_API realn_status realn_selftest_run(int32_t backend, const char* filter,
                                                     const char** json) {
    using namespace realn::testing;
    return realn::guard_reporting(report_selftest_error, "realn_selftest_run", [&] {
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
