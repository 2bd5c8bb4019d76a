// Error plumbing shared by every part of librealn: C++ code throws realn::Error (status +
// message); each exported function runs its body through realn::guard(), which turns any
// exception into a status and stores the message in the calling thread's last-error slot.
#pragma once

#include <cstdint>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "realn.h"

namespace realn {

class Error : public std::runtime_error {
public:
    Error(realn_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    realn_status status() const noexcept { return status_; }

private:
    realn_status status_;
};

void set_last_error(const std::string& message);
void clear_last_error();

template <typename... Args>
std::string concat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}

template <typename... Args>
[[noreturn]] void fail(realn_status status, const Args&... args) {
    throw Error(status, concat(args...));
}

// Runs fn(); maps exceptions to statuses and hands "<where>: <detail>" to report. Never lets an
// exception cross the C ABI.
template <typename Fn>
realn_status guard_reporting(void (*report)(const std::string&), const char* where, Fn&& fn) noexcept {
    try {
        fn();
        return REALN_OK;
    } catch (const Error& e) {
        report(concat(where, ": ", e.what()));
        return e.status();
    } catch (const std::bad_alloc&) {
        report(concat(where, ": out of memory"));
        return REALN_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        report(concat(where, ": internal error: ", e.what()));
        return REALN_ERR_INTERNAL;
    } catch (...) {
        report(concat(where, ": internal error: unknown exception"));
        return REALN_ERR_INTERNAL;
    }
}

// guard_reporting into the calling thread's realn_last_error() slot: every librealn export.
template <typename Fn>
realn_status guard(const char* where, Fn&& fn) noexcept {
    return guard_reporting(set_last_error, where, std::forward<Fn>(fn));
}

}  // namespace realn

// Argument checks: each names the argument and the offending value.
#define REALN_REQUIRE(cond, ...)                                                   \
    do {                                                                           \
        if (!(cond)) ::realn::fail(REALN_ERR_INVALID_ARGUMENT, __VA_ARGS__);       \
    } while (0)
#define REALN_NOT_NULL(p) REALN_REQUIRE((p) != nullptr, #p " must not be NULL")
#define REALN_NON_NEGATIVE(x) REALN_REQUIRE((x) >= 0, #x " must be >= 0 (got ", (x), ")")
#define REALN_POSITIVE(x) REALN_REQUIRE((x) > 0, #x " must be > 0 (got ", (x), ")")
