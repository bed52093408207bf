// gdr2 — Gated Delta Rule-2 (Gated DeltaNet-2), header-only C++ on Eigen.
//
//   S_t = (I − k_t (b_t ⊙ k_t)ᵀ) Diag(exp g_t) S_{t−1} + k_t (w_t ⊙ v_t)ᵀ,  o_t = S_tᵀ (scale·q_t)
//
// Umbrella header. The pieces (see README "Architecture"):
//   tensor.hpp     strided views, dtype traits, a small owning Tensor
//   status.hpp     Status / Error
//   gates.hpp      the gate policy: GDR2, KDA, GDN, DeltaNet
//   problem.hpp    Problem / Outputs / Gradients / Options and their validation
//   parallel.hpp   executors (serial, Eigen ThreadPool, caller's parallel-for)
//   workspace.hpp  caller-owned scratch reused across calls
//   recurrent.hpp  token-by-token engine: prefill and in-place decode
//   chunk.hpp      chunkwise WY engine
//   recurrent_backward.hpp  BPTT with state checkpoints (SPEC §2)
//   chunk_backward.hpp      gate-aware chunkwise backward (SPEC §4–5) and the
//                           forward that saves its context
//   reference.hpp  fp64 reference, random problems, error metrics
#pragma once

#define GDR2_VERSION_MAJOR 0
#define GDR2_VERSION_MINOR 1
#define GDR2_VERSION_PATCH 0

#include "chunk.hpp"
#include "chunk_backward.hpp"
#include "gates.hpp"
#include "parallel.hpp"
#include "problem.hpp"
#include "recurrent.hpp"
#include "recurrent_backward.hpp"
#include "reference.hpp"
#include "status.hpp"
#include "tensor.hpp"
#include "workspace.hpp"
