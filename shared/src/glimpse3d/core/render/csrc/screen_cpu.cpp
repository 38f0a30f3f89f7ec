// CPU kernel of the rasterizer's screen-space stage: _torch_raster.screen_space (projection with
// _project.project, culling with visible_radii, SH colour with _sh.eval_sh) fused into one loop over
// Gaussians, with its backward pass written out by hand.
//
// Forward, per Gaussian (the same formulas, constants, clamps and culling rules as the torch code):
//   camera transform t = Rv p + tv, culled unless t_z > 0.01 (the near plane);
//   Sigma = R S S^T R^T from the normalised quaternion and exp(log_scales);
//   EWA: cov2d = J Rv Sigma Rv^T J^T with gsplat's frustum-clamped Jacobian, + 0.3 px^2 on the
//   diagonal, det clamped at 1e-10, conic = (c11, -c01, c00) / det;
//   log opacity = logsigmoid(logit); radii = ceil(min(sqrt(2 ln(255 o)), 3.33) sqrt(c_ii)) for
//   o >= 1/255, kept only if both are > 0 and the box meets the image;
//   colour = max(SH(normalize(p - campos)) + 0.5, 0), degrees 0..3 (Sloan's constants, as 3DGS).
// Output rows are the kept Gaussians in index order: feats [V, 10] = (u, v, a, b, c, log o, r, g, b, z),
// radii [V, 2] and their indices [V]. Arithmetic is in the inputs' dtype, as in torch.
// Backward: recomputes each kept Gaussian's forward and applies the chain rule (the masks of every
// clamp as torch's autograd has them: clamp passes the gradient where min <= x <= max); each Gaussian
// writes only its own gradient rows, so results do not depend on the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

int kernel_threads();  // raster_cpu.cpp

namespace glimpse3d_screen {

constexpr int kF = 10;
constexpr double kNearPlane = 0.01;
constexpr double kEps2d = 0.3;
constexpr double kMinDet = 1e-10;
constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxExtent = 3.33;
constexpr double kFrustumGuard = 0.3;
constexpr double kNormEps = 1e-12;  // torch.nn.functional.normalize's eps

constexpr double kC0 = 0.28209479177387814;
constexpr double kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                           0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                           -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

template <typename T>
struct Camera {
  T rv[9], tv[3], fx, fy, cx, cy, campos[3];
  T lxp, lxn, lyp, lyn;  // frustum clamp of x/z and y/z
  int64_t width, height;
  Camera(const T* viewmat, const T* K, const T* cam, int64_t w, int64_t h) : width(w), height(h) {
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) rv[r * 3 + c] = viewmat[r * 4 + c];
      tv[r] = viewmat[r * 4 + 3];
      campos[r] = cam[r];
    }
    fx = K[0];
    fy = K[4];
    cx = K[2];
    cy = K[5];
    const T guard = T(kFrustumGuard), half_w = T(0.5 * double(w)), half_h = T(0.5 * double(h));
    lxp = (T(w) - cx) / fx + guard * (half_w / fx);
    lxn = cx / fx + guard * (half_w / fx);
    lyp = (T(h) - cy) / fy + guard * (half_h / fy);
    lyn = cy / fy + guard * (half_h / fy);
  }
};

// Everything the backward pass needs of one Gaussian's forward.
template <typename T>
struct Projection {
  T t[3];          // camera-space mean
  T q[4], qn;      // normalised quaternion (w, x, y, z), the norm's denominator (clamped)
  T qnorm;         // the quaternion's norm
  T rot[9], s[3];  // rotation, linear scales
  T m[9];          // R S
  T cov_c[9];      // camera-space 3D covariance
  T ratx, raty, clx, cly, jx, jy;
  T j00, j02, j11, j12;
  T b[6];  // J cov_c, [2, 3]
  T c00, c11, c01, det_raw, det;
  T feats[kF];
  T radii[2];
  bool visible;
};

template <typename T>
inline T log_sigmoid(T x) {
  return std::min(x, T(0)) - std::log1p(std::exp(-std::abs(x)));
}

// Forward of one Gaussian up to culling; false when it is behind the near plane.
template <typename T>
bool project_one(const Camera<T>& cam, const T* p, const T* quat, const T* log_scale, T logit, Projection<T>& o) {
  const T* rv = cam.rv;
  for (int r = 0; r < 3; ++r) o.t[r] = rv[r * 3] * p[0] + rv[r * 3 + 1] * p[1] + rv[r * 3 + 2] * p[2] + cam.tv[r];
  const T tx = o.t[0], ty = o.t[1], tz = o.t[2];
  if (!(tz > T(kNearPlane))) return false;
  o.qnorm = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  o.qn = std::max(o.qnorm, T(kNormEps));
  for (int k = 0; k < 4; ++k) o.q[k] = quat[k] / o.qn;
  const T w = o.q[0], x = o.q[1], y = o.q[2], z = o.q[3];
  T* R = o.rot;
  R[0] = 1 - 2 * (y * y + z * z), R[1] = 2 * (x * y - w * z), R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z), R[4] = 1 - 2 * (x * x + z * z), R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y), R[7] = 2 * (y * z + w * x), R[8] = 1 - 2 * (x * x + y * y);
  for (int k = 0; k < 3; ++k) o.s[k] = std::exp(log_scale[k]);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) o.m[r * 3 + c] = R[r * 3 + c] * o.s[c];
  T sigma[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      sigma[r * 3 + c] = o.m[r * 3] * o.m[c * 3] + o.m[r * 3 + 1] * o.m[c * 3 + 1] + o.m[r * 3 + 2] * o.m[c * 3 + 2];
  T a[9];  // Rv Sigma
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      a[r * 3 + c] = rv[r * 3] * sigma[c] + rv[r * 3 + 1] * sigma[3 + c] + rv[r * 3 + 2] * sigma[6 + c];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      o.cov_c[r * 3 + c] = a[r * 3] * rv[c * 3] + a[r * 3 + 1] * rv[c * 3 + 1] + a[r * 3 + 2] * rv[c * 3 + 2];
  o.ratx = tx / tz;
  o.raty = ty / tz;
  o.clx = std::clamp(o.ratx, -cam.lxn, cam.lxp);
  o.cly = std::clamp(o.raty, -cam.lyn, cam.lyp);
  o.jx = tz * o.clx;
  o.jy = tz * o.cly;
  const T tz2 = tz * tz;
  o.j00 = cam.fx / tz;
  o.j02 = -cam.fx * o.jx / tz2;
  o.j11 = cam.fy / tz;
  o.j12 = -cam.fy * o.jy / tz2;
  const T* cc = o.cov_c;
  for (int k = 0; k < 3; ++k) {
    o.b[k] = o.j00 * cc[k] + o.j02 * cc[6 + k];
    o.b[3 + k] = o.j11 * cc[3 + k] + o.j12 * cc[6 + k];
  }
  const T cov00 = o.b[0] * o.j00 + o.b[2] * o.j02, cov11 = o.b[4] * o.j11 + o.b[5] * o.j12;
  const T cov01 = o.b[1] * o.j11 + o.b[2] * o.j12, cov10 = o.b[3] * o.j00 + o.b[5] * o.j02;
  o.c00 = cov00 + T(kEps2d);
  o.c11 = cov11 + T(kEps2d);
  o.c01 = T(0.5) * (cov01 + cov10);
  o.det_raw = o.c00 * o.c11 - o.c01 * o.c01;
  o.det = std::max(o.det_raw, T(kMinDet));
  T* f = o.feats;
  f[0] = cam.fx * tx / tz + cam.cx;
  f[1] = cam.fy * ty / tz + cam.cy;
  f[2] = o.c11 / o.det;
  f[3] = -o.c01 / o.det;
  f[4] = o.c00 / o.det;
  f[5] = log_sigmoid(logit);
  f[9] = tz;
  const T opacity = std::exp(f[5]);
  o.radii[0] = o.radii[1] = 0;
  if (opacity >= T(kAlphaThreshold)) {
    const T ratio = std::max(opacity / T(kAlphaThreshold), T(1));
    const T extent = std::min(std::sqrt(T(2) * std::log(ratio)), T(kMaxExtent));
    o.radii[0] = std::ceil(extent * std::sqrt(o.c00));
    o.radii[1] = std::ceil(extent * std::sqrt(o.c11));
  }
  const T rx = o.radii[0], ry = o.radii[1];
  o.visible = f[0] + rx > 0 && f[0] - rx < T(cam.width) && f[1] + ry > 0 && f[1] - ry < T(cam.height) && rx > 0 &&
              ry > 0;
  return true;
}

// SH basis values at the unit direction (x, y, z), the first n of them.
template <typename T>
inline void sh_bases(int n, T x, T y, T z, T* out) {
  out[0] = T(kC0);
  if (n <= 1) return;
  out[1] = -T(kC1) * y;
  out[2] = T(kC1) * z;
  out[3] = -T(kC1) * x;
  if (n <= 4) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  out[4] = T(kC2[0]) * x * y;
  out[5] = T(kC2[1]) * y * z;
  out[6] = T(kC2[2]) * (T(2) * zz - xx - yy);
  out[7] = T(kC2[3]) * x * z;
  out[8] = T(kC2[4]) * (xx - yy);
  if (n <= 9) return;
  out[9] = T(kC3[0]) * y * (T(3) * xx - yy);
  out[10] = T(kC3[1]) * x * y * z;
  out[11] = T(kC3[2]) * y * (T(4) * zz - xx - yy);
  out[12] = T(kC3[3]) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  out[13] = T(kC3[4]) * x * (T(4) * zz - xx - yy);
  out[14] = T(kC3[5]) * z * (xx - yy);
  out[15] = T(kC3[6]) * x * (xx - T(3) * yy);
}

// Gradient of sum_k g[k] * basis_k with respect to the unit direction (x, y, z), added to d.
template <typename T>
inline void sh_bases_vjp(int n, T x, T y, T z, const T* g, T* d) {
  if (n <= 1) return;
  d[1] += -T(kC1) * g[1];
  d[2] += T(kC1) * g[2];
  d[0] += -T(kC1) * g[3];
  if (n <= 4) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  d[0] += T(kC2[0]) * y * g[4];
  d[1] += T(kC2[0]) * x * g[4];
  d[1] += T(kC2[1]) * z * g[5];
  d[2] += T(kC2[1]) * y * g[5];
  d[0] += T(kC2[2]) * T(-2) * x * g[6];
  d[1] += T(kC2[2]) * T(-2) * y * g[6];
  d[2] += T(kC2[2]) * T(4) * z * g[6];
  d[0] += T(kC2[3]) * z * g[7];
  d[2] += T(kC2[3]) * x * g[7];
  d[0] += T(kC2[4]) * T(2) * x * g[8];
  d[1] += T(kC2[4]) * T(-2) * y * g[8];
  if (n <= 9) return;
  d[0] += T(kC3[0]) * T(6) * x * y * g[9];
  d[1] += T(kC3[0]) * (T(3) * xx - T(3) * yy) * g[9];
  d[0] += T(kC3[1]) * y * z * g[10];
  d[1] += T(kC3[1]) * x * z * g[10];
  d[2] += T(kC3[1]) * x * y * g[10];
  d[0] += T(kC3[2]) * T(-2) * x * y * g[11];
  d[1] += T(kC3[2]) * (T(4) * zz - xx - T(3) * yy) * g[11];
  d[2] += T(kC3[2]) * T(8) * y * z * g[11];
  d[0] += T(kC3[3]) * T(-6) * x * z * g[12];
  d[1] += T(kC3[3]) * T(-6) * y * z * g[12];
  d[2] += T(kC3[3]) * (T(6) * zz - T(3) * xx - T(3) * yy) * g[12];
  d[0] += T(kC3[4]) * (T(4) * zz - T(3) * xx - yy) * g[13];
  d[1] += T(kC3[4]) * T(-2) * x * y * g[13];
  d[2] += T(kC3[4]) * T(8) * x * z * g[13];
  d[0] += T(kC3[5]) * T(2) * x * z * g[14];
  d[1] += T(kC3[5]) * T(-2) * y * z * g[14];
  d[2] += T(kC3[5]) * (xx - yy) * g[14];
  d[0] += T(kC3[6]) * (T(3) * xx - T(3) * yy) * g[15];
  d[1] += T(kC3[6]) * T(-6) * x * y * g[15];
}

// Unit direction from the camera centre to p: (dir / max(|dir|, eps)), plus |dir| and the denominator.
template <typename T>
inline void view_dir(const Camera<T>& cam, const T* p, T* unit, T& norm, T& denom) {
  T d[3];
  for (int k = 0; k < 3; ++k) d[k] = p[k] - cam.campos[k];
  norm = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  denom = std::max(norm, T(kNormEps));
  for (int k = 0; k < 3; ++k) unit[k] = d[k] / denom;
}

// Colour (r, g, b) and the pre-clamp values (SH sum + 0.5) of one Gaussian.
template <typename T>
inline void sh_colour(const Camera<T>& cam, const T* p, const T* sh, int n, T* colour, T* raw) {
  T unit[3], norm, denom, bases[16];
  view_dir(cam, p, unit, norm, denom);
  sh_bases(n, unit[0], unit[1], unit[2], bases);
  for (int c = 0; c < 3; ++c) {
    T sum = 0;
    for (int k = 0; k < n; ++k) sum += bases[k] * sh[k * 3 + c];
    raw[c] = sum + T(0.5);
    colour[c] = std::max(raw[c], T(0));
  }
}

// Backward of x / max(|x|, eps) (torch.nn.functional.normalize): grad_unit -> grad_x (dim 3 or 4).
template <typename T>
inline void normalize_vjp(int dim, const T* x, T norm, T denom, const T* grad_unit, T* grad_x) {
  T dot = 0;
  for (int k = 0; k < dim; ++k) dot += grad_unit[k] * x[k];
  const T grad_denom = -dot / (denom * denom);
  const T grad_norm = norm >= T(kNormEps) && norm > 0 ? grad_denom / norm : T(0);
  for (int k = 0; k < dim; ++k) grad_x[k] = grad_unit[k] / denom + grad_norm * x[k];
}

struct Inputs {
  at::Tensor means, quats, log_scales, logits, sh, viewmat, K, campos;
};

void check(const Inputs& in, int64_t sh_degree) {
  const at::Tensor& means = in.means;
  TORCH_CHECK(means.device().is_cpu() && (means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble),
              "means must be a float32 or float64 CPU tensor");
  const int64_t n = means.size(0);
  const std::pair<const at::Tensor*, std::vector<int64_t>> shapes[] = {
      {&in.means, {n, 3}}, {&in.quats, {n, 4}}, {&in.log_scales, {n, 3}}, {&in.logits, {n}},
      {&in.viewmat, {4, 4}}, {&in.K, {3, 3}}, {&in.campos, {3}}};
  for (const auto& [t, shape] : shapes) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape) && t->is_contiguous() && t->device().is_cpu() &&
                    t->scalar_type() == means.scalar_type(),
                "screen-space inputs must be contiguous CPU tensors of one dtype and the documented shapes");
  }
  TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, "sh_degree must be in 0..3");
  TORCH_CHECK(in.sh.dim() == 3 && in.sh.size(0) == n && in.sh.size(1) >= (sh_degree + 1) * (sh_degree + 1) &&
                  in.sh.size(2) == 3 && in.sh.is_contiguous() && in.sh.scalar_type() == means.scalar_type(),
              "sh must be contiguous [N, K >= (degree + 1)^2, 3] of the dtype of means");
}

template <typename T>
void forward_impl(const Inputs& in, int64_t width, int64_t height, int64_t sh_degree, at::Tensor& feats,
                  at::Tensor& radii, at::Tensor& keep) {
  const int64_t n = in.means.size(0), stride = in.sh.size(1) * 3;
  const int nb = static_cast<int>((sh_degree + 1) * (sh_degree + 1));
  const Camera<T> cam(in.viewmat.data_ptr<T>(), in.K.data_ptr<T>(), in.campos.data_ptr<T>(), width, height);
  const T *pm = in.means.data_ptr<T>(), *pq = in.quats.data_ptr<T>(), *ps = in.log_scales.data_ptr<T>();
  const T *pl = in.logits.data_ptr<T>(), *psh = in.sh.data_ptr<T>();
  std::vector<T> rows(static_cast<size_t>(n) * (kF + 2));
  std::vector<uint8_t> kept(static_cast<size_t>(n), 0);
  const int threads = kernel_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    Projection<T> o;
    if (!project_one(cam, pm + i * 3, pq + i * 4, ps + i * 3, pl[i], o) || !o.visible) continue;
    T* row = rows.data() + i * (kF + 2);
    T raw[3];
    sh_colour(cam, pm + i * 3, psh + i * stride, nb, o.feats + 6, raw);
    std::copy_n(o.feats, kF, row);
    row[kF] = o.radii[0];
    row[kF + 1] = o.radii[1];
    kept[i] = 1;
  }
  int64_t v = 0;
  for (int64_t i = 0; i < n; ++i) v += kept[i];
  feats = at::empty({v, kF}, in.means.options());
  radii = at::empty({v, 2}, in.means.options());
  keep = at::empty({v}, in.means.options().dtype(at::kLong));
  T *pf = feats.data_ptr<T>(), *pr = radii.data_ptr<T>();
  int64_t* pk = keep.data_ptr<int64_t>();
  for (int64_t i = 0, j = 0; i < n; ++i) {
    if (!kept[i]) continue;
    const T* row = rows.data() + i * (kF + 2);
    std::copy_n(row, kF, pf + j * kF);
    pr[j * 2] = row[kF];
    pr[j * 2 + 1] = row[kF + 1];
    pk[j++] = i;
  }
}

std::vector<at::Tensor> forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                const at::Tensor& logits, const at::Tensor& sh, const at::Tensor& viewmat,
                                const at::Tensor& K, const at::Tensor& campos, int64_t width, int64_t height,
                                int64_t sh_degree) {
  const Inputs in{means, quats, log_scales, logits, sh, viewmat, K, campos};
  check(in, sh_degree);
  TORCH_CHECK(width > 0 && height > 0, "width and height must be positive");
  at::Tensor feats, radii, keep;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "screen_cpu_forward",
                             [&] { forward_impl<scalar_t>(in, width, height, sh_degree, feats, radii, keep); });
  return {feats, radii, keep};
}

template <typename T>
void backward_impl(const Inputs& in, int64_t width, int64_t height, int64_t sh_degree, const at::Tensor& keep,
                   const at::Tensor& grad_feats, at::Tensor& g_means, at::Tensor& g_quats, at::Tensor& g_scales,
                   at::Tensor& g_logits, at::Tensor& g_sh) {
  const int64_t v = keep.numel(), stride = in.sh.size(1) * 3;
  const int nb = static_cast<int>((sh_degree + 1) * (sh_degree + 1));
  const Camera<T> cam(in.viewmat.data_ptr<T>(), in.K.data_ptr<T>(), in.campos.data_ptr<T>(), width, height);
  const T *pm = in.means.data_ptr<T>(), *pq = in.quats.data_ptr<T>(), *ps = in.log_scales.data_ptr<T>();
  const T *pl = in.logits.data_ptr<T>(), *psh = in.sh.data_ptr<T>(), *pg = grad_feats.data_ptr<T>();
  const int64_t* pk = keep.data_ptr<int64_t>();
  T *gm = g_means.data_ptr<T>(), *gq = g_quats.data_ptr<T>(), *gs = g_scales.data_ptr<T>();
  T *gl = g_logits.data_ptr<T>(), *gsh = g_sh.data_ptr<T>();
  const int threads = kernel_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < v; ++j) {
    const int64_t i = pk[j];
    const T* g = pg + j * kF;
    const T* p = pm + i * 3;
    Projection<T> o;
    project_one(cam, p, pq + i * 4, ps + i * 3, pl[i], o);
    const T tx = o.t[0], ty = o.t[1], tz = o.t[2], tz2 = tz * tz;
    T gt[3] = {0, 0, g[9]};  // d/d camera-space mean; depth = t_z
    // means2d = (fx tx / tz + cx, fy ty / tz + cy)
    gt[0] += g[0] * cam.fx / tz;
    gt[1] += g[1] * cam.fy / tz;
    gt[2] -= (g[0] * cam.fx * tx + g[1] * cam.fy * ty) / tz2;
    // conic = (c11, -c01, c00) / det
    const T det = o.det;
    const T g_det = o.det_raw >= T(kMinDet) ? -(g[2] * o.c11 - g[3] * o.c01 + g[4] * o.c00) / (det * det) : T(0);
    const T d00 = g[4] / det + g_det * o.c11, d11 = g[2] / det + g_det * o.c00;
    const T h = T(0.5) * (-g[3] / det - T(2) * g_det * o.c01);  // d/d cov01 = d/d cov10
    // cov2d = J cov_c J^T: d/dJ = 2 G J cov_c (G, cov_c symmetric), d/dcov_c = J^T G J
    const T* b = o.b;
    const T gj00 = T(2) * (d00 * b[0] + h * b[3]), gj02 = T(2) * (d00 * b[2] + h * b[5]);
    const T gj11 = T(2) * (h * b[1] + d11 * b[4]), gj12 = T(2) * (h * b[2] + d11 * b[5]);
    const T jr0[3] = {o.j00, 0, o.j02}, jr1[3] = {0, o.j11, o.j12};
    T c0[3], c1[3], g_cov_c[9];
    for (int k = 0; k < 3; ++k) {
      c0[k] = d00 * jr0[k] + h * jr1[k];
      c1[k] = h * jr0[k] + d11 * jr1[k];
    }
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) g_cov_c[r * 3 + c] = jr0[r] * c0[c] + jr1[r] * c1[c];
    // J = [[fx / tz, 0, -fx jx / tz^2], [0, fy / tz, -fy jy / tz^2]], jx = tz clamp(tx / tz)
    gt[2] -= gj00 * cam.fx / tz2 + gj11 * cam.fy / tz2;
    const T g_jx = -gj02 * cam.fx / tz2, g_jy = -gj12 * cam.fy / tz2;
    gt[2] += T(2) * (gj02 * cam.fx * o.jx + gj12 * cam.fy * o.jy) / (tz2 * tz);
    gt[2] += g_jx * o.clx + g_jy * o.cly;
    if (o.ratx >= -cam.lxn && o.ratx <= cam.lxp) {
      const T g_rat = g_jx * tz;
      gt[0] += g_rat / tz;
      gt[2] -= g_rat * tx / tz2;
    }
    if (o.raty >= -cam.lyn && o.raty <= cam.lyp) {
      const T g_rat = g_jy * tz;
      gt[1] += g_rat / tz;
      gt[2] -= g_rat * ty / tz2;
    }
    // cov_c = Rv Sigma Rv^T -> d/dSigma = Rv^T g Rv
    const T* rv = cam.rv;
    T tmp[9], g_sigma[9];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c)
        tmp[r * 3 + c] = rv[r] * g_cov_c[c] + rv[3 + r] * g_cov_c[3 + c] + rv[6 + r] * g_cov_c[6 + c];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c)
        g_sigma[r * 3 + c] = tmp[r * 3] * rv[c] + tmp[r * 3 + 1] * rv[3 + c] + tmp[r * 3 + 2] * rv[6 + c];
    // Sigma = M M^T -> d/dM = (g + g^T) M; M = R diag(s)
    T g_rot[9], g_s[3] = {0, 0, 0};
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) {
        T acc = 0;
        for (int k = 0; k < 3; ++k) acc += (g_sigma[r * 3 + k] + g_sigma[k * 3 + r]) * o.m[k * 3 + c];
        g_rot[r * 3 + c] = acc * o.s[c];
        g_s[c] += acc * o.rot[r * 3 + c];
      }
    }
    for (int k = 0; k < 3; ++k) gs[i * 3 + k] = g_s[k] * o.s[k];
    // rotation from the normalised quaternion
    const T w = o.q[0], x = o.q[1], y = o.q[2], z = o.q[3];
    const T* gr = g_rot;
    T g_qn[4];
    g_qn[0] = T(2) * (-z * gr[1] + y * gr[2] + z * gr[3] - x * gr[5] - y * gr[6] + x * gr[7]);
    g_qn[1] = T(2) * (y * gr[1] + z * gr[2] + y * gr[3] - T(2) * x * gr[4] - w * gr[5] + z * gr[6] + w * gr[7] -
                      T(2) * x * gr[8]);
    g_qn[2] = T(2) * (-T(2) * y * gr[0] + x * gr[1] + w * gr[2] + x * gr[3] + z * gr[5] - w * gr[6] + z * gr[7] -
                      T(2) * y * gr[8]);
    g_qn[3] = T(2) * (-T(2) * z * gr[0] - w * gr[1] + x * gr[2] + w * gr[3] - T(2) * z * gr[4] + y * gr[5] +
                      x * gr[6] + y * gr[7]);
    normalize_vjp(4, pq + i * 4, o.qnorm, o.qn, g_qn, gq + i * 4);
    // log opacity = logsigmoid(logit): derivative sigmoid(-logit)
    const T logit = pl[i], e = std::exp(-std::abs(logit));
    gl[i] = g[5] * (logit >= 0 ? e / (T(1) + e) : T(1) / (T(1) + e));
    // t = Rv p + tv
    T* gmi = gm + i * 3;
    for (int k = 0; k < 3; ++k) gmi[k] = rv[k] * gt[0] + rv[3 + k] * gt[1] + rv[6 + k] * gt[2];
    // colour = max(SH(unit(p - campos)) + 0.5, 0)
    T unit[3], norm, denom, bases[16], colour[3], raw[3];
    view_dir(cam, p, unit, norm, denom);
    sh_bases(nb, unit[0], unit[1], unit[2], bases);
    sh_colour(cam, p, psh + i * stride, nb, colour, raw);
    T g_raw[3];
    for (int c = 0; c < 3; ++c) g_raw[c] = raw[c] >= T(0) ? g[6 + c] : T(0);
    const T* shi = psh + i * stride;
    T* gshi = gsh + i * stride;
    T g_bases[16];
    for (int k = 0; k < nb; ++k) {
      g_bases[k] = 0;
      for (int c = 0; c < 3; ++c) {
        gshi[k * 3 + c] = bases[k] * g_raw[c];
        g_bases[k] += shi[k * 3 + c] * g_raw[c];
      }
    }
    T g_unit[3] = {0, 0, 0}, dir[3], g_dir[3];
    sh_bases_vjp(nb, unit[0], unit[1], unit[2], g_bases, g_unit);
    for (int k = 0; k < 3; ++k) dir[k] = p[k] - cam.campos[k];
    normalize_vjp(3, dir, norm, denom, g_unit, g_dir);
    for (int k = 0; k < 3; ++k) gmi[k] += g_dir[k];
  }
}

std::vector<at::Tensor> backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                 const at::Tensor& logits, const at::Tensor& sh, const at::Tensor& viewmat,
                                 const at::Tensor& K, const at::Tensor& campos, int64_t width, int64_t height,
                                 int64_t sh_degree, const at::Tensor& keep, const at::Tensor& grad_feats) {
  const Inputs in{means, quats, log_scales, logits, sh, viewmat, K, campos};
  check(in, sh_degree);
  const int64_t v = keep.numel();
  TORCH_CHECK(keep.scalar_type() == at::kLong && keep.dim() == 1 && keep.is_contiguous(), "keep must be int64 [V]");
  TORCH_CHECK(grad_feats.sizes() == at::IntArrayRef({v, kF}) && grad_feats.is_contiguous() &&
                  grad_feats.scalar_type() == means.scalar_type(),
              "grad_feats must be contiguous [V, 10] of the dtype of means");
  auto g_means = at::zeros_like(means), g_quats = at::zeros_like(quats), g_scales = at::zeros_like(log_scales);
  auto g_logits = at::zeros_like(logits), g_sh = at::zeros_like(sh);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "screen_cpu_backward", [&] {
    backward_impl<scalar_t>(in, width, height, sh_degree, keep, grad_feats, g_means, g_quats, g_scales, g_logits, g_sh);
  });
  return {g_means, g_quats, g_scales, g_logits, g_sh};
}

// _torch_raster.bin_gaussians for the composite kernel: the same tile boxes (floor / ceil of
// (mean -+ radius) / tile, clamped to the grid) and the same lists, each tile's sorted by (depth,
// index) as torch's stable depth rank gives them, tiles with any Gaussian ordered by list length
// (ties by tile id). A stable sort of the Gaussians by depth, then a counting sort into tiles.
template <typename T>
std::vector<at::Tensor> bin_impl(const at::Tensor& feats, const at::Tensor& radii, int64_t rows, int64_t cols,
                                 int64_t tile) {
  const int64_t n = feats.size(0);
  const T *pf = feats.data_ptr<T>(), *pr = radii.data_ptr<T>();
  std::vector<int64_t> box(static_cast<size_t>(n) * 4);  // x0, y0, x1, y1 (exclusive)
  std::vector<int64_t> counts(static_cast<size_t>(rows * cols), 0);
  const T size = T(tile);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t upper[2] = {cols, rows};
    int64_t* b = box.data() + i * 4;
    for (int k = 0; k < 2; ++k) {
      const T m = pf[i * kF + k], r = pr[i * 2 + k];
      b[k] = static_cast<int64_t>(std::clamp(double(std::floor((m - r) / size)), 0.0, double(upper[k])));
      b[2 + k] = static_cast<int64_t>(std::clamp(double(std::ceil((m + r) / size)), 0.0, double(upper[k])));
    }
    for (int64_t y = b[1]; y < b[3]; ++y)
      for (int64_t x = b[0]; x < b[2]; ++x) ++counts[y * cols + x];
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return pf[a * kF + 9] < pf[b * kF + 9]; });
  std::vector<int64_t> starts(counts.size()), cursor(counts.size());
  int64_t total = 0;
  for (size_t t = 0; t < counts.size(); ++t) {
    starts[t] = cursor[t] = total;
    total += counts[t];
  }
  auto ids = at::empty({total}, feats.options().dtype(at::kLong));
  int64_t* pid = ids.data_ptr<int64_t>();
  for (const int64_t i : order) {
    const int64_t* b = box.data() + i * 4;
    for (int64_t y = b[1]; y < b[3]; ++y)
      for (int64_t x = b[0]; x < b[2]; ++x) pid[cursor[y * cols + x]++] = i;
  }
  std::vector<int64_t> active;
  for (size_t t = 0; t < counts.size(); ++t)
    if (counts[t] > 0) active.push_back(static_cast<int64_t>(t));
  std::stable_sort(active.begin(), active.end(), [&](int64_t a, int64_t b) { return counts[a] < counts[b]; });
  const int64_t m = static_cast<int64_t>(active.size());
  auto opts = feats.options().dtype(at::kLong);
  auto out_tiles = at::empty({m}, opts), out_starts = at::empty({m}, opts), out_counts = at::empty({m}, opts);
  for (int64_t k = 0; k < m; ++k) {
    out_tiles.data_ptr<int64_t>()[k] = active[k];
    out_starts.data_ptr<int64_t>()[k] = starts[active[k]];
    out_counts.data_ptr<int64_t>()[k] = counts[active[k]];
  }
  return {out_tiles, out_starts, out_counts, ids};
}

std::vector<at::Tensor> bin(const at::Tensor& feats, const at::Tensor& radii, int64_t rows, int64_t cols,
                            int64_t tile) {
  TORCH_CHECK(feats.device().is_cpu() && feats.dim() == 2 && feats.size(1) == kF && feats.is_contiguous() &&
                  (feats.scalar_type() == at::kFloat || feats.scalar_type() == at::kDouble),
              "feats must be a contiguous float32/float64 CPU tensor [N, 10]");
  TORCH_CHECK(radii.sizes() == at::IntArrayRef({feats.size(0), 2}) && radii.is_contiguous() &&
                  radii.scalar_type() == feats.scalar_type(),
              "radii must be contiguous [N, 2] of the dtype of feats");
  TORCH_CHECK(rows > 0 && cols > 0 && tile > 0, "the tile grid and tile size must be positive");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "screen_cpu_bin",
                             [&] { out = bin_impl<scalar_t>(feats, radii, rows, cols, tile); });
  return out;
}

}  // namespace glimpse3d_screen

void register_screen_space(pybind11::module_& m) {
  m.def("screen_forward", &glimpse3d_screen::forward,
        "(means, quats, log_scales, opacity_logits, sh, viewmat, K, campos, width, height, sh_degree) -> "
        "(feats [V,10], radii [V,2], kept indices [V])");
  m.def("screen_backward", &glimpse3d_screen::backward,
        "(inputs..., width, height, sh_degree, kept, grad_feats) -> grads of means, quats, log_scales, "
        "opacity_logits, sh");
  m.def("bin_gaussians", &glimpse3d_screen::bin,
        "(feats [N,10], radii [N,2], rows, cols, tile) -> (tiles, starts, counts, ids) as _torch_raster.bin_gaussians");
}
