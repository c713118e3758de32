/* synthetic.h - a built-in, deterministic classification task.
 *
 * Sample i of the task is a pure function of (seed, i): its features are
 * standard normal draws from the counter-based RNG, and its label is the
 * class whose row of a hidden "teacher" matrix T[classes, features] (also
 * drawn from the RNG) gives the largest score, argmax_c (T x)_c, with the
 * teacher applied to a GELU of a second random projection so the task is
 * not linearly separable. Any rank can produce any slice of any batch, so
 * a job's data is independent of its world size. */
#ifndef MHUB_SYNTHETIC_H
#define MHUB_SYNTHETIC_H

#include <stdint.h>

#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_synthetic_task {
    int features;     /* input width */
    int classes;      /* number of labels */
    int teacher_hidden; /* width of the teacher's hidden layer */
    uint64_t seed;
    float *w1;        /* teacher [teacher_hidden, features] */
    float *w2;        /* teacher [classes, teacher_hidden] */
    float *scratch;   /* teacher_hidden floats, reused by every batch */
} mhub_synthetic_task;

mhub_status mhub_synthetic_init(mhub_synthetic_task *task, int features, int classes,
                                uint64_t seed);
void mhub_synthetic_free(mhub_synthetic_task *task);

/* Samples [first, first + count): x[count, features] (host memory) and
 * labels y[count]. */
mhub_status mhub_synthetic_batch(mhub_synthetic_task *task, uint64_t first,
                                 int64_t count, float *x, int32_t *y);

#ifdef __cplusplus
}
#endif
#endif
