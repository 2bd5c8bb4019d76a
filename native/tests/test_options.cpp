// ctest `option_versions`: option structs are versioned by size (realn.h). The reader
// (core/options.hpp) is checked on a two-version struct as a future realn_*_opts will have: a
// version-1 caller gets the version-2 defaults and exactly what a full struct holding those
// defaults gets; sizes below version 1, between versions or beyond the newest, and versions that
// do not match the size, are refused with a message naming the INIT macro and the released sizes.
// Then the real structs through the ABI: today's size runs, every other size is refused.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.hpp"
#include "core/options.hpp"
#include "realn.h"

static int g_failures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            ++g_failures;                                                   \
        }                                                                   \
    } while (0)

namespace {

// Version 2 appended `beta` (default 0.25) to version 1's {size, version, alpha, count}.
struct TwoVersionOpts {
    int32_t size;
    int32_t version;
    float alpha;
    int32_t count;
    double beta;
};
struct TwoVersionOptsV1 {  // the layout a caller built against the version-1 header has
    int32_t size;
    int32_t version;
    float alpha;
    int32_t count;
};
const realn::OptsVersions<TwoVersionOpts, 2> kTwoVersions = {
    "two_version_opts", "TWO_VERSION_OPTS_INIT", {16, 24}, {24, 2, 1.0f, 0, 0.25}};
static_assert(sizeof(TwoVersionOptsV1) == 16 && sizeof(TwoVersionOpts) == 24, "test layouts");

// The message read_opts refuses with ("" if it accepts).
std::string refusal(const void* given) {
    try {
        realn::read_opts(static_cast<const TwoVersionOpts*>(given), kTwoVersions);
        return "";
    } catch (const realn::Error& e) {
        EXPECT(e.status() == REALN_ERR_INVALID_ARGUMENT);
        return e.what();
    }
}

bool mentions(const std::string& text, const char* needle) {
    if (text.find(needle) != std::string::npos) return true;
    std::printf("  message \"%s\" lacks \"%s\"\n", text.c_str(), needle);
    return false;
}

void two_version_struct() {
    // A version-1 caller: its fields kept, beta defaulted, today's size and version handed on.
    const TwoVersionOptsV1 old = {16, 1, 3.0f, 5};
    const TwoVersionOpts from_old = realn::read_opts(reinterpret_cast<const TwoVersionOpts*>(&old), kTwoVersions);
    EXPECT(from_old.alpha == 3.0f && from_old.count == 5 && from_old.beta == 0.25);
    EXPECT(from_old.size == 24 && from_old.version == 2);
    // ... exactly what a full struct with the default beta gives.
    const TwoVersionOpts full = {24, 2, 3.0f, 5, 0.25};
    const TwoVersionOpts from_full = realn::read_opts(&full, kTwoVersions);
    EXPECT(std::memcmp(&from_old, &from_full, sizeof(TwoVersionOpts)) == 0);
    // A full struct keeps a non-default beta.
    const TwoVersionOpts custom = {24, 2, 3.0f, 5, 0.75};
    EXPECT(realn::read_opts(&custom, kTwoVersions).beta == 0.75);

    const int32_t too_small[2] = {8, 1};
    std::string why = refusal(too_small);
    EXPECT(mentions(why, "opts must be initialised with TWO_VERSION_OPTS_INIT (size 8, version 1)"));
    EXPECT(mentions(why, "smaller than the first released two_version_opts"));
    EXPECT(mentions(why, "version 1 = 16 bytes, version 2 = 24 bytes"));
    const TwoVersionOpts between = {20, 2, 1.0f, 0, 0.0};
    EXPECT(mentions(refusal(&between), "no released two_version_opts has this size"));
    const struct { TwoVersionOpts v2; double gamma; } newer = {{32, 3, 1.0f, 0, 0.0}, 0.0};
    EXPECT(mentions(refusal(&newer), "a newer header than this library's?"));
    const TwoVersionOptsV1 wrong_version = {16, 2, 1.0f, 0};
    EXPECT(mentions(refusal(&wrong_version), "a 16-byte two_version_opts is version 1"));
}

// realn_adamw_opts and realn_sample_opts through the ABI: version 1 (today's 40 bytes) runs; a
// size of no released version is refused before anything is read past it.
void real_structs() {
    realn_stream_t s = nullptr;
    EXPECT(realn_stream_create(REALN_BACKEND_CPU, 0, &s) == REALN_OK);
    float p[2] = {1, 2}, g[2] = {0.5f, -0.5f}, m[2] = {0, 0}, v[2] = {0, 0};
    realn_adamw_opts adamw = REALN_ADAMW_OPTS_INIT;
    EXPECT(adamw.size == 40 && adamw.version == 1);
    EXPECT(realn_op_adamw(s, &adamw, p, g, m, v, 2) == REALN_OK);
    for (int32_t size : {0, 8, 36, 44, 48}) {
        adamw.size = size;
        EXPECT(realn_op_adamw(s, &adamw, p, g, m, v, 2) == REALN_ERR_INVALID_ARGUMENT);
        EXPECT(mentions(realn_last_error(), "REALN_ADAMW_OPTS_INIT (size "));
        EXPECT(mentions(realn_last_error(), "version 1 = 40 bytes"));
    }
    adamw.size = 8;
    realn_op_adamw(s, &adamw, p, g, m, v, 2);
    EXPECT(mentions(realn_last_error(), "smaller than the first released realn_adamw_opts"));

    float logits[4] = {0.1f, 2.0f, -1.0f, 0.5f};
    int32_t token = -1;
    realn_sample_opts sample = REALN_SAMPLE_OPTS_INIT;
    sample.temperature = 0;
    EXPECT(realn_op_sample(s, REALN_DTYPE_F32, logits, 1, 4, &sample, &token, nullptr, nullptr) == REALN_OK && token == 1);
    sample.size = 24;
    EXPECT(realn_op_sample(s, REALN_DTYPE_F32, logits, 1, 4, &sample, &token, nullptr, nullptr) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(mentions(realn_last_error(), "REALN_SAMPLE_OPTS_INIT (size 24, version 1): smaller than the first released realn_sample_opts"));
    sample.size = 48;
    EXPECT(realn_op_sample(s, REALN_DTYPE_F32, logits, 1, 4, &sample, &token, nullptr, nullptr) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(mentions(realn_last_error(), "no released realn_sample_opts has this size (version 1 = 40 bytes; a newer header"));
    sample.size = 40;
    sample.version = 2;
    EXPECT(realn_op_sample(s, REALN_DTYPE_F32, logits, 1, 4, &sample, &token, nullptr, nullptr) == REALN_ERR_INVALID_ARGUMENT);
    EXPECT(mentions(realn_last_error(), "a 40-byte realn_sample_opts is version 1"));
    EXPECT(realn_stream_destroy(s) == REALN_OK);
}

}  // namespace

int main() {
    two_version_struct();
    real_structs();
    std::printf("%d failure(s)\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
