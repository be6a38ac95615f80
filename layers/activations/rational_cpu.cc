// The rational activation's literal forward and fused backward as XLA:CPU FFI kernels (see rational_cpu.py).
//
// F = P(x) / Q, Q = q0 + h(S(v)), P = Σ_i a_i x^i, S = Σ_j β_j v^j, v = |x| (abs_v) or x, h = |.| (abs_h) or
// the identity. One pass over x for the forward, one over (x, g, F) for the backward, which writes dL/dx and
// sums every coefficient's gradient term in the same pass: fp32 lanes over blocks of at most 256 elements,
// the blocks' sums in fp64. Elements are split into a fixed number of chunks (not one per thread) whose
// partial sums are added in chunk order, so the result does not depend on how the chunks were scheduled.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 8;
constexpr int kBlock = 256;        // elements per fp32 partial sum of a coefficient gradient
constexpr int64_t kChunk = 65536;  // elements per unit of parallel work
constexpr int64_t kMaxChunks = 64;

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(float))));

inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf Splat(float s) { return vf{} + s; }
inline vf Abs(vf x) { return (vf)((vi)x & 0x7fffffff); }

struct Rational {
  const float* a;     // [m1, G]
  const float* beta;  // [n1, G]
  int64_t m1, n1, groups, inner;
  bool abs_v, abs_h;
  float q0;
  int64_t j0;  // first β whose gradient is wanted (0 or 1)

  int64_t terms() const { return m1 + n1 - j0; }
};

int64_t NumChunks(int64_t size) { return std::clamp<int64_t>((size + kChunk - 1) / kChunk, 1, kMaxChunks); }

// Calls body(begin, end, group) over [lo, hi) in runs of one coefficient group.
template <typename Body>
void ForEachRun(const Rational& r, int64_t lo, int64_t hi, Body body) {
  for (int64_t i = lo; i < hi;) {
    const int64_t run = i / r.inner, end = std::min(hi, (run + 1) * r.inner);
    body(i, end, run % r.groups);
    i = end;
  }
}

struct Coeffs {
  float a[32], beta[32];
};

Coeffs Gather(const Rational& r, int64_t group) {
  Coeffs c;
  for (int64_t i = 0; i < r.m1; ++i) c.a[i] = r.a[i * r.groups + group];
  for (int64_t j = 0; j < r.n1; ++j) c.beta[j] = r.beta[j * r.groups + group];
  return c;
}

inline vf Forward(const Rational& r, const Coeffs& c, vf x) {
  const vf v = r.abs_v ? Abs(x) : x;
  vf p = Splat(c.a[r.m1 - 1]);
  for (int64_t i = r.m1 - 2; i >= 0; --i) p = p * x + c.a[i];
  vf s = Splat(c.beta[r.n1 - 1]);
  for (int64_t j = r.n1 - 2; j >= 0; --j) s = s * v + c.beta[j];
  return p / (r.q0 + (r.abs_h ? Abs(s) : s));
}

// dL/dx for one vector, adding its coefficient-gradient terms to acc[terms].
inline vf Backward(const Rational& r, const Coeffs& c, vf x, vf g, vf f, vf* acc) {
  const vf one = Splat(1.0f), zero = Splat(0.0f);
  const vf v = r.abs_v ? Abs(x) : x;
  vf p = Splat(c.a[r.m1 - 1]), dp = zero;
  for (int64_t i = r.m1 - 2; i >= 0; --i) {
    dp = dp * x + p;
    p = p * x + c.a[i];
  }
  vf s = Splat(c.beta[r.n1 - 1]), ds = zero;
  for (int64_t j = r.n1 - 2; j >= 0; --j) {
    ds = ds * v + s;
    s = s * v + c.beta[j];
  }
  const vf hs = r.abs_h ? (s >= 0 ? one : -one) : one;
  const vf dv = r.abs_v ? (x > 0 ? one : (x < 0 ? -one : zero)) : one;
  const vf wa = g / (r.q0 + hs * s);
  vf t = wa;
  for (int64_t i = 0; i < r.m1; ++i, t *= x) acc[i] += t;
  t = -wa * f * hs;
  if (r.j0) t *= v;
  for (int64_t j = r.j0; j < r.n1; ++j, t *= v) acc[r.m1 + j - r.j0] += t;
  return wa * (dp - f * (hs * ds * dv));
}

// Applies op(x...) to [begin, end) a vector at a time, the tail through a zero-padded vector.
template <typename Op>
void Vectors(int64_t begin, int64_t end, Op op) {
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) op(i, kLanes);
  if (i < end) op(i, end - i);
}

inline vf LoadN(const float* p, int64_t n) {
  if (n == kLanes) return Load(p);
  float buf[kLanes] = {};
  std::memcpy(buf, p, n * sizeof(float));
  return Load(buf);
}

inline void StoreN(float* p, vf v, int64_t n) {
  if (n == kLanes) return Store(p, v);
  float buf[kLanes];
  Store(buf, v);
  std::memcpy(p, buf, n * sizeof(float));
}

Rational MakeRational(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> beta, int64_t inner, int32_t abs_v,
                      int32_t abs_h, float q0, int32_t j0) {
  const auto da = a.dimensions(), db = beta.dimensions();
  return Rational{a.typed_data(), beta.typed_data(), da[0], db[0], da[1], std::max<int64_t>(inner, 1),
                  abs_v != 0, abs_h != 0, q0, j0};
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> beta) {
  const auto da = a.dimensions(), db = beta.dimensions();
  if (da.size() != 2 || db.size() != 2 || da[1] != db[1] || da[0] < 1 || db[0] < 1 || da[0] > 32 || db[0] > 32)
    return ffi::Error::InvalidArgument("rational kernel: coefficients must be [m+1, G] and [n+1, G], degrees < 32");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a,
                       ffi::Buffer<ffi::F32> beta, ffi::ResultBuffer<ffi::F32> f, ffi::ResultBuffer<ffi::S32> far,
                       int64_t inner, int32_t abs_v, int32_t abs_h, float q0, int32_t j0, float limit) {
  if (auto e = CheckShapes(a, beta); e.failure()) return e;
  const Rational r = MakeRational(a, beta, inner, abs_v, abs_h, q0, j0);
  const int64_t size = x.element_count(), chunks = NumChunks(size);
  const float* xp = x.typed_data();
  float* fp = f->typed_data();
  std::vector<char> chunk_far(chunks, 0);
  ablax::ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t lo = size * c / chunks, hi = size * (c + 1) / chunks;
    vi far_lanes = {};
    ForEachRun(r, lo, hi, [&](int64_t begin, int64_t end, int64_t group) {
      const Coeffs k = Gather(r, group);
      Vectors(begin, end, [&](int64_t i, int64_t n) {
        const vf xv = LoadN(xp + i, n);
        far_lanes |= ~(Abs(xv) <= limit);  // NaN included
        StoreN(fp + i, Forward(r, k, xv), n);
      });
    });
    for (int l = 0; l < kLanes; ++l) chunk_far[c] |= far_lanes[l] != 0;
  });
  far->typed_data()[0] = std::any_of(chunk_far.begin(), chunk_far.end(), [](char v) { return v != 0; });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<ffi::F32> f, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> beta,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> sums, int64_t inner,
                        int32_t abs_v, int32_t abs_h, float q0, int32_t j0) {
  if (auto e = CheckShapes(a, beta); e.failure()) return e;
  const Rational r = MakeRational(a, beta, inner, abs_v, abs_h, q0, j0);
  const int64_t size = x.element_count(), chunks = NumChunks(size), nt = r.terms();
  const float *xp = x.typed_data(), *gp = g.typed_data(), *fp = f.typed_data();
  float* dxp = dx->typed_data();
  std::vector<double> partial(chunks * nt * r.groups, 0.0);  // [chunk, term, group]
  ablax::ParallelFor(pool, chunks, [&](int64_t c) {
    double* out = partial.data() + c * nt * r.groups;
    ForEachRun(r, size * c / chunks, size * (c + 1) / chunks, [&](int64_t begin, int64_t end, int64_t group) {
      const Coeffs k = Gather(r, group);
      for (int64_t lo = begin; lo < end; lo += kBlock) {
        vf acc[64];
        std::fill(acc, acc + nt, vf{});
        Vectors(lo, std::min(end, lo + kBlock), [&](int64_t i, int64_t n) {
          StoreN(dxp + i, Backward(r, k, LoadN(xp + i, n), LoadN(gp + i, n), LoadN(fp + i, n), acc), n);
        });
        for (int64_t t = 0; t < nt; ++t) {
          double s = 0.0;
          for (int l = 0; l < kLanes; ++l) s += acc[t][l];
          out[t * r.groups + group] += s;
        }
      }
    });
  });
  float* sp = sums->typed_data();
  for (int64_t t = 0; t < nt * r.groups; ++t) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * nt * r.groups + t];
    sp[t] = static_cast<float>(s);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AblaxRationalForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("inner")
                                  .Attr<int32_t>("abs_v")
                                  .Attr<int32_t>("abs_h")
                                  .Attr<float>("q0")
                                  .Attr<int32_t>("j0")
                                  .Attr<float>("limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AblaxRationalBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("inner")
                                  .Attr<int32_t>("abs_v")
                                  .Attr<int32_t>("abs_h")
                                  .Attr<float>("q0")
                                  .Attr<int32_t>("j0"));
