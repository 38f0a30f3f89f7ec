// CPU kernel of the differentiable tile rasterizer: the composite stage of _torch_raster (screen-space
// Gaussians, already binned into depth-sorted per-tile lists, to [H, W, 5] sums of w * (r, g, b, z, 1)).
//
// Same numerics as _blend.BlendChunk (and gsplat's "classic" CUDA kernel), per pixel:
//   p_i = ln o_i - (a dx^2 + c dy^2) / 2 - b dx dy,   e_i = exp(p_i),
//   alpha_i = min(0.999, e_i) if e_i > 1/255 else 0 (skipped),
//   the walk stops before the first Gaussian that would take the transmittance to 1e-4 or below,
//   w_i = alpha_i T_i,   T_i = prod_{j<i} (1 - alpha_j).
// One OpenMP task per tile (longest lists first). Inside a tile the loop runs Gaussian by Gaussian
// over per-pixel state, and for each tile row only over the columns where the Gaussian can pass the
// alpha threshold (solved from its conic), so the work follows footprints, not bounding boxes; each
// pixel still sees its Gaussians in list order, so the arithmetic per pixel is that of a per-pixel walk.
// Forward: front to back; records each pixel's final transmittance and how many list entries it used.
// Backward: back to front from the final transmittance (T_i = T_{i+1} / (1 - alpha_i)), the standard
// 3DGS backward as in gsplat's CUDA kernel. A Gaussian's gradient over a tile is summed in double and
// stored in its list entry's slot (each entry belongs to one tile, so threads never share a slot); one
// serial pass then adds the slots per Gaussian in list order, so results do not depend on the thread
// count or scheduling.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

// Where along a tile row Gaussian g can pass the alpha threshold: columns [lo, hi) of n, for pixel
// centres x0 + j + 0.5 at vertical offset dy. Solves -a dx^2 / 2 - b dy dx + ln o - c dy^2 / 2 >= cut
// with a margin (the exact per-pixel test still decides), so work follows the Gaussian's footprint
// rather than its bounding box. Degenerate or non-finite input gives the whole row.
template <typename scalar_t>
inline void row_span(const scalar_t* g, double dy, double x0, int n, int& lo, int& hi) {
  const double a = g[2], bdy = double(g[3]) * dy;
  const double k = double(g[5]) - 0.5 * double(g[4]) * dy * dy - (kPowerCut - 0.05);
  lo = 0;
  hi = n;
  if (!(a > 0.0)) return;
  const double disc = bdy * bdy + 2.0 * a * k;
  if (disc < 0.0) {
    hi = 0;
    return;
  }
  const double root = std::sqrt(disc);
  const double first = double(g[0]) + (-bdy - root) / a - x0 - 0.5, last = double(g[0]) + (-bdy + root) / a - x0 - 0.5;
  if (!(first <= last)) return;  // NaN
  lo = static_cast<int>(std::clamp(std::floor(first) - 1.0, 0.0, double(n)));
  hi = static_cast<int>(std::clamp(std::ceil(last) + 2.0, 0.0, double(n)));
}

template <typename scalar_t>
inline scalar_t power_at(const scalar_t* g, scalar_t dx, scalar_t dy) {
  return g[5] - scalar_t(0.5) * g[2] * dx * dx - scalar_t(0.5) * g[4] * dy * dy - g[3] * dx * dy;
}

// Per-tile state, reused by a thread from tile to tile.
struct TileState {
  std::vector<double> trans, acc, behind, grad;
  std::vector<int32_t> used;
  void resize(size_t pixels) {
    trans.assign(pixels, 1.0);
    acc.assign(pixels * 5, 0.0);
    behind.assign(pixels, 0.0);
    grad.assign(pixels * 5, 0.0);
    used.assign(pixels, 0);
  }
};

template <typename scalar_t>
void forward_kernel(const scalar_t* feats, const Lists& l, int64_t width, int64_t height, int64_t tile, int64_t cols,
                    scalar_t* out, scalar_t* t_final, int32_t* used_out) {
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> local;
    std::vector<uint8_t> done;
    TileState st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = l.num_tiles - 1; k >= 0; --k) {  // lists ascend in length: longest first
      const int64_t id = l.tiles[k], count = l.counts[k];
      gather(feats, l.ids + l.starts[k], count, local);
      const int64_t x0 = (id % cols) * tile, y0 = (id / cols) * tile;
      const int nx = static_cast<int>(std::min(tile, width - x0)), ny = static_cast<int>(std::min(tile, height - y0));
      const int np = nx * ny;
      st.resize(np);
      done.assign(np, 0);
      int remaining = np;
      for (int64_t i = 0; i < count && remaining > 0; ++i) {
        const scalar_t* g = local.data() + i * kF;
        for (int r = 0; r < ny; ++r) {
          const scalar_t dy = static_cast<scalar_t>(y0 + r) + scalar_t(0.5) - g[1];
          int lo, hi;
          row_span(g, dy, double(x0), nx, lo, hi);
          for (int j = lo; j < hi; ++j) {
            const int p = r * nx + j;
            if (done[p]) continue;
            const scalar_t dx = static_cast<scalar_t>(x0 + j) + scalar_t(0.5) - g[0];
            const scalar_t power = power_at(g, dx, dy);
            if (power < kPowerCut) continue;
            const scalar_t e = std::exp(power);
            if (!(e > scalar_t(kAlphaThreshold))) continue;
            const double alpha = std::min<double>(e, static_cast<scalar_t>(kMaxAlpha));
            const double trans = st.trans[p], next = trans * (1.0 - alpha);
            if (!(next > kMinTransmittance)) {  // gsplat's stop: this Gaussian and all behind it are skipped
              done[p] = 1;
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
      for (int r = 0; r < ny; ++r) {
        for (int j = 0; j < nx; ++j) {
          const int p = r * nx + j;
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
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> local;
    TileState st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = l.num_tiles - 1; k >= 0; --k) {
      const int64_t id = l.tiles[k], count = l.counts[k];
      gather(feats, l.ids + l.starts[k], count, local);
      const int64_t x0 = (id % cols) * tile, y0 = (id / cols) * tile;
      const int nx = static_cast<int>(std::min(tile, width - x0)), ny = static_cast<int>(std::min(tile, height - y0));
      const int np = nx * ny;
      st.resize(np);
      int32_t longest = 0;
      for (int r = 0; r < ny; ++r) {
        for (int j = 0; j < nx; ++j) {
          const int p = r * nx + j;
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
      double* slots = per_entry + l.starts[k] * kF;  // this tile's list entries
      for (int64_t i = longest - 1; i >= 0; --i) {  // back to front
        const scalar_t* g = local.data() + i * kF;
        double sum[kF] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int r = 0; r < ny; ++r) {
          const scalar_t dy = static_cast<scalar_t>(y0 + r) + scalar_t(0.5) - g[1];
          int lo, hi;
          row_span(g, dy, double(x0), nx, lo, hi);
          for (int j = lo; j < hi; ++j) {
            const int p = r * nx + j;
            if (i >= st.used[p]) continue;
            const scalar_t dx = static_cast<scalar_t>(x0 + j) + scalar_t(0.5) - g[0];
            const scalar_t power = power_at(g, dx, dy);
            if (power < kPowerCut) continue;
            const scalar_t e = std::exp(power);
            if (!(e > scalar_t(kAlphaThreshold))) continue;
            const double alpha = std::min<double>(e, static_cast<scalar_t>(kMaxAlpha));
            const double keep = 1.0 - alpha;
            const double trans = st.trans[p] / keep;  // transmittance in front of Gaussian i
            st.trans[p] = trans;
            const double* go = st.grad.data() + p * 5;
            const double w = alpha * trans;
            const double grad_w = go[0] * g[6] + go[1] * g[7] + go[2] * g[8] + go[3] * g[9] + go[4];
            // d/d alpha_i: directly through w_i, and through the transmittance of every later Gaussian.
            const double grad_alpha = trans * grad_w - st.behind[p] / keep;
            st.behind[p] += w * grad_w;
            if (e <= static_cast<scalar_t>(kMaxAlpha)) {  // d alpha / d p = e below the cap, 0 on it
              const double gp = grad_alpha * e, ddx = dx, ddy = dy;
              sum[0] += gp * (g[2] * ddx + g[3] * ddy);
              sum[1] += gp * (g[4] * ddy + g[3] * ddx);
              sum[2] -= 0.5 * gp * ddx * ddx;
              sum[3] -= gp * ddx * ddy;
              sum[4] -= 0.5 * gp * ddy * ddy;
              sum[5] += gp;
            }
            sum[6] += w * go[0];
            sum[7] += w * go[1];
            sum[8] += w * go[2];
            sum[9] += w * go[3];
          }
        }
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
}
