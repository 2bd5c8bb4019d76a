// Versioned option structs (realn.h, "option structs"). Every released version of a struct has its
// own size, and a caller passes the struct of the header it was built against, size and version
// set by REALN_*_OPTS_INIT. read_opts accepts the size of any released version with that version's
// number, copies the caller's bytes over the defaults (the INIT values), and returns this header's
// layout: a field added after the caller's version takes its default, and backends never read past
// the caller's struct. Any other size or version is refused, naming the INIT macro and why.
#pragma once

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "error.hpp"

namespace realn {

// The released layouts of one option struct, oldest first; the last is this header's.
template <typename Opts, int32_t Versions>
struct OptsVersions {
    const char* type;        // "realn_adamw_opts"
    const char* init_macro;  // "REALN_ADAMW_OPTS_INIT"
    int32_t sizes[Versions]; // sizeof() of versions 1..Versions
    Opts defaults;           // the REALN_*_OPTS_INIT values of this header
};

template <typename Opts, int32_t Versions>
std::string released_layouts(const OptsVersions<Opts, Versions>& known) {
    std::ostringstream os;
    for (int32_t v = 1; v <= Versions; ++v)
        os << (v > 1 ? ", " : "") << "version " << v << " = " << known.sizes[v - 1] << " bytes";
    return os.str();
}

template <typename Opts, int32_t Versions>
Opts read_opts(const Opts* given, const OptsVersions<Opts, Versions>& known) {
    static_assert(Versions >= 1, "an option struct has at least one released version");
    const int32_t size = given->size, version = given->version;
    auto refuse = [&](const auto&... why) {
        fail(REALN_ERR_INVALID_ARGUMENT, "opts must be initialised with ", known.init_macro, " (size ", size,
             ", version ", version, "): ", why...);
    };
    if (size < known.sizes[0])
        refuse("smaller than the first released ", known.type, " (", released_layouts(known), ")");
    int32_t sized_version = 0;
    for (int32_t v = 1; v <= Versions; ++v)
        if (known.sizes[v - 1] == size) sized_version = v;
    if (sized_version == 0)
        refuse("no released ", known.type, " has this size (", released_layouts(known),
               size > known.sizes[Versions - 1] ? "; a newer header than this library's?)" : ")");
    if (version != sized_version)
        refuse("a ", size, "-byte ", known.type, " is version ", sized_version);
    Opts current = known.defaults;
    std::memcpy(static_cast<void*>(&current), given, static_cast<size_t>(size));
    current.size = known.sizes[Versions - 1];
    current.version = Versions;
    return current;
}

// What a backend gets for a caller's struct: this header's layout, alive until the end of the
// full expression that hands get() to the backend entry.
template <typename Opts>
struct OptsInForce {
    Opts value;
    const Opts* get() const { return &value; }
};

}  // namespace realn
