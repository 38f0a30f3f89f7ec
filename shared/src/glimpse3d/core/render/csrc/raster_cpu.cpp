// CPU kernel of the differentiable tile rasterizer: the composite stage of _torch_raster (screen-space
// Gaussians, already binned into depth-sorted per-tile lists, to [H, W, 5] sums of w * (r, g, b, z, 1)).
//
// Same numerics as _blend.BlendChunk (and gsplat's "classic" CUDA kernel), per pixel:
//   p_i = ln o_i - (a dx^2 + c dy^2) / 2 - b dx dy,   e_i = exp(p_i),
//   alpha_i = min(0.999, e_i) if e_i > 1/255 else 0 (skipped),
//   the walk stops before the first Gaussian that would take the transmittance to 1e-4 or below,
//   w_i = alpha_i T_i,   T_i = prod_{j<i} (1 - alpha_j).
// One OpenMP task per tile (longest lists first). Inside a tile the loop runs Gaussian by Gaussian
// over per-pixel state; each pixel still sees its Gaussians in list order, so the arithmetic per pixel
// is that of a per-pixel walk. Per Gaussian: the rows its alpha-threshold ellipse can reach (solved
// once from the conic), then per row the powers of 16 pixels at once (SSE2 on x86-64: the same
// operations in the same order as the scalar expression) and a bit mask of the pixels above the cut,
// minus those already stopped (forward) or not yet reached (backward); only the set bits get the exp
// and the per-pixel update.
// Forward: front to back; records each pixel's final transmittance and how many list entries it used.
// Backward: back to front from the final transmittance (T_i = T_{i+1} / (1 - alpha_i)), the standard
// 3DGS backward as in gsplat's CUDA kernel. A Gaussian's gradient over a tile is summed in double (as
// moments of dL/dp in dx, dy, then the mean and conic gradients from them) and stored in its list
// entry's slot (each entry belongs to one tile, so threads never share a slot); one serial pass then
// adds the slots per Gaussian in list order, so results do not depend on the thread count or scheduling.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <omp.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

// Threads of every kernel here (0: torch's intra-op count at the call). Set apart from torch's so that a
// service can run torch's small per-operation work single-threaded and these kernels on every core.
int g_kernel_threads = 0;

int kernel_threads() { return g_kernel_threads > 0 ? g_kernel_threads : at::get_num_threads(); }

namespace {

constexpr int kF = 10;  // u, v, conic a, b, c, log opacity, r, g, b, depth
constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxAlpha = 0.999;
constexpr double kMinTransmittance = 1e-4;
// Below this power exp(p) <= 1/255 for sure (margin for rounding): skips the exp for most pairs.
const double kPowerCut = std::log(kAlphaThreshold) - 1e-3;

struct Lists {
  const int64_t* tiles;
  const int64_t* starts;
  const int64_t* counts;
  const int64_t* ids;
  int64_t num_tiles;
};

Lists lists_of(const at::Tensor& tiles, const at::Tensor& starts, const at::Tensor& counts, const at::Tensor& ids) {
  return {tiles.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), ids.data_ptr<int64_t>(),
          tiles.numel()};
}

template <typename scalar_t>
void gather(const scalar_t* feats, const int64_t* ids, int64_t count, std::vector<scalar_t>& local) {
  local.resize(static_cast<size_t>(count) * kF);
  for (int64_t i = 0; i < count; ++i) std::copy_n(feats + ids[i] * kF, kF, local.data() + i * kF);
}

constexpr int kMaxTile = 32;  // a tile row's pixels are bits of a uint32_t
constexpr int kLanes = 16;    // pixels per row evaluated at once (the tile width rounded up to 16)

// Which rows [r0, r1) of a tile at (x0, y0), nx by ny pixels, Gaussian g can reach with power above
// the cut (margin 0.05 in power and a row either side; the exact per-pixel test still decides).
// For a positive-definite conic the power over a row at offset dy peaks at ln o - det dy^2 / (2 a),
// so rows with det dy^2 > 2 a (ln o - cut) hold no pixel above the cut; likewise for columns. An empty
// range when the ellipse misses the tile; all rows for a degenerate or non-finite conic.
template <typename scalar_t>
inline void row_range(const scalar_t* g, double x0, double y0, int nx, int ny, int& r0, int& r1) {
  r0 = 0;
  r1 = ny;
  const double a = g[2], b = g[3], c = g[4], k = double(g[5]) - (kPowerCut - 0.05);
  const double det = a * c - b * b;
  const double u = double(g[0]) - x0 - 0.5, v = double(g[1]) - y0 - 0.5;  // centre in pixel-index units
  if (!(std::isfinite(u) && std::isfinite(v))) {  // its power is NaN or -inf everywhere: no pixel passes
    r1 = 0;
    return;
  }
  if (!(a > 0.0 && c > 0.0 && det > 0.0 && std::isfinite(det) && std::isfinite(k))) return;
  if (k < 0.0) {  // even the centre is below the cut
    r1 = 0;
    return;
  }
  const double hx = std::sqrt(2.0 * k * c / det) + 1.0, hy = std::sqrt(2.0 * k * a / det) + 1.0;
  if (!(u + hx >= 0.0 && u - hx <= double(nx - 1) && std::isfinite(hx) && std::isfinite(hy))) {
    if (std::isfinite(hx) && std::isfinite(hy)) r1 = 0;  // misses the tile's columns
    return;
  }
  r0 = static_cast<int>(std::clamp(std::ceil(v - hy), 0.0, double(ny)));
  r1 = static_cast<int>(std::clamp(std::floor(v + hy) + 1.0, 0.0, double(ny)));
}

// Powers p = ln o - (a/2) dx^2 - (c/2) dy^2 - b dx dy of Gaussian g at the kLanes pixel centres xs of
// one row (dy from its centre), in the kernel's dtype with the operations in this order (as the scalar
// per-pixel expression of earlier versions: the same values), and the bit mask of the columns at or
// above the cut.
template <typename scalar_t>
inline uint32_t row_powers(const scalar_t* g, const scalar_t* xs, scalar_t dy, scalar_t* pw) {
  const scalar_t u = g[0], ha = scalar_t(0.5) * g[2], b = g[3], ln_o = g[5];
  const scalar_t hcdy2 = scalar_t(0.5) * g[4] * dy * dy;
  const scalar_t cut = static_cast<scalar_t>(kPowerCut);  // a float rounding of it: the margin is 1e-3
#pragma omp simd
  for (int j = 0; j < kLanes; ++j) {
    const scalar_t dx = xs[j] - u;
    pw[j] = ln_o - ha * dx * dx - hcdy2 - b * dx * dy;
  }
  uint32_t mask = 0;
  for (int j = 0; j < kLanes; ++j) mask |= static_cast<uint32_t>(pw[j] >= cut) << j;
  return mask;
}

#if defined(__SSE2__)
// float32, the common case: the same arithmetic in SSE2 (x86-64's baseline: no FMA, so no contraction
// and the same rounding as the scalar expression), the mask from movemask.
template <>
inline uint32_t row_powers<float>(const float* g, const float* xs, float dy, float* pw) {
  const __m128 u = _mm_set1_ps(g[0]), ha = _mm_set1_ps(0.5f * g[2]), b = _mm_set1_ps(g[3]),
               ln_o = _mm_set1_ps(g[5]), dyv = _mm_set1_ps(dy), hcdy2 = _mm_set1_ps(0.5f * g[4] * dy * dy),
               cut = _mm_set1_ps(static_cast<float>(kPowerCut));
  uint32_t mask = 0;
  for (int j = 0; j < kLanes; j += 4) {
    const __m128 dx = _mm_sub_ps(_mm_load_ps(xs + j), u);
    const __m128 p = _mm_sub_ps(_mm_sub_ps(_mm_sub_ps(ln_o, _mm_mul_ps(_mm_mul_ps(ha, dx), dx)), hcdy2),
                                _mm_mul_ps(_mm_mul_ps(b, dx), dyv));
    _mm_store_ps(pw + j, p);
    mask |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(p, cut))) << j;
  }
  return mask;
}
#endif

inline int pop_lowest(uint32_t& mask) {
  const int j = __builtin_ctz(mask);
  mask &= mask - 1;
  return j;
}

// Per-tile state, reused by a thread from tile to tile; pixel (r, j) is at r * stride + j, stride the
// tile width rounded up to kLanes. Each pass (re)initialises only what it reads.
struct TileState {
  std::vector<double> trans, acc, behind, grad;
  std::vector<int32_t> used;
  void start_forward(size_t pixels) {
    trans.assign(pixels, 1.0);
    acc.assign(pixels * 5, 0.0);
    used.assign(pixels, 0);
  }
  void start_backward(size_t pixels) {  // trans, grad and used are then filled from the forward's outputs
    trans.resize(pixels);
    grad.resize(pixels * 5);
    used.resize(pixels);
    behind.assign(pixels, 0.0);
  }
};

// The tile's pixel centres along x in blocks of kLanes columns (padding columns are masked off).
template <typename scalar_t>
void column_centres(int64_t x0, int nx, scalar_t* xs) {
  for (int j = 0; j < (nx + kLanes - 1) / kLanes * kLanes; ++j) xs[j] = static_cast<scalar_t>(x0 + j) + scalar_t(0.5);
}

template <typename scalar_t>
void forward_kernel(const scalar_t* feats, const Lists& l, int64_t width, int64_t height, int64_t tile, int64_t cols,
                    scalar_t* out, scalar_t* t_final, int32_t* used_out) {
  const int threads = kernel_threads();
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> local;
    uint32_t done[kMaxTile];
    alignas(64) scalar_t xs[kMaxTile], pw[kLanes];
    TileState st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = l.num_tiles - 1; k >= 0; --k) {  // lists ascend in length: longest first
      const int64_t id = l.tiles[k], count = l.counts[k];
      gather(feats, l.ids + l.starts[k], count, local);
      const int64_t x0 = (id % cols) * tile, y0 = (id / cols) * tile;
      const int nx = static_cast<int>(std::min(tile, width - x0)), ny = static_cast<int>(std::min(tile, height - y0));
      const int blocks = (nx + kLanes - 1) / kLanes;
      const uint32_t all = nx == 32 ? ~0u : (1u << nx) - 1u;
      const int stride = blocks * kLanes;
      st.start_forward(static_cast<size_t>(ny) * stride);
      std::fill_n(done, kMaxTile, 0u);
      column_centres(x0, nx, xs);
      int remaining = nx * ny;
      for (int64_t i = 0; i < count && remaining > 0; ++i) {
        const scalar_t* g = local.data() + i * kF;
        int r0, r1;
        row_range(g, double(x0), double(y0), nx, ny, r0, r1);
        for (int r = r0; r < r1; ++r) {
          const scalar_t dy = static_cast<scalar_t>(y0 + r) + scalar_t(0.5) - g[1];
          for (int blk = 0; blk < blocks; ++blk) {
            const int shift = blk * kLanes;
            uint32_t mask = row_powers(g, xs + shift, dy, pw) & (~done[r] & all) >> shift;
            while (mask) {
              const int jj = pop_lowest(mask), j = shift + jj;
              const int p = r * stride + j;
              const scalar_t e = std::exp(pw[jj]);
              if (!(e > scalar_t(kAlphaThreshold))) continue;
              const double alpha = std::min<double>(e, static_cast<scalar_t>(kMaxAlpha));
              const double trans = st.trans[p], next = trans * (1.0 - alpha);
              if (!(next > kMinTransmittance)) {  // gsplat's stop: this Gaussian and all behind it are skipped
                done[r] |= 1u << j;
                --remaining;
                continue;
              }
              const double w = alpha * trans;
              double* acc = st.acc.data() + p * 5;
              acc[0] += w * g[6];
              acc[1] += w * g[7];
              acc[2] += w * g[8];
              acc[3] += w * g[9];
              acc[4] += w;
              st.trans[p] = next;
              st.used[p] = static_cast<int32_t>(i + 1);
            }
          }
        }
      }
      for (int r = 0; r < ny; ++r) {
        for (int j = 0; j < nx; ++j) {
          const int p = r * stride + j;
          const int64_t q = (y0 + r) * width + x0 + j;
          for (int c = 0; c < 5; ++c) out[q * 5 + c] = static_cast<scalar_t>(st.acc[p * 5 + c]);
          t_final[q] = static_cast<scalar_t>(st.trans[p]);
          used_out[q] = st.used[p];
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_kernel(const scalar_t* feats, const Lists& l, int64_t width, int64_t height, int64_t tile, int64_t cols,
                     const scalar_t* grad_out, const scalar_t* t_final, const int32_t* used_in, double* per_entry) {
  const int threads = kernel_threads();
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> local;
    std::vector<std::vector<int>> starting;  // per list entry i: the pixels (r * kMaxTile + j) whose walk ends at i
    alignas(64) scalar_t xs[kMaxTile], pw[kLanes];
    uint32_t live[kMaxTile];
    TileState st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = l.num_tiles - 1; k >= 0; --k) {
      const int64_t id = l.tiles[k], count = l.counts[k];
      gather(feats, l.ids + l.starts[k], count, local);
      const int64_t x0 = (id % cols) * tile, y0 = (id / cols) * tile;
      const int nx = static_cast<int>(std::min(tile, width - x0)), ny = static_cast<int>(std::min(tile, height - y0));
      const int blocks = (nx + kLanes - 1) / kLanes;
      const int stride = blocks * kLanes;
      st.start_backward(static_cast<size_t>(ny) * stride);
      column_centres(x0, nx, xs);
      int32_t longest = 0;
      for (int r = 0; r < ny; ++r) {
        for (int j = 0; j < nx; ++j) {
          const int p = r * stride + j;
          const int64_t q = (y0 + r) * width + x0 + j;
          bool any = false;
          for (int c = 0; c < 5; ++c) {
            st.grad[p * 5 + c] = grad_out[q * 5 + c];
            any = any || grad_out[q * 5 + c] != 0;
          }
          st.trans[p] = t_final[q];
          st.used[p] = any ? used_in[q] : 0;  // a pixel without gradient contributes nothing
          longest = std::max(longest, st.used[p]);
        }
      }
      // A pixel takes part in entries [0, used): it joins the back-to-front walk at entry used - 1.
      if (starting.size() < static_cast<size_t>(longest)) starting.resize(longest);
      for (int32_t i = 0; i < longest; ++i) starting[i].clear();
      for (int r = 0; r < ny; ++r)
        for (int j = 0; j < nx; ++j)
          if (st.used[r * stride + j] > 0) starting[st.used[r * stride + j] - 1].push_back(r * kMaxTile + j);
      std::fill_n(live, kMaxTile, 0u);
      double* slots = per_entry + l.starts[k] * kF;  // this tile's list entries
      for (int64_t i = longest - 1; i >= 0; --i) {  // back to front
        for (const int p : starting[i]) live[p / kMaxTile] |= 1u << (p % kMaxTile);
        const scalar_t* g = local.data() + i * kF;
        // dL/dp summed over the tile's pixels as moments in dx, dy (dL/dp is gp; dx, dy from the centre):
        // the conic and mean gradients are linear in them (see the end). Per row, where dy is fixed, only
        // the dx moments are summed.
        double m_gp = 0, m_dx = 0, m_dy = 0, m_dxdx = 0, m_dxdy = 0, m_dydy = 0;
        double grad_rgbz[4] = {0, 0, 0, 0};
        int r0, r1;
        row_range(g, double(x0), double(y0), nx, ny, r0, r1);
        for (int r = r0; r < r1; ++r) {
          if (!live[r]) continue;
          const scalar_t dy = static_cast<scalar_t>(y0 + r) + scalar_t(0.5) - g[1];
          double row_gp = 0, row_dx = 0, row_dxdx = 0;
          for (int blk = 0; blk < blocks; ++blk) {
            const int shift = blk * kLanes;
            uint32_t mask = (live[r] >> shift) & 0xffffu;
            if (!mask) continue;
            mask &= row_powers(g, xs + shift, dy, pw);
            while (mask) {
              const int jj = pop_lowest(mask), j = shift + jj;
              const int p = r * stride + j;
              const scalar_t e = std::exp(pw[jj]);
              if (!(e > scalar_t(kAlphaThreshold))) continue;
              const double alpha = std::min<double>(e, static_cast<scalar_t>(kMaxAlpha));
              const double inv_keep = 1.0 / (1.0 - alpha);
              const double trans = st.trans[p] * inv_keep;  // transmittance in front of Gaussian i
              st.trans[p] = trans;
              const double* go = st.grad.data() + p * 5;
              const double w = alpha * trans;
              const double grad_w = go[0] * g[6] + go[1] * g[7] + go[2] * g[8] + go[3] * g[9] + go[4];
              // d/d alpha_i: directly through w_i, and through the transmittance of every later Gaussian.
              const double grad_alpha = trans * grad_w - st.behind[p] * inv_keep;
              st.behind[p] += w * grad_w;
              // d alpha / d p = e below the cap, 0 on it
              const double gp = e <= static_cast<scalar_t>(kMaxAlpha) ? grad_alpha * e : 0.0;
              const double dx = xs[j] - g[0], gp_dx = gp * dx;
              row_gp += gp;
              row_dx += gp_dx;
              row_dxdx += gp_dx * dx;
              grad_rgbz[0] += w * go[0];
              grad_rgbz[1] += w * go[1];
              grad_rgbz[2] += w * go[2];
              grad_rgbz[3] += w * go[3];
            }
          }
          const double ddy = dy;
          m_gp += row_gp;
          m_dx += row_dx;
          m_dxdx += row_dxdx;
          m_dy += row_gp * ddy;
          m_dxdy += row_dx * ddy;
          m_dydy += row_gp * ddy * ddy;
        }
        // p = ln o - (a dx^2 + c dy^2) / 2 - b dx dy with dx = x - u, dy = y - v.
        const double a = g[2], b = g[3], c = g[4];
        const double sum[kF] = {a * m_dx + b * m_dy, c * m_dy + b * m_dx, -0.5 * m_dxdx, -m_dxdy, -0.5 * m_dydy, m_gp,
                                grad_rgbz[0], grad_rgbz[1], grad_rgbz[2], grad_rgbz[3]};
        std::copy_n(sum, kF, slots + i * kF);
      }
    }
  }
}

void check_inputs(const at::Tensor& feats, const at::Tensor& tiles, const at::Tensor& starts, const at::Tensor& counts,
                  const at::Tensor& ids, int64_t width, int64_t height, int64_t tile) {
  TORCH_CHECK(feats.device().is_cpu() && feats.dim() == 2 && feats.size(1) == kF && feats.is_contiguous(),
              "feats must be a contiguous CPU tensor [N, 10]");
  TORCH_CHECK(feats.scalar_type() == at::kFloat || feats.scalar_type() == at::kDouble, "feats must be float32 or float64");
  for (const at::Tensor* t : {&tiles, &starts, &counts, &ids})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous(),
                "tile lists must be contiguous int64 CPU vectors");
  TORCH_CHECK(starts.numel() == tiles.numel() && counts.numel() == tiles.numel(), "tiles, starts, counts differ in length");
  TORCH_CHECK(width > 0 && height > 0 && tile > 0, "width, height and tile size must be positive");
  TORCH_CHECK(tile <= kMaxTile, "tile size must be at most ", kMaxTile);
}

std::vector<at::Tensor> forward(const at::Tensor& feats, const at::Tensor& tiles, const at::Tensor& starts,
                                const at::Tensor& counts, const at::Tensor& ids, int64_t width, int64_t height,
                                int64_t tile) {
  check_inputs(feats, tiles, starts, counts, ids, width, height, tile);
  const int64_t cols = (width + tile - 1) / tile;
  auto out = at::zeros({height, width, 5}, feats.options());
  auto t_final = at::ones({height, width}, feats.options());
  auto used = at::zeros({height, width}, feats.options().dtype(at::kInt));
  const Lists l = lists_of(tiles, starts, counts, ids);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "raster_cpu_forward", [&] {
    forward_kernel<scalar_t>(feats.data_ptr<scalar_t>(), l, width, height, tile, cols, out.data_ptr<scalar_t>(),
                             t_final.data_ptr<scalar_t>(), used.data_ptr<int32_t>());
  });
  return {out, t_final, used};
}

at::Tensor backward(const at::Tensor& feats, const at::Tensor& tiles, const at::Tensor& starts,
                    const at::Tensor& counts, const at::Tensor& ids, int64_t width, int64_t height, int64_t tile,
                    const at::Tensor& grad_out, const at::Tensor& t_final, const at::Tensor& used) {
  check_inputs(feats, tiles, starts, counts, ids, width, height, tile);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({height, width, 5}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == feats.scalar_type(),
              "grad_out must be contiguous [H, W, 5] of the dtype of feats");
  const int64_t cols = (width + tile - 1) / tile;
  const int64_t n = feats.size(0), m = ids.numel();
  std::vector<double> per_entry(static_cast<size_t>(m) * kF, 0.0);
  const Lists l = lists_of(tiles, starts, counts, ids);
  std::vector<double> total(static_cast<size_t>(n) * kF, 0.0);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "raster_cpu_backward", [&] {
    backward_kernel<scalar_t>(feats.data_ptr<scalar_t>(), l, width, height, tile, cols, grad_out.data_ptr<scalar_t>(),
                              t_final.data_ptr<scalar_t>(), used.data_ptr<int32_t>(), per_entry.data());
  });
  for (int64_t k = 0; k < l.num_tiles; ++k) {  // tiles in a fixed order: a deterministic sum
    for (int64_t j = l.starts[k]; j < l.starts[k] + l.counts[k]; ++j) {
      double* dst = total.data() + l.ids[j] * kF;
      const double* src = per_entry.data() + j * kF;
      for (int c = 0; c < kF; ++c) dst[c] += src[c];
    }
  }
  auto grad = at::empty({n, kF}, feats.options());
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "raster_cpu_grad_cast", [&] {
    std::transform(total.begin(), total.end(), grad.data_ptr<scalar_t>(), [](double v) { return static_cast<scalar_t>(v); });
  });
  return grad;
}

}  // namespace

void register_screen_space(pybind11::module_& m);  // screen_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU composite stage of the Glimpse3D Gaussian rasterizer (forward and backward)";
  m.def("forward", &forward, "(feats, tiles, starts, counts, ids, width, height, tile) -> (sums [H,W,5], T [H,W], used [H,W])");
  m.def("backward", &backward, "(..., grad_sums, T, used) -> grad feats [N, 10]");
  register_screen_space(m);
  m.def("set_threads", [](int64_t n) {
    TORCH_CHECK(n >= 0 && n <= 1024, "kernel threads must be in 0..1024, got ", n);
    g_kernel_threads = static_cast<int>(n);
  }, "threads of the kernels, 0 = torch's intra-op count at each call");
  m.def("threads", &kernel_threads, "threads the kernels use now");
}
