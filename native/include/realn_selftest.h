/*
 * realn_selftest.h — the header of librealn_selftest, the op case list as a library.
 *
 * librealn.so exports the ABI of realn.h and nothing else; the op test cases (native/src/testing,
 * the static library realn_cases that ctest also links) reach callers through this separate
 * library, which calls librealn's exports like any other caller (it needs librealn.so.0 loaded or
 * beside it). `realn selftest` loads it through ReaLNative.Interop's NativeLibraryResolver.
 */
#ifndef REALN_SELFTEST_H
#define REALN_SELFTEST_H

#include "realn.h"

#define REALN_SELFTEST_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* The op case list (the same one ctest uses) run on a backend against the float64 reference
 * (and, for non-CPU backends, against the CPU backend). Builds a JSON document
 *   {"backend": "cpu", "ops": [{"name": ..., "shape": ..., "max_rel_err": ..., "tol": ...,
 *    "passed": true}, ...]}
 * and returns it through *json (thread-local storage, valid until the next selftest call on the
 * same thread). filter: substring of case names, or NULL for all. A failed case is reported in
 * the JSON, not as a status; the status is non-OK only when the run itself cannot happen
 * (backend missing), and realn_selftest_last_error() then says why. */
REALN_SELFTEST_API realn_status realn_selftest_run(int32_t backend, const char* filter, const char** json);
/* Detail message of the last failed realn_selftest_run on this thread ("" if none). Never NULL. */
REALN_SELFTEST_API const char* realn_selftest_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* REALN_SELFTEST_H */
