// gdr2 — the one place that includes Eigen (and the x86 intrinsics headers).
//
// GCC 12's AVX-512 intrinsics give their "undefined" vectors a self-initialisation
// (`__m512 __Y = __Y;`, GCC bug 105593, fixed in GCC 13), so every Eigen packet
// operation inlined into a translation unit built with AVX-512 warned
// -Wmaybe-uninitialized — 2400 identical warnings in this project's build, which would
// hide real ones. The warning is reported at that header's lines, so ignoring it only
// while the headers are first read silences exactly those and nothing in the code that
// includes them.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic pop
#endif
