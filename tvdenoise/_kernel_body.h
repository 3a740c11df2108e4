/*
 * The body of the compiled iteration (_kernel.c), in one floating-point type: included once
 * for float32 and once for float64, with `real` that type and RS(name) the name with the
 * type's suffix (name_f32, name_f64). <tgmath.h> makes sqrt, fabs and log those of `real`.
 */

/* What all chunks of one step share. */
typedef struct {
    int tv;           /* TVD_ISOTROPIC_* or TVD_ANISOTROPIC */
    int data;         /* TVD_GAUSSIAN, TVD_IMPULSE or TVD_POISSON */
    real data_scale; /* impulse: delta; Poisson: the floor of u inside the logarithm */
    real eps;        /* Huber radius */
    real ih, iw;     /* inverse spacing along H and W */
    /* Adam's coefficients, rounded from double as torch._fused_adam_ rounds them. */
    real beta1, beta1c, beta2, beta2c; /* beta and 1 - beta */
    double decay;                       /* of the learning rates, decay^(k-1) */
    double correction1;                 /* 1 - beta1^k */
    int first;                          /* 1 on the first step: the moments are 0, unread */
    real corr2;                        /* sqrt(1 - beta2^k) */
    real adam_eps;
    real floor; /* Poisson: the least value of the solver variable x = sqrt(u) */
    real ratio;      /* TGV: alpha0 / alpha1 */
    real field_step; /* TGV: tvdenoise.tgv.FIELD_STEP */
} RS(tvd_params);

/* One range of rows of one image. */
typedef struct {
    real *u, *m, *v; /* the image's solver variable and Adam moments, (C, H, W) */
    const real *f;   /* its data */
    const real *observed; /* 1 where a value is observed, 0 where missing; NULL: all are */
    int C, H, W;
    /* Columns per segment: images laid side by side in one (cut every S columns: no
       difference across a cut, as at an image's last column); S == W for one image. */
    int S;
    int r0, r1;
    real half_weight;
    double rate;
    /* Flux of row r0 - 1 (NULL when r0 == 0): C*W vertical values, then C*(W+1)
       horizontal ones, each channel's led by a zero. */
    const real *above;
    /* Flux of row r1 - 1 in the same layout (NULL when r1 == H: computed here). */
    const real *last;
    /* Scratch: tvd_work_size(C, W) values. */
    real *work;
} RS(tvd_chunk);


/* The differences of row y of a plane, times the inverse spacing: along H (dy, C*W; zero on
   the last row), along W (dx, C*(W+1): each channel's after a leading zero; the last is
   zero) and, for a volume (dz not NULL), along D (dz, C*W; zero where nxt, the same row of
   the next plane, is NULL). The plane's channels are `cs` apart, the next plane's `ns`. */
TVD_CLONES
static void RS(row_differences)(const real *R cur, size_t cs, const real *R nxt, size_t ns,
                                int C, int H, int W, int y, real iz, const RS(tvd_params) *p,
                                real *R dz, real *R dy, real *R dx) {
    const real ih = p->ih, iw = p->iw;
    for (int c = 0; c < C; c++) {
        const real *R r = cur + c * cs + (size_t)y * W;
        real *R a = dy + (size_t)c * W;
        real *R b = dx + (size_t)c * (W + 1) + 1;
        b[-1] = 0.f;
        if (dz != NULL) {
            real *R d = dz + (size_t)c * W;
            if (nxt != NULL) {
                const real *R n = nxt + c * ns + (size_t)y * W;
                for (int j = 0; j < W; j++) d[j] = (n[j] - r[j]) * iz;
            } else {
                for (int j = 0; j < W; j++) d[j] = 0.f;
            }
        }
        if (y < H - 1) {
            const real *R n = r + W;
            for (int j = 0; j < W; j++) a[j] = (n[j] - r[j]) * ih;
        } else {
            for (int j = 0; j < W; j++) a[j] = 0.f;
        }
        for (int j = 0; j < W - 1; j++) b[j] = (r[j + 1] - r[j]) * iw;
        b[W - 1] = 0.f;
    }
}

/* The squared magnitude of the differences of channels [c0, c1) of a row, into s (W
   values), summed as PyTorch does: axis by axis, channel by channel, so that ties (exact
   zeros of the gradient) stay ties. */
static inline __attribute__((always_inline)) void
RS(squared_magnitude)(const real *R dz, const real *R dy, const real *R dx, int c0, int c1,
                      int W, real *R s) {
    for (int j = 0; j < W; j++) s[j] = 0.f;
    for (int c = c0; dz != NULL && c < c1; c++) {
        const real *R d = dz + (size_t)c * W;
        for (int j = 0; j < W; j++) s[j] += d[j] * d[j];
    }
    for (int c = c0; c < c1; c++) {
        const real *R d = dy + (size_t)c * W;
        for (int j = 0; j < W; j++) s[j] += d[j] * d[j];
    }
    for (int c = c0; c < c1; c++) {
        const real *R d = dx + (size_t)c * (W + 1) + 1;
        for (int j = 0; j < W; j++) s[j] += d[j] * d[j];
    }
}

/* The squared magnitude at j of a group of C channels' differences along a row of an image
   (the layout of row_differences(), dy and dx at the group's first channel), summed as
   squared_magnitude() sums it: along H channel by channel, then along W. */
static inline __attribute__((always_inline)) real
RS(group_square)(const real *R dy, const real *R dx, const int C, int W, int j) {
    real q = 0.f;
    for (int c = 0; c < C; c++) q += dy[(size_t)c * W + j] * dy[(size_t)c * W + j];
    for (int c = 0; c < C; c++) {
        const real d = dx[(size_t)c * (W + 1) + 1 + j];
        q += d * d;
    }
    return q;
}

/* The isotropic flux of an image's row (no dz) for a group of C channels (a constant in
   each caller, so that the channel loops unroll): the same operations on each value as
   squared_magnitude() and flux() below, in one pass over the row instead of one per
   channel and axis. dy and dx point at the group's first channel. */
static inline __attribute__((always_inline)) void
RS(group_flux)(real *R dy, real *R dx, const int C, int W, real hw, const RS(tvd_params) *p) {
    const real eps = p->eps, eps2 = eps * eps, ih = p->ih, iw = p->iw;
    for (int j = 0; j < W; j++) {
        real q = RS(group_square)(dy, dx, C, W, j);
        q = q > eps2 ? q : eps2;
        const real k = 1.f / sqrt(q) * hw;
        for (int c = 0; c < C; c++) {
            dy[(size_t)c * W + j] = dy[(size_t)c * W + j] * k * ih;
            dx[(size_t)c * (W + 1) + 1 + j] = dx[(size_t)c * (W + 1) + 1 + j] * k * iw;
        }
    }
}

/* The flux from the differences of row_differences(), in place: each difference over the
   Huber-smoothed magnitude (isotropic: of all channels' differences, or of each channel's;
   anisotropic: its own), times half the weight and the inverse spacing again, as
   tvdenoise.solver._Workspace.gradient computes it; s is W values of scratch. */
TVD_CLONES
static void RS(flux)(real *R dz, real *R dy, real *R dx, int C, int W, real hw, real iz,
                     const RS(tvd_params) *p, real *R s) {
    const real eps = p->eps, eps2 = eps * eps, ih = p->ih, iw = p->iw;
    if (p->tv == TVD_ANISOTROPIC) {
        for (int c = 0; c < C; c++) {
            real *R a = dy + (size_t)c * W, *R b = dx + (size_t)c * (W + 1) + 1;
            if (dz != NULL) {
                real *R d = dz + (size_t)c * W;
                for (int j = 0; j < W; j++) {
                    real e = fabs(d[j]);
                    d[j] = d[j] / (e > eps ? e : eps) * hw * iz;
                }
            }
            for (int j = 0; j < W; j++) {
                real e = fabs(a[j]), f = fabs(b[j]);
                a[j] = a[j] / (e > eps ? e : eps) * hw * ih;
                b[j] = b[j] / (f > eps ? f : eps) * hw * iw;
            }
        }
        return;
    }
    const int groups = p->tv == TVD_ISOTROPIC_JOINT ? 1 : C;
    const int per_group = C / groups;
    if (dz == NULL && per_group <= 3) {
        for (int g = 0; g < groups; g++) {
            real *R a = dy + (size_t)g * per_group * W;
            real *R b = dx + (size_t)g * per_group * (W + 1);
            if (per_group == 1) RS(group_flux)(a, b, 1, W, hw, p);
            else if (per_group == 2) RS(group_flux)(a, b, 2, W, hw, p);
            else RS(group_flux)(a, b, 3, W, hw, p);
        }
        return;
    }
    for (int g = 0; g < groups; g++) {
        const int c0 = g * per_group, c1 = c0 + per_group;
        RS(squared_magnitude)(dz, dy, dx, c0, c1, W, s);
        for (int j = 0; j < W; j++) {
            real q = s[j] > eps2 ? s[j] : eps2;
            s[j] = 1.f / sqrt(q) * hw;
        }
        for (int c = c0; c < c1; c++) {
            real *R a = dy + (size_t)c * W, *R b = dx + (size_t)c * (W + 1) + 1;
            if (dz != NULL) {
                real *R d = dz + (size_t)c * W;
                for (int j = 0; j < W; j++) d[j] = d[j] * s[j] * iz;
            }
            for (int j = 0; j < W; j++) {
                a[j] = a[j] * s[j] * ih;
                b[j] = b[j] * s[j] * iw;
            }
        }
    }
}

/* The flux of row i of an image (C, H, W) from u before the step, in the layout of
   row_differences(): pv along H, ph along W; the difference along W zero at the last
   column of every segment of S columns. */
static void RS(row_flux)(const real *R u, int C, int H, int W, int S, int i, real hw,
                         const RS(tvd_params) *p, real *R pv, real *R ph, real *R s) {
    RS(row_differences)(u, (size_t)H * W, NULL, 0, C, H, W, i, 1.f, p, NULL, pv, ph);
    for (int c = 0; S < W && c < C; c++) {
        for (int j = S; j < W; j += S) ph[(size_t)c * (W + 1) + j] = 0.f;
    }
    RS(flux)(NULL, pv, ph, C, W, hw, 1.f, p, s);
}

/* The data term's half gradient at x (DataTerm.half_gradient_), `data` a constant. */
static inline __attribute__((always_inline)) real
RS(data_gradient)(real x, real f, const RS(tvd_params) *p, const int data) {
    if (data == TVD_POISSON) return (x - f / x) * 2.f; /* 2 (x - f / x) */
    real r = x - f;
    if (data == TVD_IMPULSE) {
        r /= p->data_scale;
        r = (r > 1.f ? 1.f : (r < -1.f ? -1.f : r)) * 0.5f;
    }
    return r;
}

/* The energy gradient of one row of one channel and Adam's update of it. `data`, `masked`
   and `volume` are constants in each caller, so that each loop is compiled without the
   tests. The flux of this row along H is `below`, of the row above `above`, along W `dh`
   (after its leading zero); in a volume, along D `pz`, and of the plane before `prev`. */
static inline __attribute__((always_inline)) void
RS(update_loop)(real *R u, const real *R f, const real *R obs, real *R m, real *R v,
            const real *R below, const real *R above, const real *R dh, const real *R pz,
            const real *R prev, int W, real step, const RS(tvd_params) *p, const int data,
            const int masked, const int volume) {
    const real b1 = p->beta1, b1c = p->beta1c, b2 = p->beta2, b2c = p->beta2c;
    const real corr2 = p->corr2, ae = p->adam_eps, floor = p->floor;
    const real *R left = dh - 1; /* the leading zero */
    for (int j = 0; j < W; j++) {
        const real x = u[j];
        real r = RS(data_gradient)(x, f[j], p, data);
        if (masked) r *= obs[j]; /* no fidelity where a value is missing */
        /* In the order of PyTorch's operations. */
        real g = volume ? r - pz[j] - below[j] - dh[j] + prev[j] + above[j] + left[j]
                         : r - below[j] - dh[j] + above[j] + left[j];
        if (data == TVD_POISSON) g *= x; /* DataTerm.precondition_ */
        real mm = m[j] * b1 + g * b1c;
        real vv = v[j] * b2 + g * g * b2c;
        m[j] = mm;
        v[j] = vv;
        real y = x - step * mm / (sqrt(vv) / corr2 + ae);
        if (data == TVD_POISSON) y = y < floor ? floor : y; /* the solver's clamp_min_ */
        u[j] = y;
    }
}

#define TVD_UPDATE(data, masked, volume)                                                   \
    RS(update_loop)(u, f, obs, m, v, below, above, dh, pz, prev, W, step, p, data, masked, volume)
#define TVD_UPDATE_DATA(masked, volume)                                                    \
    do {                                                                                   \
        if (p->data == TVD_IMPULSE) TVD_UPDATE(TVD_IMPULSE, masked, volume);               \
        else if (p->data == TVD_POISSON) TVD_UPDATE(TVD_POISSON, masked, volume);          \
        else TVD_UPDATE(TVD_GAUSSIAN, masked, volume);                                     \
    } while (0)

/* update_loop() for the params' data term, with or without `obs`; `pz` NULL: an image. */
TVD_CLONES
static void RS(update_row)(real *R u, const real *R f, const real *R obs, real *R m, real *R v,
                       const real *R below, const real *R above, const real *R dh,
                       const real *R pz, const real *R prev, int W, real step,
                       const RS(tvd_params) *p) {
    if (pz == NULL) {
        if (obs == NULL) TVD_UPDATE_DATA(0, 0);
        else TVD_UPDATE_DATA(1, 0);
    } else {
        if (obs == NULL) TVD_UPDATE_DATA(0, 1);
        else TVD_UPDATE_DATA(1, 1);
    }
}

static void RS(copy_n)(real *R dst, const real *R src, size_t n) {
    for (size_t k = 0; k < n; k++) dst[k] = src[k];
}

/* ---------------------------------------------------------------------------------------
 * Second-order TGV of images (tvdenoise.tgv.TGVWorkspace). An image's solver variable is
 * (u, w_y / s, w_x / s), 3 C planes, with s = field_step / max(2 half_weight, 1e-6). The
 * fields of row i, made from rows i and i + 1 of the three before the step, are the flux
 * of grad u - w and of the symmetrised gradient E w; the gradient of row i reads the fields
 * of rows i and i - 1, as the TV gradient reads the flux, so the chunks, their boundaries
 * and the threads are those of TV. The arithmetic is TGVWorkspace.gradient's, in its order.
 * ------------------------------------------------------------------------------------- */

/* The step of the field: s = field_step / max(2 half_weight, 1e-6). */
static real RS(tgv_scale)(real hw, const RS(tvd_params) *p) {
    const real w2 = 2.f * hw, least = (real)1e-6;
    return p->field_step / (w2 > least ? w2 : least);
}

/* The differences of row i of an image's variable x, in five fields of C (W + 1) values,
   each channel's led by a zero: grad u - w along H and W, and E w (yy, xy, xx), with w = s
   times the stored field; no difference along W at the last column of each segment of S
   columns (images side by side). */
TVD_CLONES
static void RS(tgv_row_differences)(const real *R x, int C, int H, int W, int S, int i, real sc,
                                    const RS(tvd_params) *p, real *R P) {
    const size_t plane = (size_t)H * W, fw = (size_t)C * (W + 1);
    const real ih = p->ih, iw = p->iw, half = 0.5f * sc;
    real *R py = P, *R px = P + fw, *R yy = P + 2 * fw, *R xy = P + 3 * fw, *R xx = P + 4 * fw;
    for (int c = 0; c < C; c++) {
        const real *R u = x + c * plane + (size_t)i * W;
        const real *R wy = u + (size_t)C * plane, *R wx = wy + (size_t)C * plane;
        const size_t o = (size_t)c * (W + 1) + 1;
        real *R a = py + o, *R b = px + o, *R e = yy + o, *R g = xy + o, *R h = xx + o;
        a[-1] = b[-1] = e[-1] = g[-1] = h[-1] = 0.f;
        /* Along W, over the whole row; then none at the last column of each segment. g
           holds the part of E w along W until the part along H is added to it (in the
           other order from PyTorch's, which is the same sum). */
        for (int j = 0; j < W - 1; j++) {
            b[j] = (u[j + 1] - u[j]) * iw - wx[j] * sc;
            g[j] = (wy[j + 1] - wy[j]) * iw;
            h[j] = ((wx[j + 1] - wx[j]) * iw) * sc;
        }
        for (int j = S - 1; j < W; j += S) {
            b[j] = 0.f - wx[j] * sc;
            g[j] = 0.f;
            h[j] = 0.f;
        }
        if (i < H - 1) {
            for (int j = 0; j < W; j++) {
                a[j] = (u[j + W] - u[j]) * ih - wy[j] * sc;
                e[j] = ((wy[j + W] - wy[j]) * ih) * sc;
                g[j] = ((wx[j + W] - wx[j]) * ih + g[j]) * half;
            }
        } else { /* no difference along H from the last row */
            for (int j = 0; j < W; j++) {
                a[j] = 0.f - wy[j] * sc;
                e[j] = 0.f;
                g[j] = (0.f + g[j]) * half;
            }
        }
    }
}

/* The squared magnitudes of a group of `per` channels of fields [f0, f1) of P (laid out
   as tgv_row_differences() lays them, `o` the group's first value), into s: field by
   field, channel by channel, the fields in the bit mask `twice` (the off-diagonal
   components of E w) counted twice. */
static inline __attribute__((always_inline)) void
RS(tgv_squares)(const real *R P, size_t fw, size_t o, int per, int W, int f0, int f1,
                unsigned twice, real *R s) {
    for (int j = 0; j < W; j++) s[j] = 0.f;
    for (int f = f0; f < f1; f++) {
        const real m = (twice >> f) & 1u ? 2.f : 1.f;
        for (int c = 0; c < per; c++) {
            const real *R d = P + f * fw + o + (size_t)c * (W + 1);
            for (int j = 0; j < W; j++) s[j] += (m * d[j]) * d[j];
        }
    }
}

/* The off-diagonal components of E w among the fields: xy of an image's five, zy, zx and
   yx of a volume's nine (tgv_row_differences3()). */
#define TVD_TWICE2 (1u << 3)
#define TVD_TWICE3 ((1u << 4) | (1u << 5) | (1u << 7))

/* Fields [0, nf) (grad u - w) and [nf, nf + ns) (E w) of a row, each C (W + 1) values
   after its leading zero, in place: divided by the Huber-smoothed magnitude of their group
   of channels (all channels for joint colour) and times half the weight, and the ratio
   for E w; s is W values of scratch. */
TVD_CLONES
static void RS(tgv_normalise)(real *R P, int C, int W, int nf, int ns, unsigned twice, real hw,
                              const RS(tvd_params) *p, real *R s) {
    const size_t fw = (size_t)C * (W + 1);
    const real eps = p->eps, ratio = p->ratio;
    const int groups = p->tv == TVD_TGV_JOINT ? 1 : C, per = C / groups;
    for (int gr = 0; gr < groups; gr++) {
        const size_t o = (size_t)gr * per * (W + 1) + 1;
        for (int order = 0; order < 2; order++) {
            const int f0 = order == 0 ? 0 : nf, f1 = order == 0 ? nf : nf + ns;
            RS(tgv_squares)(P, fw, o, per, W, f0, f1, twice, s);
            if (order == 0) {
                for (int j = 0; j < W; j++) {
                    const real t = sqrt(s[j]);
                    s[j] = 1.f / (t < eps ? eps : t) * hw;
                }
            } else {
                for (int j = 0; j < W; j++) {
                    const real t = sqrt(s[j]);
                    s[j] = 1.f / (t < eps ? eps : t) * hw * ratio;
                }
            }
            for (int f = f0; f < f1; f++) {
                for (int c = 0; c < per; c++) {
                    real *R d = P + f * fw + o + (size_t)c * (W + 1);
                    for (int j = 0; j < W; j++) d[j] = d[j] * s[j];
                }
            }
        }
    }
}

/* The five fields of row i (tgv_row_differences()), normalised (tgv_normalise()): py, px,
   qyy, qxy, qxx; s is W values of scratch. */
static void RS(tgv_row_fields)(const real *R x, int C, int H, int W, int S, int i, real hw,
                               const RS(tvd_params) *p, real *R P, real *R s) {
    RS(tgv_row_differences)(x, C, H, W, S, i, RS(tgv_scale)(hw, p), p, P);
    RS(tgv_normalise)(P, C, W, 2, 3, TVD_TWICE2, hw, p, s);
}

/* Adam's update of x[j] with the gradient g, as update_loop() makes it. */
static inline __attribute__((always_inline)) void
RS(adam_at)(real *R x, real *R m, real *R v, int j, real g, real step, const RS(tvd_params) *p) {
    const real mm = m[j] * p->beta1 + g * p->beta1c;
    const real vv = v[j] * p->beta2 + g * g * p->beta2c;
    m[j] = mm;
    v[j] = vv;
    x[j] = x[j] - step * mm / (sqrt(vv) / p->corr2 + p->adam_eps);
}

/* The gradient at column j of one channel of a row and Adam's update of its three values
   (u, w_y / s, w_x / s at x, x + C planes, x + 2 C planes). F and A are the fields of this
   row and of the row above, at the channel (after the leading zero), fw apart; `next[j]`
   is 0 at the last column of each segment (it has no column after it), else 1, and
   next[-1] is 1 (the first column reads the leading zeros); `inner` (not the last row) and
   `masked` are constants in each caller. In the order of TGVWorkspace.gradient's
   operations. */
static inline __attribute__((always_inline)) void
RS(tgv_point)(real *R x, real *R m, real *R v, size_t cp, const real *R f, const real *R obs,
              const real *R F, const real *R A, size_t fw, const real *R next, int j, real sc,
              real step, const RS(tvd_params) *p, const int inner, const int masked) {
    const real ih = p->ih, iw = p->iw;
    const int right = next[j] != 0.f, left = next[j - 1] != 0.f;
    const real *R py = F, *R px = F + fw, *R yy = F + 2 * fw, *R xy = F + 3 * fw, *R xx = F + 4 * fw;
    const real *R ay = A, *R ayy = A + 2 * fw, *R axy = A + 3 * fw;
    real r = x[j] - f[j];
    if (masked) r *= obs[j]; /* no fidelity where a value is missing */
    real gu = inner ? r - ih * py[j] : r;
    gu = gu + ih * ay[j];
    gu = right ? gu - iw * px[j] : gu;
    gu = left ? gu + iw * px[j - 1] : gu;
    real gy = (0.f - py[j]) - ih * yy[j];
    gy = gy + ih * ayy[j];
    gy = right ? gy - iw * xy[j] : gy;
    gy = (left ? gy + iw * xy[j - 1] : gy) * sc;
    real gx = 0.f - px[j];
    gx = inner ? gx - ih * xy[j] : gx;
    gx = gx + ih * axy[j];
    gx = gx - iw * xx[j];
    gx = (left ? gx + iw * xx[j - 1] : gx) * sc;
    RS(adam_at)(x, m, v, j, gu, step, p);
    RS(adam_at)(x + cp, m + cp, v + cp, j, gy, step, p);
    RS(adam_at)(x + 2 * cp, m + 2 * cp, v + 2 * cp, j, gx, step, p);
}

static inline __attribute__((always_inline)) void
RS(tgv_row_loop)(real *R x, real *R m, real *R v, size_t cp, const real *R f,
                 const real *R obs, const real *R F, const real *R A, size_t fw,
                 const real *R next, int W, real sc, real step, const RS(tvd_params) *p,
                 const int inner, const int masked) {
    const RS(tvd_params) q = *p; /* a local copy: no store in the loop can change it */
    /* The arrays do not overlap: no dependence between iterations. */
#pragma GCC ivdep
    for (int j = 0; j < W; j++)
        RS(tgv_point)(x, m, v, cp, f, obs, F, A, fw, next, j, sc, step, &q, inner, masked);
}

/* tgv_row_loop() with its constants. */
TVD_CLONES
static void RS(tgv_update_row)(real *R x, real *R m, real *R v, size_t cp, const real *R f,
                               const real *R obs, const real *R F, const real *R A, size_t fw,
                               const real *R next, int W, real sc, real step,
                               const RS(tvd_params) *p, int inner) {
    if (inner) {
        if (obs == NULL) RS(tgv_row_loop)(x, m, v, cp, f, obs, F, A, fw, next, W, sc, step, p, 1, 0);
        else RS(tgv_row_loop)(x, m, v, cp, f, obs, F, A, fw, next, W, sc, step, p, 1, 1);
    } else {
        if (obs == NULL) RS(tgv_row_loop)(x, m, v, cp, f, obs, F, A, fw, next, W, sc, step, p, 0, 0);
        else RS(tgv_row_loop)(x, m, v, cp, f, obs, F, A, fw, next, W, sc, step, p, 0, 1);
    }
}

/* One Adam step on a chunk's rows of a TGV image, as tvd_step() makes one for TV. */
static void RS(tgv_chunk_step)(const RS(tvd_chunk) *c, const RS(tvd_params) *p) {
    const int C = c->C, H = c->H, W = c->W;
    const size_t plane = (size_t)H * W, cp = (size_t)C * plane, fw = (size_t)C * (W + 1);
    const size_t size = 5 * fw;
    real *a = c->work, *b = a + size, *s = b + size; /* this row's and the row above's fields */
    real *next = s + W + 1;                          /* tgv_point()'s, from next[-1] */
    const real step = (real)(c->rate * p->decay / p->correction1);
    const real sc = RS(tgv_scale)(c->half_weight, p);
    next[-1] = 1.f;
    for (int j = 0; j < W; j++) next[j] = (j + 1) % c->S != 0 ? 1.f : 0.f;
    if (c->above != NULL) {
        RS(copy_n)(b, c->above, size);
    } else {
        for (size_t q = 0; q < size; q++) b[q] = 0.f;
    }
    for (int i = c->r0; i < c->r1; i++) {
        const real *F = a;
        if (i == c->r1 - 1 && c->last != NULL) {
            F = c->last;
        } else {
            RS(tgv_row_fields)(c->u, C, H, W, c->S, i, c->half_weight, p, a, s);
        }
        for (int ch = 0; ch < C; ch++) {
            const size_t off = ch * plane + (size_t)i * W, fo = (size_t)ch * (W + 1) + 1;
            const real *obs = c->observed == NULL ? NULL : c->observed + off;
            if (p->first) {
                for (int k = 0; k < 3; k++) {
                    for (int j = 0; j < W; j++) c->m[off + k * cp + j] = c->v[off + k * cp + j] = 0.f;
                }
            }
            RS(tgv_update_row)(c->u + off, c->m + off, c->v + off, cp, c->f + off, obs, F + fo,
                               b + fo, fw, next, W, sc, step, p, i < H - 1);
        }
        if (F == a) {
            real *t = a;
            a = b;
            b = t;
        } else {
            RS(copy_n)(b, F, size);
        }
    }
}

/* Flux of the row above each chunk that has one, into its `above` buffer (before any chunk
   of the step runs). */
TVD_EXPORT void RS(tvd_boundaries)(int n, const RS(tvd_chunk) *chunks, const RS(tvd_params) *p) {
    for (int k = 0; k < n; k++) {
        const RS(tvd_chunk) *c = &chunks[k];
        if (c->r0 == 0) continue;
        real *out = (real *)c->above;
        if (p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE) {
            RS(tgv_row_fields)(c->u, c->C, c->H, c->W, c->S, c->r0 - 1, c->half_weight, p, out,
                               c->work);
            continue;
        }
        RS(row_flux)(c->u, c->C, c->H, c->W, c->S, c->r0 - 1, c->half_weight, p, out,
                 out + (size_t)c->C * c->W, c->work);
    }
}


/* One Adam step on the rows of the chunks, each taken by one of the threads that call this
   with the same counter `next` (0 before the first). */
TVD_EXPORT void RS(tvd_step)(int n, const RS(tvd_chunk) *chunks, const RS(tvd_params) *p, int *next) {
    for (int k = take(next); k < n; k = take(next)) {
        const RS(tvd_chunk) *c = &chunks[k];
        if (p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE) {
            RS(tgv_chunk_step)(c, p);
            continue;
        }
        const int C = c->C, H = c->H, W = c->W;
        const size_t plane = (size_t)H * W, cw = (size_t)C * W;
        real *a = c->work, *b = a + cw;            /* this row's and the row above's pv */
        real *ph = b + cw, *s = ph + (size_t)C * (W + 1);
        const real step = (real)(c->rate * p->decay / p->correction1);
        if (c->above != NULL) {
            RS(copy_n)(b, c->above, cw);
        } else {
            for (size_t q = 0; q < cw; q++) b[q] = 0.f;
        }
        for (int i = c->r0; i < c->r1; i++) {
            const real *pv = a, *hz = ph;
            if (i == c->r1 - 1 && c->last != NULL) {
                pv = c->last;
                hz = c->last + cw;
            } else {
                RS(row_flux)(c->u, C, H, W, c->S, i, c->half_weight, p, a, ph, s);
            }
            for (int ch = 0; ch < C; ch++) {
                const size_t off = ch * plane + (size_t)i * W;
                const real *obs = c->observed == NULL ? NULL : c->observed + off;
                if (p->first) {
                    for (int j = 0; j < W; j++) c->m[off + j] = c->v[off + j] = 0.f;
                }
                RS(update_row)(c->u + off, c->f + off, obs, c->m + off, c->v + off, pv + (size_t)ch * W,
                           b + (size_t)ch * W, hz + (size_t)ch * (W + 1) + 1, NULL, NULL, W,
                           step, p);
            }
            if (pv == a) {
                real *t = a;
                a = b;
                b = t;
            } else {
                RS(copy_n)(b, pv, cw);
            }
        }
    }
}

/* Sum of x[0..n) in eight lanes (so that it vectorises), then in double. */
TVD_CLONES
static double RS(lane_sum)(const real *R x, int n) {
    real lanes[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++) lanes[l] += x[j + l];
    }
    double total = 0.0;
    for (int l = 0; l < 8; l++) total += lanes[l];
    for (; j < n; j++) total += x[j];
    return total;
}

/* huber(t) = t - eps / 2 above eps, t^2 / (2 eps) below, in place over x[0..n). */
TVD_CLONES
static void RS(huber_row)(real *R x, int n, real eps) {
    const real half = 0.5f * eps, scale = 0.5f / eps;
    for (int j = 0; j < n; j++) { /* both sides computed: a select, which vectorises */
        const real t = x[j], above = t - half, below = t * t * scale;
        x[j] = t > eps ? above : below;
    }
}

/* The fidelity of one row of one channel, summed (out: W values of scratch), as
   DataTerm.variable_value computes it. */
TVD_CLONES
static double RS(fidelity_row)(const real *R u, const real *R f, const real *R obs,
                           real *R out, int W, const RS(tvd_params) *p) {
    const real delta = p->data_scale, scale = 0.5f / delta, half = 0.5f * delta;
    if (p->data == TVD_IMPULSE) {
        for (int j = 0; j < W; j++) {
            const real e = u[j] - f[j], a = fabs(e), inside = e * e * scale, outside = a - half;
            out[j] = a <= delta ? inside : outside;
        }
    } else if (p->data == TVD_POISSON) {
        /* The deviance of x^2: 2 (u - f + f log(f / max(u, floor))), no logarithm where
           f = 0. */
        for (int j = 0; j < W; j++) {
            const real x = u[j], y = x * x, d = f[j];
            const real t = d > 0.f ? d * log(d / (y < delta ? delta : y)) : 0.f;
            out[j] = 2.f * (y - d + t);
        }
    } else {
        for (int j = 0; j < W; j++) {
            real e = u[j] - f[j];
            out[j] = e * e;
        }
    }
    if (obs != NULL) {
        for (int j = 0; j < W; j++) out[j] *= obs[j];
    }
    return RS(lane_sum)(out, W);
}

/* The Huber function of the magnitude of a group of C channels' differences along one
   row of an image (C a constant in each caller), into s: squared_magnitude(), sqrt and
   huber_row() in one pass, the same operations on each value. */
static inline __attribute__((always_inline)) void
RS(group_huber)(const real *R dy, const real *R dx, const int C, int W, real eps, real *R s) {
    const real half = 0.5f * eps, scale = 0.5f / eps;
    for (int j = 0; j < W; j++) {
        const real t = sqrt(RS(group_square)(dy, dx, C, W, j)), above = t - half, below = t * t * scale;
        s[j] = t > eps ? above : below;
    }
}

/* The summed Huber total variation of one row from its differences (row_differences();
   dz NULL: an image), as total_variation sums it; overwrites them, and s (W values). */
TVD_CLONES
static double RS(tv_row)(real *R dz, real *R dy, real *R dx, int C, int W,
                         const RS(tvd_params) *p, real *R s) {
    const real eps = p->eps;
    double tv = 0.0;
    if (p->tv == TVD_ANISOTROPIC) {
        for (int c = 0; c < C; c++) {
            real *R a = dy + (size_t)c * W, *R b = dx + (size_t)c * (W + 1) + 1;
            double t = 0.0;
            if (dz != NULL) {
                real *R d = dz + (size_t)c * W;
                for (int j = 0; j < W; j++) d[j] = fabs(d[j]);
                RS(huber_row)(d, W, eps);
                t = RS(lane_sum)(d, W);
            }
            for (int j = 0; j < W; j++) {
                a[j] = fabs(a[j]);
                b[j] = fabs(b[j]);
            }
            RS(huber_row)(a, W, eps);
            RS(huber_row)(b, W, eps);
            tv += t + RS(lane_sum)(a, W) + RS(lane_sum)(b, W);
        }
        return tv;
    }
    const int groups = p->tv == TVD_ISOTROPIC_JOINT ? 1 : C;
    const int per_group = C / groups;
    for (int g = 0; g < groups; g++) {
        const int c0 = g * per_group, c1 = c0 + per_group;
        if (dz == NULL && per_group <= 3) {
            const real *R a = dy + (size_t)c0 * W, *R b = dx + (size_t)c0 * (W + 1);
            if (per_group == 1) RS(group_huber)(a, b, 1, W, eps, s);
            else if (per_group == 2) RS(group_huber)(a, b, 2, W, eps, s);
            else RS(group_huber)(a, b, 3, W, eps, s);
        } else {
            RS(squared_magnitude)(dz, dy, dx, c0, c1, W, s);
            for (int j = 0; j < W; j++) s[j] = sqrt(s[j]);
            RS(huber_row)(s, W, eps);
        }
        tv += RS(lane_sum)(s, W);
    }
    return tv;
}

/* The summed Huber magnitudes of a row's fields over its groups of channels (nf fields of
   grad u - w, then ns of E w, as tgv_normalise() takes them), added to first and second;
   s is W values of scratch. */
static void RS(tgv_row_huber)(const real *R P, int C, int W, int nf, int ns, unsigned twice,
                              const RS(tvd_params) *p, real *R s, double *first,
                              double *second) {
    const size_t fw = (size_t)C * (W + 1);
    const int groups = p->tv == TVD_TGV_JOINT ? 1 : C, per = C / groups;
    for (int gr = 0; gr < groups; gr++) {
        const size_t o = (size_t)gr * per * (W + 1) + 1;
        for (int order = 0; order < 2; order++) {
            const int f0 = order == 0 ? 0 : nf, f1 = order == 0 ? nf : nf + ns;
            RS(tgv_squares)(P, fw, o, per, W, f0, f1, twice, s);
            for (int j = 0; j < W; j++) s[j] = sqrt(s[j]);
            RS(huber_row)(s, W, p->eps);
            *(order == 0 ? first : second) += RS(lane_sum)(s, W);
        }
    }
}

/* The summed Huber TGV (first order plus the ratio times second order) and the summed
   fidelity of a chunk's rows of a TGV image, into tv and fidelity, as TGVWorkspace.energy
   computes them (summed in another order). */
static void RS(tgv_chunk_energy)(const RS(tvd_chunk) *c, const RS(tvd_params) *p, double *tv,
                                 double *fidelity) {
    const int C = c->C, H = c->H, W = c->W;
    const size_t plane = (size_t)H * W, fw = (size_t)C * (W + 1);
    real *P = c->work, *s = P + 5 * fw;
    const real sc = RS(tgv_scale)(c->half_weight, p);
    double first = 0.0, second = 0.0, data = 0.0;
    for (int i = c->r0; i < c->r1; i++) {
        RS(tgv_row_differences)(c->u, C, H, W, c->S, i, sc, p, P);
        RS(tgv_row_huber)(P, C, W, 2, 3, TVD_TWICE2, p, s, &first, &second);
        for (int ch = 0; ch < C; ch++) {
            const size_t off = ch * plane + (size_t)i * W;
            const real *obs = c->observed == NULL ? NULL : c->observed + off;
            data += RS(fidelity_row)(c->u + off, c->f + off, obs, P, W, p);
        }
    }
    *tv = first + (double)p->ratio * second;
    *fidelity = data;
}

/* The summed Huber total variation and the summed fidelity of each chunk's rows, into
   out[2k] and out[2k + 1], from the current values (the step's boundary buffers are not
   used; the chunk's work buffer holds a row's differences). */
TVD_EXPORT void RS(tvd_energy)(int n, const RS(tvd_chunk) *chunks, const RS(tvd_params) *p,
                               double *out, int *next) {
    for (int k = take(next); k < n; k = take(next)) {
        const RS(tvd_chunk) *c = &chunks[k];
        if (p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE) {
            RS(tgv_chunk_energy)(c, p, out + 2 * k, out + 2 * k + 1);
            continue;
        }
        const int C = c->C, H = c->H, W = c->W;
        const size_t plane = (size_t)H * W, cw = (size_t)C * W;
        real *dv = c->work, *ph = dv + cw, *s = ph + (size_t)C * (W + 1);
        double tv = 0.0, fidelity = 0.0;
        for (int i = c->r0; i < c->r1; i++) {
            RS(row_differences)(c->u, plane, NULL, 0, C, H, W, i, 1.f, p, NULL, dv, ph);
            tv += RS(tv_row)(NULL, dv, ph, C, W, p, s);
            for (int ch = 0; ch < C; ch++) {
                const size_t off = ch * plane + (size_t)i * W;
                const real *obs = c->observed == NULL ? NULL : c->observed + off;
                fidelity += RS(fidelity_row)(c->u + off, c->f + off, obs, dv, W, p);
            }
        }
        out[2 * k] = tv;
        out[2 * k + 1] = fidelity;
    }
}

/* ---------------------------------------------------------------------------------------
 * Volumes: (C, D, H, W) float32, total variation over the three axes D, H, W. A chunk is a
 * range of planes [z0, z1) of one volume, taken row by row in order. Updating a row in place
 * is safe within a chunk: a row's flux reads the row, the row below it and the same row of
 * the next plane, none of them updated yet. Across chunks it reads two planes that another
 * thread updates: the flux of the plane before a chunk (whose D part the chunk's first plane
 * needs) and of a chunk's last plane (which reads the next chunk's first plane) are computed
 * from copies of those planes made before the step (tvd_boundaries3).
 * ------------------------------------------------------------------------------------- */

typedef struct {
    real *u, *m, *v;
    const real *f;
    const real *observed;
    int C, D, H, W;
    int z0, z1;
    real half_weight;
    double rate;
    real iz;                /* inverse spacing along D (H and W: the params') */
    real *before;           /* copy of plane z0 - 1, (C, H, W); NULL when z0 == 0 */
    real *after;            /* copy of plane z1, (C, H, W); NULL when z1 == D */
    real *work;             /* tvd_work_size3(C, H, W) values */
} RS(tvd_chunk3);

/* The flux of row y of a plane of a volume (pz, py: C*W each; px: C*(W+1)), from the plane
   (channels `cs` apart) and the same row of the next plane (`ns` apart; NULL: the last). */
static void RS(row_flux3)(const real *R cur, size_t cs, const real *R nxt, size_t ns, int C,
                          int H, int W, int y, real hw, real iz, const RS(tvd_params) *p,
                          real *R pz, real *R py, real *R px, real *R s) {
    RS(row_differences)(cur, cs, nxt, ns, C, H, W, y, iz, p, pz, py, px);
    RS(flux)(pz, py, px, C, W, hw, iz, p, s);
}

/* The plane after plane z of a chunk, as a step reads it: the copy made before the step
   for the chunk's last plane (the next chunk updates that plane), NULL after the volume's
   last; its channels are *ns values apart. */
static const real *RS(next_plane)(const RS(tvd_chunk3) *c, int z, size_t *ns) {
    const size_t plane = (size_t)c->H * c->W;
    *ns = (size_t)c->D * plane;
    if (z + 1 == c->z1 && c->after != NULL) {
        *ns = plane;
        return c->after;
    }
    return z + 1 < c->D ? c->u + (size_t)(z + 1) * plane : NULL;
}

/* ---------------------------------------------------------------------------------------
 * Second-order TGV of volumes: the variable of a volume is (u, w_z / s, w_y / s, w_x / s),
 * 4 C channels of (D, H, W). The fields of a row are nine, each C (W + 1) values led by a
 * zero: grad u - w along D, H and W (pz, py, px), then E w (qzz, qzy, qzx, qyy, qyx, qxx).
 * The gradient of row y of plane z reads the fields of that row, of row y - 1 (those whose
 * adjoint runs along H) and of row y of plane z - 1 (along D: pz, qzz, qzy, qzx, kept for
 * a plane), so a chunk of planes takes them row by row as for TV, with copies of the
 * planes next to it (tvd_boundaries3) in all 4 C channels.
 * ------------------------------------------------------------------------------------- */

/* The nine differences of row y of a plane of a volume's variable (channels `cs` apart),
   from it and the same row of the next plane (`ns` apart; NULL: the last plane). */
TVD_CLONES
static void RS(tgv_row_differences3)(const real *R cur, size_t cs, const real *R nxt, size_t ns,
                                     int C, int H, int W, int y, real sc, real iz,
                                     const RS(tvd_params) *p, real *R P) {
    const size_t fw = (size_t)C * (W + 1);
    const real ih = p->ih, iw = p->iw, half = 0.5f * sc;
    for (int c = 0; c < C; c++) {
        const size_t row = (size_t)y * W, o = (size_t)c * (W + 1) + 1;
        const real *R u = cur + c * cs + row, *R wz = u + C * cs, *R wy = wz + C * cs;
        const real *R wx = wy + C * cs;
        real *R pz = P + o, *R py = pz + fw, *R px = py + fw, *R zz = px + fw, *R zy = zz + fw;
        real *R zx = zy + fw, *R yy = zx + fw, *R yx = yy + fw, *R xx = yx + fw;
        pz[-1] = py[-1] = px[-1] = zz[-1] = zy[-1] = zx[-1] = yy[-1] = yx[-1] = xx[-1] = 0.f;
        if (nxt != NULL) {
            const real *R un = nxt + c * ns + row, *R wzn = un + C * ns, *R wyn = wzn + C * ns;
            const real *R wxn = wyn + C * ns;
            for (int j = 0; j < W; j++) {
                pz[j] = (un[j] - u[j]) * iz - wz[j] * sc;
                zz[j] = ((wzn[j] - wz[j]) * iz) * sc;
                zy[j] = (wyn[j] - wy[j]) * iz;
                zx[j] = (wxn[j] - wx[j]) * iz;
            }
        } else { /* no difference along D from the last plane */
            for (int j = 0; j < W; j++) {
                pz[j] = 0.f - wz[j] * sc;
                zz[j] = zy[j] = zx[j] = 0.f;
            }
        }
        if (y < H - 1) {
            for (int j = 0; j < W; j++) {
                py[j] = (u[j + W] - u[j]) * ih - wy[j] * sc;
                zy[j] = (zy[j] + (wz[j + W] - wz[j]) * ih) * half;
                yy[j] = ((wy[j + W] - wy[j]) * ih) * sc;
                yx[j] = (wx[j + W] - wx[j]) * ih;
            }
        } else {
            for (int j = 0; j < W; j++) {
                py[j] = 0.f - wy[j] * sc;
                zy[j] = (zy[j] + 0.f) * half;
                yy[j] = yx[j] = 0.f;
            }
        }
        for (int j = 0; j < W - 1; j++) {
            px[j] = (u[j + 1] - u[j]) * iw - wx[j] * sc;
            zx[j] = (zx[j] + (wz[j + 1] - wz[j]) * iw) * half;
            yx[j] = (yx[j] + (wy[j + 1] - wy[j]) * iw) * half;
            xx[j] = ((wx[j + 1] - wx[j]) * iw) * sc;
        }
        px[W - 1] = 0.f - wx[W - 1] * sc;
        zx[W - 1] = (zx[W - 1] + 0.f) * half;
        yx[W - 1] = (yx[W - 1] + 0.f) * half;
        xx[W - 1] = 0.f;
    }
}

/* The fields of a volume's row whose adjoint runs along D, in a plane buffer's row: pz,
   qzz, qzy, qzx (fields 0, 3, 4, 5), C W values each. */
static void RS(tgv_keep_z)(real *R Z, const real *R P, int C, int W) {
    const size_t fw = (size_t)C * (W + 1);
    const int fields[4] = {0, 3, 4, 5};
    for (int k = 0; k < 4; k++) {
        for (int c = 0; c < C; c++)
            RS(copy_n)(Z + ((size_t)k * C + c) * W, P + fields[k] * fw + (size_t)c * (W + 1) + 1, W);
    }
}

/* The gradient at column j of one channel of a volume's row and Adam's update of its four
   values (x, then each field C planes, `cp` values, further). F, A: the fields of this row
   and the row above at the channel, fw apart; Z: the kept fields of the plane before at
   the channel, zw apart. `inz`, `iny`, `right`: not the last plane, row, column. */
static inline __attribute__((always_inline)) void
RS(tgv_point3)(real *R x, real *R m, real *R v, size_t cp, const real *R f, const real *R obs,
               const real *R F, const real *R A, size_t fw, const real *R Z, size_t zw, int j,
               real sc, real step, real iz, const RS(tvd_params) *p, const int inz,
               const int iny, const int right, const int masked) {
    const real ih = p->ih, iw = p->iw;
    const real *R pz = F, *R py = F + fw, *R px = F + 2 * fw, *R zz = F + 3 * fw;
    const real *R zy = F + 4 * fw, *R zx = F + 5 * fw, *R yy = F + 6 * fw, *R yx = F + 7 * fw;
    const real *R xx = F + 8 * fw;
    real r = x[j] - f[j];
    if (masked) r *= obs[j]; /* no fidelity where a value is missing */
    real gu = inz ? r - iz * pz[j] : r;
    gu = gu + iz * Z[j];
    gu = iny ? gu - ih * py[j] : gu;
    gu = gu + ih * A[fw + j];
    gu = right ? gu - iw * px[j] : gu;
    gu = gu + iw * px[j - 1];
    real gz = (0.f - pz[j]) - iz * zz[j];
    gz = gz + iz * Z[zw + j];
    gz = iny ? gz - ih * zy[j] : gz;
    gz = gz + ih * A[4 * fw + j];
    gz = right ? gz - iw * zx[j] : gz;
    gz = (gz + iw * zx[j - 1]) * sc;
    real gy = 0.f - py[j];
    gy = inz ? gy - iz * zy[j] : gy;
    gy = gy + iz * Z[2 * zw + j];
    gy = gy - ih * yy[j] + ih * A[6 * fw + j];
    gy = right ? gy - iw * yx[j] : gy;
    gy = (gy + iw * yx[j - 1]) * sc;
    real gx = 0.f - px[j];
    gx = inz ? gx - iz * zx[j] : gx;
    gx = gx + iz * Z[3 * zw + j];
    gx = iny ? gx - ih * yx[j] : gx;
    gx = gx + ih * A[7 * fw + j];
    gx = (gx - iw * xx[j] + iw * xx[j - 1]) * sc;
    RS(adam_at)(x, m, v, j, gu, step, p);
    RS(adam_at)(x + cp, m + cp, v + cp, j, gz, step, p);
    RS(adam_at)(x + 2 * cp, m + 2 * cp, v + 2 * cp, j, gy, step, p);
    RS(adam_at)(x + 3 * cp, m + 3 * cp, v + 3 * cp, j, gx, step, p);
}

static inline __attribute__((always_inline)) void
RS(tgv_row_loop3)(real *R x, real *R m, real *R v, size_t cp, const real *R f,
                  const real *R obs, const real *R F, const real *R A, size_t fw, const real *R Z,
                  size_t zw, int W, real sc, real step, real iz, const RS(tvd_params) *p,
                  const int inz, const int iny, const int masked) {
    /* The arrays do not overlap: no dependence between iterations (so that GCC vectorises
       without testing the addresses at run time). */
#pragma GCC ivdep
    for (int j = 0; j < W - 1; j++)
        RS(tgv_point3)(x, m, v, cp, f, obs, F, A, fw, Z, zw, j, sc, step, iz, p, inz, iny, 1,
                       masked);
    RS(tgv_point3)(x, m, v, cp, f, obs, F, A, fw, Z, zw, W - 1, sc, step, iz, p, inz, iny, 0,
                   masked);
}

#define TVD_ROW3(inz, iny, masked)                                                           \
    RS(tgv_row_loop3)(x, m, v, cp, f, obs, F, A, fw, Z, zw, W, sc, step, iz, &q, inz, iny, masked)

/* tgv_row_loop3() with its constants. */
TVD_CLONES
static void RS(tgv_update_row3)(real *R x, real *R m, real *R v, size_t cp, const real *R f,
                                const real *R obs, const real *R F, const real *R A, size_t fw,
                                const real *R Z, size_t zw, int W, real sc, real step, real iz,
                                const RS(tvd_params) *p, int inz, int iny) {
    const RS(tvd_params) q = *p; /* a local copy: no store in the loop can change it */
    if (obs == NULL) {
        if (inz && iny) TVD_ROW3(1, 1, 0);
        else if (inz) TVD_ROW3(1, 0, 0);
        else if (iny) TVD_ROW3(0, 1, 0);
        else TVD_ROW3(0, 0, 0);
    } else {
        if (inz && iny) TVD_ROW3(1, 1, 1);
        else if (inz) TVD_ROW3(1, 0, 1);
        else if (iny) TVD_ROW3(0, 1, 1);
        else TVD_ROW3(0, 0, 1);
    }
}
#undef TVD_ROW3

/* One Adam step on a chunk's planes of a TGV volume, as tvd_step3() makes one for TV. */
static void RS(tgv_chunk_step3)(const RS(tvd_chunk3) *c, const RS(tvd_params) *p) {
    const int C = c->C, D = c->D, H = c->H, W = c->W;
    const size_t plane = (size_t)H * W, volume = (size_t)D * plane, cp = (size_t)C * volume;
    const size_t fw = (size_t)C * (W + 1), zw = (size_t)C * W, zrow = 4 * zw;
    real *Z = c->work;                   /* the kept fields of the plane before, row by row */
    real *F = Z + (size_t)H * zrow, *A = F + 9 * fw, *s = A + 9 * fw;
    const real step = (real)(c->rate * p->decay / p->correction1);
    const real hw = c->half_weight, sc = RS(tgv_scale)(hw, p);
    /* The plane before the chunk, from its copy and this chunk's first plane (not updated
       yet). */
    for (int y = 0; y < H; y++) {
        real *row = Z + (size_t)y * zrow;
        if (c->before == NULL) {
            for (size_t q = 0; q < zrow; q++) row[q] = 0.f;
            continue;
        }
        RS(tgv_row_differences3)(c->before, plane, c->u + (size_t)c->z0 * plane, volume, C, H, W,
                                 y, sc, c->iz, p, F);
        RS(tgv_normalise)(F, C, W, 3, 6, TVD_TWICE3, hw, p, s);
        RS(tgv_keep_z)(row, F, C, W);
    }
    for (int z = c->z0; z < c->z1; z++) {
        const real *cur = c->u + (size_t)z * plane;
        size_t ns;
        const real *nxt = RS(next_plane)(c, z, &ns);
        for (size_t q = 0; q < 9 * fw; q++) A[q] = 0.f;
        for (int y = 0; y < H; y++) {
            real *row = Z + (size_t)y * zrow;
            RS(tgv_row_differences3)(cur, volume, nxt, ns, C, H, W, y, sc, c->iz, p, F);
            RS(tgv_normalise)(F, C, W, 3, 6, TVD_TWICE3, hw, p, s);
            for (int ch = 0; ch < C; ch++) {
                const size_t off = ch * volume + (size_t)z * plane + (size_t)y * W;
                const size_t fo = (size_t)ch * (W + 1) + 1;
                const real *obs = c->observed == NULL ? NULL : c->observed + off;
                if (p->first) {
                    for (int k = 0; k < 4; k++) {
                        for (int j = 0; j < W; j++)
                            c->m[off + k * cp + j] = c->v[off + k * cp + j] = 0.f;
                    }
                }
                RS(tgv_update_row3)(c->u + off, c->m + off, c->v + off, cp, c->f + off, obs,
                                    F + fo, A + fo, fw, row + (size_t)ch * W, zw, W, sc, step,
                                    c->iz, p, z < D - 1, y < H - 1);
            }
            RS(tgv_keep_z)(row, F, C, W);
            real *t = F;
            F = A;
            A = t;
        }
    }
}

/* The summed Huber TGV and fidelity of a chunk's planes of a TGV volume, as
   tgv_chunk_energy(). */
static void RS(tgv_chunk_energy3)(const RS(tvd_chunk3) *c, const RS(tvd_params) *p, double *tv,
                                  double *fidelity) {
    const int C = c->C, D = c->D, H = c->H, W = c->W;
    const size_t plane = (size_t)H * W, volume = (size_t)D * plane, fw = (size_t)C * (W + 1);
    real *P = c->work, *s = P + 9 * fw;
    const real sc = RS(tgv_scale)(c->half_weight, p);
    double first = 0.0, second = 0.0, data = 0.0;
    for (int z = c->z0; z < c->z1; z++) {
        const real *cur = c->u + (size_t)z * plane;
        const real *nxt = z + 1 < D ? cur + plane : NULL;
        for (int y = 0; y < H; y++) {
            RS(tgv_row_differences3)(cur, volume, nxt, volume, C, H, W, y, sc, c->iz, p, P);
            RS(tgv_row_huber)(P, C, W, 3, 6, TVD_TWICE3, p, s, &first, &second);
            for (int ch = 0; ch < C; ch++) {
                const size_t off = ch * volume + (size_t)z * plane + (size_t)y * W;
                const real *obs = c->observed == NULL ? NULL : c->observed + off;
                data += RS(fidelity_row)(c->u + off, c->f + off, obs, P, W, p);
            }
        }
    }
    *tv = first + (double)p->ratio * second;
    *fidelity = data;
}

/* Copies of the planes next to each chunk boundary, before any chunk of the step runs (of
   all 4 C channels of a TGV volume's variable). */
TVD_EXPORT void RS(tvd_boundaries3)(int n, const RS(tvd_chunk3) *chunks, const RS(tvd_params) *p) {
    const int tgv = p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE;
    for (int k = 0; k < n; k++) {
        const RS(tvd_chunk3) *c = &chunks[k];
        const size_t plane = (size_t)c->H * c->W, volume = (size_t)c->D * plane;
        for (int ch = 0; ch < (tgv ? 4 : 1) * c->C; ch++) {
            if (c->before != NULL)
                RS(copy_n)(c->before + ch * plane, c->u + ch * volume + (size_t)(c->z0 - 1) * plane,
                     plane);
            if (c->after != NULL)
                RS(copy_n)(c->after + ch * plane, c->u + ch * volume + (size_t)c->z1 * plane, plane);
        }
    }
}

/* One Adam step on the planes of the chunks, shared out through `next` as tvd_step. */
TVD_EXPORT void RS(tvd_step3)(int n, const RS(tvd_chunk3) *chunks, const RS(tvd_params) *p, int *next) {
    for (int k = take(next); k < n; k = take(next)) {
        const RS(tvd_chunk3) *c = &chunks[k];
        if (p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE) {
            RS(tgv_chunk_step3)(c, p);
            continue;
        }
        const int C = c->C, D = c->D, H = c->H, W = c->W;
        const size_t plane = (size_t)H * W, volume = (size_t)D * plane, cw = (size_t)C * W;
        real *prev = c->work;                /* pz of the plane before, (C, H, W) */
        real *pz = prev + (size_t)C * plane; /* this row's */
        real *py = pz + cw, *above = py + cw, *px = above + cw;
        real *s = px + (size_t)C * (W + 1);
        const real step = (real)(c->rate * p->decay / p->correction1);
        const real hw = c->half_weight;
        /* The D flux of the plane before the chunk, from its copy and this chunk's first
           plane (not updated yet). */
        for (int y = 0; y < H; y++) {
            if (c->before == NULL) {
                for (int ch = 0; ch < C; ch++)
                    for (int j = 0; j < W; j++) prev[ch * plane + (size_t)y * W + j] = 0.f;
                continue;
            }
            RS(row_flux3)(c->before, plane, c->u + (size_t)c->z0 * plane, volume, C, H, W, y, hw,
                      c->iz, p, pz, py, px, s);
            for (int ch = 0; ch < C; ch++)
                RS(copy_n)(prev + ch * plane + (size_t)y * W, pz + (size_t)ch * W, W);
        }
        for (int z = c->z0; z < c->z1; z++) {
            const real *cur = c->u + (size_t)z * plane;
            size_t ns;
            const real *nxt = RS(next_plane)(c, z, &ns);
            for (size_t q = 0; q < cw; q++) above[q] = 0.f;
            for (int y = 0; y < H; y++) {
                RS(row_flux3)(cur, volume, nxt, ns, C, H, W, y, hw, c->iz, p, pz, py, px, s);
                for (int ch = 0; ch < C; ch++) {
                    const size_t off = ch * volume + (size_t)z * plane + (size_t)y * W;
                    const real *obs = c->observed == NULL ? NULL : c->observed + off;
                    real *before_row = prev + ch * plane + (size_t)y * W;
                    if (p->first) {
                        for (int j = 0; j < W; j++) c->m[off + j] = c->v[off + j] = 0.f;
                    }
                    RS(update_row)(c->u + off, c->f + off, obs, c->m + off, c->v + off,
                               py + (size_t)ch * W, above + (size_t)ch * W,
                               px + (size_t)ch * (W + 1) + 1, pz + (size_t)ch * W, before_row,
                               W, step, p);
                    RS(copy_n)(before_row, pz + (size_t)ch * W, W);
                }
                real *t = py;
                py = above;
                above = t;
            }
        }
    }
}

/* The summed Huber total variation and fidelity of each chunk's planes, as tvd_energy. */
TVD_EXPORT void RS(tvd_energy3)(int n, const RS(tvd_chunk3) *chunks, const RS(tvd_params) *p,
                                double *out, int *next) {
    for (int k = take(next); k < n; k = take(next)) {
        const RS(tvd_chunk3) *c = &chunks[k];
        if (p->tv == TVD_TGV_JOINT || p->tv == TVD_TGV_SEPARATE) {
            RS(tgv_chunk_energy3)(c, p, out + 2 * k, out + 2 * k + 1);
            continue;
        }
        const int C = c->C, D = c->D, H = c->H, W = c->W;
        const size_t plane = (size_t)H * W, volume = (size_t)D * plane, cw = (size_t)C * W;
        real *dz = c->work + (size_t)C * plane, *dy = dz + cw, *dx = dy + cw;
        real *s = dx + (size_t)C * (W + 1);
        double tv = 0.0, fidelity = 0.0;
        for (int z = c->z0; z < c->z1; z++) {
            const real *cur = c->u + (size_t)z * plane;
            const real *nxt = z + 1 < D ? cur + plane : NULL;
            for (int y = 0; y < H; y++) {
                RS(row_differences)(cur, volume, nxt, volume, C, H, W, y, c->iz, p, dz, dy, dx);
                tv += RS(tv_row)(dz, dy, dx, C, W, p, s);
                for (int ch = 0; ch < C; ch++) {
                    const size_t off = ch * volume + (size_t)z * plane + (size_t)y * W;
                    const real *obs = c->observed == NULL ? NULL : c->observed + off;
                    fidelity += RS(fidelity_row)(c->u + off, c->f + off, obs, dz, W, p);
                }
            }
        }
        out[2 * k] = tv;
        out[2 * k + 1] = fidelity;
    }
}

typedef struct {
    int n;
    const void *chunks;
    const RS(tvd_params) *p;
    double *out;
    int volume; /* tvd_chunk3 chunks, else tvd_chunk */
    int next;
} RS(tvd_job);

static void RS(step_job)(void *arg) {
    RS(tvd_job) *j = arg;
    if (j->volume) RS(tvd_step3)(j->n, j->chunks, j->p, &j->next);
    else RS(tvd_step)(j->n, j->chunks, j->p, &j->next);
}

static void RS(energy_job)(void *arg) {
    RS(tvd_job) *j = arg;
    if (j->volume) RS(tvd_energy3)(j->n, j->chunks, j->p, j->out, &j->next);
    else RS(tvd_energy)(j->n, j->chunks, j->p, j->out, &j->next);
}

/* Adam's steps k0..k1 of an image batch, the per-step coefficients computed as
   kernel.FusedSteps.step computes them in Python (the same libm pow and sqrt in double).
   `counters` holds 2 (k1 - k0 + 1) zeros, two for each step. */
typedef struct {
    int n, bn;
    const RS(tvd_chunk) *chunks, *bchunks;
    const RS(tvd_params) *p;
    int k0, k1;
    double decay, beta1, beta2;
    tvd_barrier_fn barrier;
    int *counters;
} RS(tvd_steps_job);

/* The coefficients of step k in q. */
static void RS(set_step)(RS(tvd_params) *q, const RS(tvd_steps_job) *j, int k) {
    q->decay = pow(j->decay, (double)(k - 1));
    q->correction1 = 1.0 - pow(j->beta1, (double)k);
    q->corr2 = (real)sqrt(1.0 - pow(j->beta2, (double)k));
    q->first = k == 1;
}

/* Each step as tvd_boundaries then tvd_step, the threads meeting at `barrier` after each
   part. */
static void RS(steps_job)(void *arg) {
    const RS(tvd_steps_job) *j = arg;
    RS(tvd_params) q = *j->p; /* this thread's copy: the step's coefficients */
    for (int k = j->k0; k <= j->k1; k++) {
        int *next = j->counters + 2 * (k - j->k0);
        RS(set_step)(&q, j, k);
        for (int b = take(next); b < j->bn; b = take(next)) RS(tvd_boundaries)(1, j->bchunks + b, &q);
        j->barrier();
        RS(tvd_step)(j->n, j->chunks, &q, next + 1);
        j->barrier();
    }
}

/* Chunks that are whole images (no boundaries): each thread takes an image and makes all
   its steps while the image is in the thread's cache, waiting for no other thread. */
static void RS(images_job)(void *arg) {
    const RS(tvd_steps_job) *j = arg;
    RS(tvd_params) q = *j->p;
    for (int c = take(j->counters); c < j->n; c = take(j->counters)) {
        for (int k = j->k0; k <= j->k1; k++) {
            int next = 0;
            RS(set_step)(&q, j, k);
            RS(tvd_step)(1, j->chunks + c, &q, &next);
        }
    }
}

/* The steps on `threads` threads of a parallel region of `parallel`, or on the calling
   thread alone where `parallel` is NULL: image by image where no chunk has a boundary
   (bn == 0: every chunk a whole image), else step by step, the threads meeting at
   `barrier` (GOMP_barrier of the same runtime; unused image by image). */
TVD_EXPORT void RS(tvd_steps)(tvd_parallel_fn parallel, tvd_barrier_fn barrier, unsigned threads,
                              int n, const RS(tvd_chunk) *chunks, int bn,
                              const RS(tvd_chunk) *bchunks, const RS(tvd_params) *p, int k0,
                              int k1, double decay, double beta1, double beta2, int *counters) {
    RS(tvd_steps_job) job = {n, bn, chunks, bchunks, p, k0, k1, decay, beta1, beta2,
                             parallel == NULL ? tvd_no_barrier : barrier, counters};
    void (*run)(void *) = bn == 0 ? RS(images_job) : RS(steps_job);
    if (parallel == NULL) run(&job);
    else parallel(run, &job, threads, 0);
}

/* tvd_step, and tvd_energy, on `threads` threads of a parallel region of `parallel`; with
   `volume`, tvd_step3 and tvd_energy3 on tvd_chunk3 chunks. */
TVD_EXPORT void RS(tvd_step_parallel)(tvd_parallel_fn parallel, unsigned threads, int volume, int n,
                                  const void *chunks, const RS(tvd_params) *p) {
    RS(tvd_job) job = {n, chunks, p, NULL, volume, 0};
    parallel(RS(step_job), &job, threads, 0);
}

TVD_EXPORT void RS(tvd_energy_parallel)(tvd_parallel_fn parallel, unsigned threads, int volume,
                                    int n, const void *chunks, const RS(tvd_params) *p,
                                    double *out) {
    RS(tvd_job) job = {n, chunks, p, out, volume, 0};
    parallel(RS(energy_job), &job, threads, 0);
}

#undef TVD_UPDATE
#undef TVD_UPDATE_DATA

/* Values [j0, j1) of a 3x3 colour transform of `batch` images of three planes of n values
   each: out_o = (m[o][0] x_0 + m[o][1] x_1) + m[o][2] x_2, summed in that order (as
   tvdenoise.colour states it). */
TVD_CLONES
static void RS(colour_range)(const real *R x, real *R out, long long batch, long long n,
                             long long j0, long long j1, const real *R m) {
    const real a0 = m[0], a1 = m[1], a2 = m[2], b0 = m[3], b1 = m[4], b2 = m[5];
    const real c0 = m[6], c1 = m[7], c2 = m[8];
    for (long long b = 0; b < batch; b++) {
        const real *R x0 = x + 3 * n * b, *R x1 = x0 + n, *R x2 = x1 + n;
        real *R o0 = out + 3 * n * b, *R o1 = o0 + n, *R o2 = o1 + n;
        for (long long j = j0; j < j1; j++) {
            const real p = x0[j], q = x1[j], r = x2[j];
            o0[j] = (a0 * p + a1 * q) + a2 * r;
            o1[j] = (b0 * p + b1 * q) + b2 * r;
            o2[j] = (c0 * p + c1 * q) + c2 * r;
        }
    }
}

typedef struct {
    const real *x;
    real *out;
    long long batch, n;
    const real *m;
    int parts;
    int next;
} RS(tvd_colour_job);

static void RS(colour_job)(void *arg) {
    RS(tvd_colour_job) *j = arg;
    for (int k = take(&j->next); k < j->parts; k = take(&j->next)) {
        RS(colour_range)(j->x, j->out, j->batch, j->n, j->n * k / j->parts,
                         j->n * (k + 1) / j->parts, j->m);
    }
}

/* The colour transform of colour_range() over all values, in `parts` ranges shared by
   `threads` threads of a parallel region of `parallel` (or by the calling thread alone
   where `parallel` is NULL): a large image's output is new memory, and the page faults of
   writing it are shared out too. */
TVD_EXPORT void RS(tvd_colour)(tvd_parallel_fn parallel, unsigned threads, const real *x,
                               real *out, long long batch, long long n, const real *m,
                               int parts) {
    RS(tvd_colour_job) job = {x, out, batch, n, m, parts, 0};
    if (parallel == NULL) RS(colour_job)(&job);
    else parallel(RS(colour_job), &job, threads, 0);
}
