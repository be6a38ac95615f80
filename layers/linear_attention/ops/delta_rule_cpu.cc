// The gated delta rule's recurrent form and its backward as XLA:CPU FFI kernels (see delta_rule_cpu.py).
//
// Per (batch, head), with a_t = exp(g_t) per key row (one per step, or one per key channel):
//   S' = diag(a_t) S_{t-1}   (S_{t-1} = 0 at a document start)
//   r = v_t − S'ᵀ k_t,  δ = β_t r,  S_t = S' + k_t δᵀ,  o_t = S_tᵀ q_t
// The K x V state stays in L1 / L2; a step is two sweeps over it. The forward saves the state entering every
// segment of `segment` steps; the backward recomputes a segment's states from it, then walks the segment
// backwards (two sweeps per step over the state and its gradient). Batch x heads run in parallel.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Dims {
  int64_t b, t, h, k, v, gk, segment;

  int64_t Segments() const { return (t + segment - 1) / segment; }
  // Offsets of step s of (batch, head) in [B, T, H, D] arrays.
  int64_t Row(int64_t bi, int64_t s, int64_t hi, int64_t d) const { return ((bi * t + s) * h + hi) * d; }
};

Dims GetDims(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& v, ffi::Buffer<ffi::F32>& g, int64_t segment) {
  const auto dq = q.dimensions(), dv = v.dimensions(), dg = g.dimensions();
  return Dims{dq[0], dq[1], dq[2], dq[3], dv[3], dg[3], segment};
}

// Inputs of one step of one (batch, head).
struct Step {
  const float *q, *k, *v, *g;
  float beta;
  bool start;
};

struct Inputs {
  const float *q, *k, *v, *g, *beta;
  const int32_t* starts;
  Dims d;

  Step At(int64_t bi, int64_t s, int64_t hi) const {
    return Step{q + d.Row(bi, s, hi, d.k), k + d.Row(bi, s, hi, d.k), v + d.Row(bi, s, hi, d.v),
                g + d.Row(bi, s, hi, d.gk), beta[(bi * d.t + s) * d.h + hi], starts[bi * d.t + s] != 0};
  }
};

// a[i] = exp(g_t) of key row i (one exp for a per-step gate).
void Gates(const Dims& d, const Step& x, float* a) {
  if (d.gk == 1) {
    std::fill(a, a + d.k, std::exp(x.g[0]));
  } else {
    for (int64_t i = 0; i < d.k; ++i) a[i] = std::exp(x.g[i]);
  }
}

// s = S_t from prev = S_{t-1} (the same buffer, or another); writes r = v − S'ᵀk (V floats) and, if o,
// o_t = S_tᵀq. a: scratch [K]. VV: the value width when fixed at compile time (0: d.v): rows stay in registers.
template <int VV>
void ForwardStep(const Dims& d, const Step& x, const float* prev, float* s, float* __restrict r,
                 float* __restrict o, float* a) {
  const int64_t kk = d.k, vv = VV ? VV : d.v;
  Gates(d, x, a);
  for (int64_t j = 0; j < vv; ++j) r[j] = x.v[j];
  for (int64_t i = 0; i < kk; ++i) {
    const float ai = x.start ? 0.0f : a[i], ki = x.k[i];
    const float* in = prev + i * vv;
    float* row = s + i * vv;
#pragma omp simd
    for (int64_t j = 0; j < vv; ++j) {
      row[j] = ai * in[j];
      r[j] -= ki * row[j];
    }
  }
  if (o) std::memset(o, 0, sizeof(float) * vv);
  for (int64_t i = 0; i < kk; ++i) {
    const float ki = x.k[i], qi = x.q[i];
    float* __restrict row = s + i * vv;
#pragma omp simd
    for (int64_t j = 0; j < vv; ++j) {
      row[j] += ki * x.beta * r[j];
      if (o) o[j] += qi * row[j];
    }
  }
}

// Calls run(std::integral_constant<int, VV>) with VV = the value width v when it is 32, 64 or 128 (a width
// fixed at compile time), else 0 (read at run time).
template <typename Run>
void WithValueWidth(int64_t v, Run run) {
  switch (v) {
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 128: return run(std::integral_constant<int, 128>{});
    default: return run(std::integral_constant<int, 0>{});
  }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> beta,
                       ffi::Buffer<ffi::F32> s0, ffi::Buffer<ffi::S32> starts, ffi::ResultBuffer<ffi::F32> o,
                       ffi::ResultBuffer<ffi::F32> final_state, ffi::ResultBuffer<ffi::F32> checkpoints,
                       int64_t segment) {
  const Dims d = GetDims(q, v, g, segment);
  const Inputs in{q.typed_data(), k.typed_data(), v.typed_data(), g.typed_data(), beta.typed_data(),
                  starts.typed_data(), d};
  const int64_t kv = d.k * d.v;
  WithValueWidth(d.v, [&](auto width) {
    constexpr int VV = decltype(width)::value;
    ablax::ParallelFor(pool, d.b * d.h, [&](int64_t bh) {
      const int64_t bi = bh / d.h, hi = bh % d.h;
      float* ckpt = checkpoints->typed_data() + bh * d.Segments() * kv;
      float* s = final_state->typed_data() + bh * kv;  // updated in place: one state in L1
      std::memcpy(s, s0.typed_data() + bh * kv, sizeof(float) * kv);
      std::vector<float> r(d.v), a(d.k);
      for (int64_t t = 0; t < d.t; ++t) {
        if (t % d.segment == 0) std::memcpy(ckpt + (t / d.segment) * kv, s, sizeof(float) * kv);
        ForwardStep<VV>(d, in.At(bi, t, hi), s, s, r.data(), o->typed_data() + d.Row(bi, t, hi, d.v), a.data());
      }
    });
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> beta,
                        ffi::Buffer<ffi::S32> starts, ffi::Buffer<ffi::F32> checkpoints,
                        ffi::Buffer<ffi::F32> d_o, ffi::Buffer<ffi::F32> d_final, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                        ffi::ResultBuffer<ffi::F32> dg, ffi::ResultBuffer<ffi::F32> dbeta,
                        ffi::ResultBuffer<ffi::F32> ds0, int64_t segment) {
  const Dims d = GetDims(q, v, g, segment);
  const Inputs in{q.typed_data(), k.typed_data(), v.typed_data(), g.typed_data(), beta.typed_data(),
                  starts.typed_data(), d};
  WithValueWidth(d.v, [&](auto width) {
    constexpr int VV = decltype(width)::value;
    const int64_t kk = d.k, vv = VV ? VV : d.v, kv = kk * vv;
    ablax::ParallelFor(pool, d.b * d.h, [&](int64_t bh) {
      const int64_t bi = bh / d.h, hi = bh % d.h;
      // states[j]: S after step t0 + j of the segment; states[-1] (base) the state entering it.
      std::vector<float> states((d.segment + 1) * kv), res(d.segment * vv), ddelta(vv), du(vv), gk(kk), a(kk);
      float* ds = ds0->typed_data() + bh * kv;  // the state's gradient, carried backwards in place
      std::memcpy(ds, d_final.typed_data() + bh * kv, sizeof(float) * kv);
      const float* ckpt = checkpoints.typed_data() + bh * d.Segments() * kv;
      for (int64_t n = d.Segments() - 1; n >= 0; --n) {
        const int64_t t0 = n * d.segment, len = std::min(d.segment, d.t - t0);
        std::memcpy(states.data(), ckpt + n * kv, sizeof(float) * kv);
        for (int64_t j = 0; j < len; ++j) {
          ForwardStep<VV>(d, in.At(bi, t0 + j, hi), states.data() + j * kv, states.data() + (j + 1) * kv,
                          res.data() + j * vv, nullptr, a.data());
        }
        for (int64_t j = len - 1; j >= 0; --j) {
          const int64_t t = t0 + j;
          const Step x = in.At(bi, t, hi);
          const float* s_new = states.data() + (j + 1) * kv;
          const float* s_prev = states.data() + j * kv;
          const float* r = res.data() + j * vv;
          const float* go = d_o.typed_data() + d.Row(bi, t, hi, vv);
          float* gq = dq->typed_data() + d.Row(bi, t, hi, kk);
          float* gkk = dk->typed_data() + d.Row(bi, t, hi, kk);
          float* gv = dv->typed_data() + d.Row(bi, t, hi, vv);
          // Sweep 1: dS += q doᵀ; dq = S_t do; dk = dS δ; dδ = dSᵀ k.
          std::fill(ddelta.begin(), ddelta.end(), 0.0f);
          for (int64_t i = 0; i < kk; ++i) {
            const float qi = x.q[i], ki = x.k[i];
            float* __restrict dsr = ds + i * vv;
            const float* __restrict sr = s_new + i * vv;
            float acc_q = 0.0f, acc_k = 0.0f;
  #pragma omp simd reduction(+ : acc_q, acc_k)
            for (int64_t j2 = 0; j2 < vv; ++j2) {
              dsr[j2] += qi * go[j2];
              acc_q += sr[j2] * go[j2];
              acc_k += dsr[j2] * x.beta * r[j2];
              ddelta[j2] += ki * dsr[j2];
            }
            gq[i] = acc_q;
            gkk[i] = acc_k;
          }
          float acc_b = 0.0f;
  #pragma omp simd reduction(+ : acc_b)
          for (int64_t j2 = 0; j2 < vv; ++j2) {
            acc_b += ddelta[j2] * r[j2];
            gv[j2] = x.beta * ddelta[j2];
            du[j2] = -x.beta * ddelta[j2];
          }
          dbeta->typed_data()[(bi * d.t + t) * d.h + hi] = acc_b;
          // Sweep 2: S' = diag(a) S_prev (0 at a start); dS' = dS + k duᵀ; dk += S' du; dg = Σ S' ⊙ dS';
          // dS_prev = diag(a) dS' (0 at a start: the state before was not used).
          Gates(d, x, a.data());
          for (int64_t i = 0; i < kk; ++i) {
            const float ki = x.k[i], keep = x.start ? 0.0f : a[i];
            float* __restrict dsr = ds + i * vv;
            const float* __restrict pr = s_prev + i * vv;
            float acc_k = 0.0f, acc_g = 0.0f;
  #pragma omp simd reduction(+ : acc_k, acc_g)
            for (int64_t j2 = 0; j2 < vv; ++j2) {
              const float sp = keep * pr[j2], dsp = dsr[j2] + ki * du[j2];
              acc_k += sp * du[j2];
              acc_g += sp * dsp;
              dsr[j2] = keep * dsp;
            }
            gkk[i] += acc_k;
            gk[i] = acc_g;
          }
          float* gg = dg->typed_data() + d.Row(bi, t, hi, d.gk);
          if (d.gk == 1) {
            float total = 0.0f;
            for (int64_t i = 0; i < kk; ++i) total += gk[i];
            gg[0] = total;
          } else {
            std::memcpy(gg, gk.data(), sizeof(float) * kk);
          }
        }
      }
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AblaxDeltaRuleForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [B, T, H, K] (scaled)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k [B, T, H, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v [B, T, H, V]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [B, T, H, 1 | K] (log decay)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // beta [B, T, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // s0 [B, H, K, V]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // starts [B, T]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // o [B, T, H, V]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // final state [B, H, K, V]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // checkpoints [B, H, N, K, V]
                                  .Attr<int64_t>("segment"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AblaxDeltaRuleBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // beta
                                  .Arg<ffi::Buffer<ffi::S32>>()  // starts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // checkpoints
                                  .Arg<ffi::Buffer<ffi::F32>>()  // do
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d final state
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dv
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dg
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbeta
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ds0
                                  .Attr<int64_t>("segment"));
