// Cases: copies, fills, elementwise helpers, dtype conversion, and the reallocation primitives
// (interval gather/scatter must be BIT-EXACT: tolerance 0), plus the byte hash.
#include <cstring>
#include <numeric>

#include "harness.hpp"

namespace realn::testing {
namespace {

// Random interval list over a flat buffer of `flat_bytes`: sorted, non-overlapping, with
// lengths drawn from [min_len, max_len] (0 allowed), gaps in between.
void make_intervals(Rng& r, int64_t flat_bytes, int64_t count, int64_t min_len, int64_t max_len,
                    std::vector<int64_t>& off, std::vector<int64_t>& len) {
    off.clear();
    len.clear();
    int64_t pos = 0;
    for (int64_t i = 0; i < count; ++i) {
        int64_t l = min_len + (max_len > min_len ? r.integer(0, int32_t(max_len - min_len)) : 0);
        int64_t gap = r.integer(0, 7);
        if (pos + gap + l > flat_bytes) break;
        off.push_back(pos + gap);
        len.push_back(l);
        pos += gap + l;
    }
}

std::vector<float> bytes_as_floats(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
    // Bit-exact comparison expressed as an error: fraction of differing bytes (0 = identical).
    size_t diff = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) diff += a[i] != b[i];
    return {static_cast<float>(diff)};
}

Outcome interval_case(Env& env, bool gather, int64_t flat_bytes, int64_t count, int64_t min_len,
                      int64_t max_len) {
    Rng& r = env.rng();
    std::vector<int64_t> off, len;
    make_intervals(r, flat_bytes, count, min_len, max_len, off, len);
    const int64_t total = std::accumulate(len.begin(), len.end(), int64_t(0));
    std::vector<uint8_t> flat(flat_bytes), staging(total);
    for (auto& b : flat) b = static_cast<uint8_t>(r.integer(0, 255));
    for (auto& b : staging) b = static_cast<uint8_t>(r.integer(0, 255));
    uint8_t* dflat = env.upload(flat);
    uint8_t* dstag = env.upload(staging);
    std::vector<uint8_t> expect, got;
    if (gather) {
        Env::check(realn_interval_gather(env.stream(), dstag, dflat, off.data(), len.data(),
                                         static_cast<int64_t>(off.size())));
        expect.resize(total);
        int64_t p = 0;
        for (size_t i = 0; i < off.size(); ++i) {
            std::memcpy(expect.data() + p, flat.data() + off[i], len[i]);
            p += len[i];
        }
        got = env.download(dstag, total);
    } else {
        Env::check(realn_interval_scatter(env.stream(), dflat, dstag, off.data(), len.data(),
                                          static_cast<int64_t>(off.size())));
        expect = flat;
        int64_t p = 0;
        for (size_t i = 0; i < off.size(); ++i) {
            std::memcpy(expect.data() + off[i], staging.data() + p, len[i]);
            p += len[i];
        }
        got = env.download(dflat, flat_bytes);
    }
    float diff = bytes_as_floats(got, expect)[0];
    return {diff, diff == 0 ? "" : concat_shape(diff, " bytes differ")};
}

uint64_t ref_hash(const uint8_t* p, int64_t n) {
    // Independent re-statement of "realn hash v1" (see cpu/interval.cpp).
    auto mix = [](uint64_t h, uint64_t w) {
        h ^= w;
        h *= 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        return h;
    };
    const int64_t chunk = int64_t(1) << 20;
    uint64_t h = mix(0x84222325CBF29CE4ull, static_cast<uint64_t>(n));
    for (int64_t c = 0; c < n; c += chunk) {
        const int64_t m = std::min(chunk, n - c);
        uint64_t hc = 0xCBF29CE484222325ull;
        for (int64_t i = 0; i < m; i += 8) {
            uint64_t w = 0;
            for (int64_t b = 0; b < 8 && i + b < m; ++b) w |= uint64_t(p[c + i + b]) << (8 * b);
            hc = mix(hc, w);
        }
        h = mix(h, hc);
    }
    return h;
}

Outcome hash_case(Env& env, int64_t n) {
    std::vector<uint8_t> data(n);
    for (auto& b : data) b = static_cast<uint8_t>(env.rng().integer(0, 255));
    uint8_t* d = env.upload(data);
    uint64_t h = 0, h2 = 0;
    Env::check(realn_hash_bytes(env.stream(), d, n, &h));
    // A single flipped bit must change the hash.
    if (n > 0) {
        data[n / 2] ^= 1;
        uint8_t* d2 = env.upload(data);
        Env::check(realn_hash_bytes(env.stream(), d2, n, &h2));
        data[n / 2] ^= 1;
    }
    const bool ok = h == ref_hash(data.data(), n) && (n == 0 || h2 != h);
    return {ok ? 0.0 : 1.0, ok ? "" : "hash differs from the reference or ignores a bit flip"};
}

float bf16_round(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace

void add_memory_cases() {
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 20}) {
        add_case({"copy", concat_shape("bytes=", n), 0.0, [n](Env& e) {
                      std::vector<uint8_t> src(n);
                      for (auto& b : src) b = static_cast<uint8_t>(e.rng().integer(0, 255));
                      uint8_t* s = e.upload(src);
                      uint8_t* d = static_cast<uint8_t*>(e.alloc(n));
                      Env::check(realn_copy(e.stream(), d, s, n, REALN_COPY_D2D));
                      return Outcome{bytes_as_floats(e.download(d, n), src)[0], ""};
                  }});
    }
    add_case({"fill", "n=4097", 0.0, [](Env& e) {
                  float* d = static_cast<float*>(e.alloc(4097 * 4));
                  Env::check(realn_fill_f32(e.stream(), d, 4097, -2.5f));
                  return Outcome{rel_err(e.download(d, 4097), std::vector<float>(4097, -2.5f)), ""};
              }});
    for (int64_t n : {int64_t(1), int64_t(100003)}) {
        add_case({"axpby", concat_shape("n=", n), kTolF32, [n](Env& e) {
                      auto x = e.rng().uniform_vec(n), y = e.rng().uniform_vec(n);
                      float* dy = e.upload(y);
                      Env::check(realn_op_axpby(e.stream(), REALN_DTYPE_F32, n, 0.7f, e.upload(x), -1.3f, dy));
                      std::vector<double> ref(n);
                      for (int64_t i = 0; i < n; ++i) ref[i] = 0.7 * x[i] - 1.3 * y[i];
                      return Outcome{rel_err(e.download(dy, n), ref), ""};
                  }});
        add_case({"add", concat_shape("n=", n), kTolF32, [n](Env& e) {
                      auto a = e.rng().uniform_vec(n), b = e.rng().uniform_vec(n);
                      float* da = e.upload(a);
                      Env::check(realn_op_add(e.stream(), REALN_DTYPE_F32, n, da, e.upload(b), da));
                      std::vector<double> ref(n);
                      for (int64_t i = 0; i < n; ++i) ref[i] = double(a[i]) + b[i];
                      return Outcome{rel_err(e.download(da, n), ref), ""};
                  }});
        add_case({"sumsq", concat_shape("n=", n), 1e-12, [n](Env& e) {
                      auto a = e.rng().uniform_vec(n);
                      double got = 0, ref = 0;
                      Env::check(realn_op_sumsq(e.stream(), e.upload(a), n, &got));
                      for (float v : a) ref += double(v) * v;
                      return Outcome{std::fabs(got - ref) / ref, ""};
                  }});
        add_case({"scale", concat_shape("n=", n), kTolF32, [n](Env& e) {
                      auto a = e.rng().uniform_vec(n);
                      float* d = e.upload(a);
                      Env::check(realn_op_scale(e.stream(), d, n, 0.37f));
                      std::vector<double> ref(n);
                      for (int64_t i = 0; i < n; ++i) ref[i] = 0.37 * a[i];
                      return Outcome{rel_err(e.download(d, n), ref), ""};
                  }});
    }
    add_case({"count_nonfinite", "n=50000 with 3 nan/inf", 0.0, [](Env& e) {
                  auto a = e.rng().uniform_vec(50000);
                  a[7] = NAN;
                  a[4000] = INFINITY;
                  a[49999] = -INFINITY;
                  int64_t c = -1, c0 = -1;
                  Env::check(realn_op_count_nonfinite(e.stream(), e.upload(a), 50000, &c));
                  Env::check(realn_op_count_nonfinite(e.stream(), e.upload(a), 7, &c0));
                  return Outcome{(c == 3 && c0 == 0) ? 0.0 : 1.0, concat_shape("counted ", c, ", ", c0)};
              }});
    add_case({"convert", "f32->bf16->f32 n=10007", 0.0, [](Env& e) {
                  const int64_t n = 10007;
                  auto a = e.rng().normal_vec(n, 3.0f);
                  float* da = e.upload(a);
                  void* mid = e.alloc(n * 2);
                  float* back = static_cast<float*>(e.alloc(n * 4));
                  Env::check(realn_op_convert(e.stream(), REALN_DTYPE_BF16, mid, REALN_DTYPE_F32, da, n));
                  Env::check(realn_op_convert(e.stream(), REALN_DTYPE_F32, back, REALN_DTYPE_BF16, mid, n));
                  std::vector<float> ref(n);
                  for (int64_t i = 0; i < n; ++i) ref[i] = bf16_round(a[i]);
                  return Outcome{rel_err(e.download(back, n), ref), ""};
              }});
    add_case({"convert", "f32->f16->f32 n=1000", 1e-3, [](Env& e) {
                  const int64_t n = 1000;
                  auto a = e.rng().uniform_vec(n, -4.0f, 4.0f);
                  void* mid = e.alloc(n * 2);
                  float* back = static_cast<float*>(e.alloc(n * 4));
                  Env::check(realn_op_convert(e.stream(), REALN_DTYPE_F16, mid, REALN_DTYPE_F32, e.upload(a), n));
                  Env::check(realn_op_convert(e.stream(), REALN_DTYPE_F32, back, REALN_DTYPE_F16, mid, n));
                  return Outcome{rel_err(e.download(back, n), a), ""};
              }});
    struct I { int64_t flat, count, min_len, max_len; };
    for (I c : {I{64, 1, 64, 64}, I{1000, 50, 0, 17}, I{1 << 20, 3000, 1, 300},
                I{(1 << 23) + 13, 3, (1 << 21), (1 << 21) + 77}, I{200000, 20000, 1, 4}}) {
        for (bool g : {true, false}) {
            add_case({g ? "interval_gather" : "interval_scatter",
                      concat_shape("flat=", c.flat, " count<=", c.count, " len=[", c.min_len, ",", c.max_len, "]"),
                      0.0, [=](Env& e) { return interval_case(e, g, c.flat, c.count, c.min_len, c.max_len); }});
        }
    }
    for (int64_t n : {int64_t(0), int64_t(13), int64_t(3 << 20) + 5}) {
        add_case({"hash_bytes", concat_shape("bytes=", n), 0.0, [n](Env& e) { return hash_case(e, n); }});
    }
}

}  // namespace realn::testing
