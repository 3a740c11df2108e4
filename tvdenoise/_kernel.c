/*
 * The Adam solver's iteration for 2-D and 3-D total variation in one pass over memory (CPU).
 *
 * PyTorch computes an iteration of tvdenoise.solver as some twenty operations, each a pass
 * over image-sized arrays. Here one pass, row by row, forms the differences of a row, its
 * flux (the differences over the Huber-smoothed gradient magnitude, times half the weight),
 * the energy gradient from the flux of this row and the one above (in a volume, also of the
 * same row of the plane before), and Adam's update of the row, while the row and its
 * neighbours are in the cache. The arithmetic is that of tvdenoise.solver._Workspace.gradient
 * and torch._fused_adam_, in float32 or float64: the body, _kernel_body.h, is compiled once
 * for each type. Only the order of a few additions differs.
 *
 * Second-order TGV (tvdenoise.tgv.TGVWorkspace) takes the same pass over an image or a
 * volume and its vector field, whose rows need the same neighbours (see the body's TGV
 * sections).
 *
 * Images are (C, H, W) planes. A chunk is a range of rows [r0, r1) of one image; the
 * threads take chunks from a shared counter. Chunks of one image may run in parallel: the
 * flux of the row above a chunk, and of a chunk's last row, depend on rows of the
 * neighbouring chunk, which that chunk updates in place; they are computed from the values
 * before the step (tvd_boundaries) before the chunks start, and given to both chunks.
 * Volumes are cut into ranges of planes in the same way (tvd_step3; see the body).
 *
 * Loaded with ctypes (tvdenoise/kernel.py), which releases the GIL during a call; it is no
 * Python extension module and uses no Python API. The threads that share a step are either
 * the caller's, each calling tvd_step with one counter, or those of the OpenMP runtime that
 * PyTorch loaded (tvd_step_parallel), whose entry point the loader passes in. The steps
 * between two energy checks of the solver run in one call (tvd_steps): one parallel region,
 * whose threads meet at the runtime's barrier after each step's boundaries and rows, in
 * place of a call and a region per step.
 */
#include <stddef.h>
#include <tgmath.h>

#define R __restrict__

/* Build the hot functions for AVX2 + FMA as well as the baseline; the loader picks. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define TVD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TVD_CLONES
#endif

#if defined(_WIN32)
#define TVD_EXPORT __declspec(dllexport)
#else
#define TVD_EXPORT __attribute__((visibility("default")))
#endif

/* The regularisers' codes, as their kernel_form() methods give them (tvdenoise/tv.py,
   tvdenoise/tgv.py), and the data terms' (tvdenoise/fidelity.py). */
enum {
    TVD_ISOTROPIC_JOINT = 0,
    TVD_ISOTROPIC_SEPARATE = 1,
    TVD_ANISOTROPIC = 2,
    TVD_TGV_JOINT = 3,   /* second-order TGV of images, one magnitude for all channels */
    TVD_TGV_SEPARATE = 4 /* and one per channel */
};
enum { TVD_GAUSSIAN = 0, TVD_IMPULSE = 1, TVD_POISSON = 2 };

/* The next chunk for the calling thread: threads take chunks from a shared counter, so
   that one the system slows down takes fewer. */
static int take(int *next) { return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED); }

static size_t flux_size(int C, int W) { return (size_t)C * W + (size_t)C * (W + 1); }

/* A parallel region of the OpenMP runtime: GOMP_parallel(fn, data, threads, flags), which GNU
   libgomp (GCC 4.9 on) and LLVM's libomp both export. The kernel runs its threads there,
   on PyTorch's own team, rather than on threads of its own: after each of its operations
   PyTorch's threads go on spinning for their next region, and would take the cores that
   threads of the kernel's own need. */
typedef void (*tvd_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
/* GOMP_barrier() of the same runtime: the threads of the region wait for each other. */
typedef void (*tvd_barrier_fn)(void);
static void tvd_no_barrier(void) {}

/* The iteration in float32 and in float64: the same code, exported as name_f32 and name_f64. */
#define real float
#define RS(name) name##_f32
#include "_kernel_body.h"
#undef real
#undef RS

#define real double
#define RS(name) name##_f64
#include "_kernel_body.h"
#undef real
#undef RS

/* Values of `work` a chunk needs, and of a boundary's flux buffer. */
TVD_EXPORT size_t tvd_work_size(int C, int W) { return 2 * (size_t)C * W + (size_t)C * (W + 1) + W; }
TVD_EXPORT size_t tvd_flux_size(int C, int W) { return flux_size(C, W); }
/* Values of `work` a volume's chunk needs. */
TVD_EXPORT size_t tvd_work_size3(int C, int H, int W) {
    return (size_t)C * H * W + 3 * (size_t)C * W + (size_t)C * (W + 1) + W;
}
/* The same for TGV: two rows of five fields (tgv_row_fields), a row of scratch and the
   columns' neighbours (tgv_point); and a boundary's five fields. */
TVD_EXPORT size_t tvd_tgv_work_size(int C, int W) {
    return 10 * (size_t)C * (W + 1) + 2 * (size_t)W + 2;
}
TVD_EXPORT size_t tvd_tgv_flux_size(int C, int W) { return 5 * (size_t)C * (W + 1); }
/* For a TGV volume: the kept fields of a plane (4 C H W), two rows of nine fields and a
   row of scratch. */
TVD_EXPORT size_t tvd_tgv_work_size3(int C, int H, int W) {
    return 4 * (size_t)C * H * W + 18 * (size_t)C * (W + 1) + W;
}
