// gdr2 — the one place that includes Eigen (and the x86 intrinsics headers).
//
// GCC's AVX-512 intrinsics (GCC 12 here) give their "undefined" vectors a
// self-initialisation (`__m512 __Y = __Y;`, GCC bug 105593), so every Eigen packet
// operation inlined into a translation unit built with AVX-512 warned
// -Wmaybe-uninitialized — 2429 identical warnings in this project's build, which would
// hide real ones. The warning is reported at that header's lines, so ignoring it only
// while the headers are first read silences exactly those and nothing in the code that
// includes them.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
