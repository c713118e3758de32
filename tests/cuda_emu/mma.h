/* tests/cuda_emu/mma.h - the warp matrix operations (nvcuda::wmma) of the
 * CPU emulator, for 16 x 16 x 16 tiles of __nv_bfloat16 with float
 * accumulators: what backends/cuda/cuda_attention_wmma.cu uses.
 *
 * On the GPU a fragment spreads its tile over the warp's 32 lanes in an
 * unspecified way, and every operation is a collective of the warp. Here
 * every lane's fragment holds the whole tile, row by row (num_elements =
 * 256), and each lane does every operation on its own copy: the same
 * results for any code that never depends on which lane holds which
 * element, the only code the real API allows.
 *
 * store_matrix_sync writes only the calling lane's share of the tile
 * (elements i with i % 32 == lane), as on a GPU each lane stores its own
 * part: a lane that reads the stored tile before the others have stored
 * theirs, with no __syncwarp between, reads stale values here too. No
 * operation is a barrier (on a GPU none orders memory between lanes).
 *
 * The API's rules the kernels could break unseen are checked: every lane
 * of the warp makes the same operations with the same pointer and stride
 * (compared when the warp next meets: mhub_emu::warp_collective), the
 * pointer 32-byte aligned and the stride a multiple of 16 bytes. A
 * misaligned operand stops the test with a message (a misaligned-address
 * fault on a GPU); diverging lanes fail the launch.
 *
 * mma_sync multiplies the bf16 inputs exactly (a product of two bf16
 * values fits an f32) and adds in f32, k in order, to the accumulator's
 * element; the tensor cores add in another order (and may keep more bits
 * within one instruction), so results agree to f32 rounding, not in
 * every bit. */
#ifndef MHUB_CUDA_EMU_MMA_H
#define MHUB_CUDA_EMU_MMA_H

#ifndef MHUB_CUDA_EMU
#error "tests/cuda_emu/ stands in for the CUDA toolkit only in the emulator build (-DMHUB_CUDA_EMU)"
#endif

#include <cstdio>
#include <cstdlib>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a;
struct matrix_b;
struct accumulator;
struct row_major;
struct col_major;

enum layout_t { mem_row_major, mem_col_major };

namespace detail {

template <class Layout> struct layout_of;
template <> struct layout_of<row_major> {
    static constexpr layout_t value = mem_row_major;
};
template <> struct layout_of<col_major> {
    static constexpr layout_t value = mem_col_major;
};

/* element (r, c) of a tile stored with leading dimension ldm */
template <class T>
inline T &at(T *p, unsigned r, unsigned c, unsigned ldm, layout_t layout)
{
    return layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

/* The lane's record of a warp operation on memory at p (stride bytes
 * apart); a misaligned operand stops the test. */
inline void warp_collective(const void *p, unsigned stride_bytes, const char *op)
{
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a % 32 != 0 || stride_bytes % 16 != 0) {
        std::fprintf(stderr, "cuda emulator: wmma::%s with pointer %p and a row stride of %u "
                     "bytes: the pointer must be 32-byte aligned and the stride a multiple of "
                     "16 bytes\n", op, p, stride_bytes);
        std::abort(); /* a misaligned-address fault on the GPU */
    }
    mhub_emu::warp_collective(op, p, stride_bytes);
}

} // namespace detail

/* Only 16 x 16 x 16 tiles exist here. */
template <class Use, int M, int N, int K, class T, class Layout = void> class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16 x 16 x 16 tiles only");

  public:
    static constexpr int num_elements = 256;
    T x[num_elements]; /* the tile, row by row */
};

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, T value)
{
    for (int i = 0; i < 256; i++)
        f.x[i] = value;
}

/* matrix_a and matrix_b: the layout is the fragment's own. */
template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> &f,
                             const __nv_bfloat16 *p, unsigned ldm)
{
    const layout_t layout = detail::layout_of<Layout>::value;
    for (unsigned r = 0; r < 16; r++)
        for (unsigned c = 0; c < 16; c++)
            f.x[r * 16 + c] = detail::at(p, r, c, ldm, layout);
    detail::warp_collective(p, ldm * (unsigned)sizeof *p, "load_matrix_sync");
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                             unsigned ldm, layout_t layout)
{
    for (unsigned r = 0; r < 16; r++)
        for (unsigned c = 0; c < 16; c++)
            f.x[r * 16 + c] = detail::at(p, r, c, ldm, layout);
    detail::warp_collective(p, ldm * (unsigned)sizeof *p, "load_matrix_sync");
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t layout)
{
    for (unsigned r = 0; r < 16; r++)
        for (unsigned c = 0; c < 16; c++)
            if ((r * 16 + c) % 32 == mhub_emu::lane_id())
                detail::at(p, r, c, ldm, layout) = f.x[r * 16 + c];
    detail::warp_collective(p, ldm * (unsigned)sizeof *p, "store_matrix_sync");
}

/* d = a b + c; d may be c. */
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> &a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c)
{
    float out[256];
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 16; n++) {
            float sum = c.x[r * 16 + n];
            for (int k = 0; k < 16; k++)
                sum += __bfloat162float(a.x[r * 16 + k]) * __bfloat162float(b.x[k * 16 + n]);
            out[r * 16 + n] = sum;
        }
    for (int i = 0; i < 256; i++)
        d.x[i] = out[i];
    mhub_emu::warp_collective("mma_sync", nullptr, 0);
}

} // namespace wmma
} // namespace nvcuda

#endif
