/* synthetic.c - the built-in classification task (see synthetic.h).
 *
 * Features x ~ N(0, 1) at RNG stream "synthetic.x", index = sample *
 * features + j. The teacher is a fixed random two-layer net
 * label = argmax(W2 gelu(W1 x)); its weights come from streams
 * "synthetic.w1" / "synthetic.w2", with min(2 * features, 64) hidden
 * units. Ties (practically impossible) go to the lowest class. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/rng.h"
#include "mhub/synthetic.h"

static float gelu_ref(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
}

mhub_status mhub_synthetic_init(mhub_synthetic_task *task, int features, int classes,
                                uint64_t seed)
{
    if (!task)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "task is NULL");
    memset(task, 0, sizeof *task);
    if (features < 1 || features > 1 << 20 || classes < 2 || classes > 1 << 16)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "features = %d must be in [1, 2^20], classes = %d in [2, 2^16]",
                          features, classes);
    task->features = features;
    task->classes = classes;
    /* a narrow teacher keeps labelling cheap next to the model being
     * trained (64 x features multiply-adds per sample) */
    task->teacher_hidden = features < 32 ? 2 * features : 64;
    task->seed = seed;
    size_t n1 = (size_t)task->teacher_hidden * (size_t)features;
    size_t n2 = (size_t)classes * (size_t)task->teacher_hidden;
    task->w1 = malloc(n1 * sizeof *task->w1);
    task->w2 = malloc(n2 * sizeof *task->w2);
    task->scratch = malloc((size_t)task->teacher_hidden * sizeof *task->scratch);
    if (!task->w1 || !task->w2 || !task->scratch) {
        mhub_synthetic_free(task);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "teacher weights");
    }
    mhub_rng_fill_normal(task->w1, (int64_t)n1, seed, mhub_rng_stream_id("synthetic.w1"), 0,
                         0.0f, 1.0f / sqrtf((float)features));
    mhub_rng_fill_normal(task->w2, (int64_t)n2, seed, mhub_rng_stream_id("synthetic.w2"), 0,
                         0.0f, 1.0f / sqrtf((float)task->teacher_hidden));
    return MHUB_OK;
}

void mhub_synthetic_free(mhub_synthetic_task *task)
{
    if (!task)
        return;
    free(task->w1);
    free(task->w2);
    free(task->scratch);
    task->w1 = task->w2 = task->scratch = NULL;
}

static int32_t teacher_label(const mhub_synthetic_task *t, const float *x, float *hidden)
{
    for (int h = 0; h < t->teacher_hidden; h++) {
        const float *row = t->w1 + (size_t)h * (size_t)t->features;
        float s = 0;
        for (int j = 0; j < t->features; j++)
            s += row[j] * x[j];
        hidden[h] = gelu_ref(s);
    }
    int32_t best = 0;
    float best_score = -INFINITY;
    for (int c = 0; c < t->classes; c++) {
        const float *row = t->w2 + (size_t)c * (size_t)t->teacher_hidden;
        float s = 0;
        for (int h = 0; h < t->teacher_hidden; h++)
            s += row[h] * hidden[h];
        if (s > best_score) {
            best_score = s;
            best = c;
        }
    }
    return best;
}

mhub_status mhub_synthetic_batch(mhub_synthetic_task *task, uint64_t first,
                                 int64_t count, float *x, int32_t *y)
{
    if (!task || !task->w1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "task is NULL or not initialised");
    if (count < 0 || (count > 0 && (!x || !y)))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "count = %lld with x or y NULL",
                          (long long)count);
    uint64_t stream = mhub_rng_stream_id("synthetic.x");
    for (int64_t i = 0; i < count; i++) {
        float *xi = x + i * task->features;
        mhub_rng_fill_normal(xi, task->features, task->seed, stream,
                             (first + (uint64_t)i) * (uint64_t)task->features, 0.0f, 1.0f);
        y[i] = teacher_label(task, xi, task->scratch);
    }
    return MHUB_OK;
}
