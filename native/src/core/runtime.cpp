// Backend registry, thread control and build information. The CPU backend is always present;
// the CUDA backend registers itself only in builds with REALN_HAVE_CUDA.
#include <omp.h>

#include <string>

#include "backend.hpp"
#include "error.hpp"

extern "C" void openblas_set_num_threads(int);

namespace realn {
const Backend* cpu_backend();
#ifdef REALN_HAVE_CUDA
const Backend* cuda_backend();
#endif

const Backend* backend_get(int32_t kind) {
    switch (kind) {
        case REALN_BACKEND_CPU: return cpu_backend();
#ifdef REALN_HAVE_CUDA
        case REALN_BACKEND_CUDA: return cuda_backend();
#endif
        default: return nullptr;
    }
}
}  // namespace realn

namespace {
int g_default_threads = [] { return omp_get_max_threads(); }();
}

extern "C" {

REALN_API realn_status realn_set_num_threads(int32_t n) {
    return realn::guard("realn_set_num_threads", [&] {
        int t = n > 0 ? n : g_default_threads;
        omp_set_num_threads(t);
        openblas_set_num_threads(t);
    });
}

REALN_API realn_status realn_get_num_threads(int32_t* n) {
    return realn::guard("realn_get_num_threads", [&] {
        REALN_NOT_NULL(n);
        *n = omp_get_max_threads();
    });
}

REALN_API const char* realn_build_info(void) {
    static const std::string info = [] {
        std::string s = "realn " + std::to_string(REALN_VERSION_MAJOR) + "." +
                        std::to_string(REALN_VERSION_MINOR) + "." +
                        std::to_string(REALN_VERSION_PATCH) + "; backends: cpu";
#ifdef REALN_HAVE_CUDA
        s += ", cuda";
#endif
#ifdef REALN_BLAS_REFERENCE
        s += "; blas: reference (no OpenBLAS: slow CPU GEMM)";
#else
        s += "; blas: openblas";
#endif
        s += "; openmp threads: " + std::to_string(omp_get_max_threads());
#ifdef __AVX2__
        s += "; simd: avx2";
#endif
        return s;
    }();
    return info.c_str();
}

}  // extern "C"
