/* train_mlp.c - the smallest complete use of libmhub: build a backend and
 * an MLP, train it with SGD on the built-in synthetic task, print the loss.
 *
 *   cc train_mlp.c $(pkg-config --cflags --libs mhub) -o train_mlp
 *
 * It exits non-zero unless the loss at least halves, so the test suite runs
 * it as a check that the public headers are enough to train a model. */
#include <stdio.h>
#include <stdlib.h>

#include <mhub/mhub.h>

#define CHECK(expr)                                                                  \
    do {                                                                             \
        mhub_status s_ = (expr);                                                     \
        if (s_ != MHUB_OK) {                                                         \
            fprintf(stderr, "%s failed: %s\n", #expr, mhub_last_error());            \
            return EXIT_FAILURE;                                                     \
        }                                                                            \
    } while (0)

enum { FEATURES = 16, CLASSES = 4, BATCH = 32, STEPS = 200 };

int main(void)
{
    mhub_backend *be;
    mhub_synthetic_task task;
    mhub_mlp *model;
    mhub_sgd *opt;
    mhub_mlp_config cfg = {.inputs = FEATURES, .num_hidden = 1, .hidden = {64},
                           .classes = CLASSES};
    mhub_sgd_config sgd = {.lr = 0.05f, .momentum = 0.9f};

    CHECK(mhub_cpu_backend_create(NULL, &be));
    CHECK(mhub_synthetic_init(&task, FEATURES, CLASSES, 7));
    CHECK(mhub_mlp_create(&cfg, be, BATCH, 7, &model));
    CHECK(mhub_sgd_create(mhub_mlp_params(model), be, &sgd, &opt));

    /* CPU backend memory is host memory, so the batch can be filled in place */
    static float x[BATCH * FEATURES];
    static int32_t y[BATCH];
    float loss = 0, first = 0;
    for (int step = 0; step < STEPS; step++) {
        CHECK(mhub_synthetic_batch(&task, (uint64_t)step * BATCH, BATCH, x, y));
        CHECK(mhub_param_list_zero_grad(mhub_mlp_params(model)));
        CHECK(mhub_mlp_forward(model, x, y, BATCH, &loss));
        CHECK(mhub_mlp_backward(model, 1.0f / BATCH)); /* mean over the batch */
        CHECK(mhub_sgd_step(opt));
        if (step == 0)
            first = loss;
        if (step % 50 == 0 || step == STEPS - 1)
            printf("step %3d  loss %.4f\n", step, (double)loss);
    }
    mhub_sgd_free(opt);
    mhub_mlp_free(model);
    mhub_synthetic_free(&task);
    mhub_backend_free(be);
    if (!(loss < 0.5f * first)) {
        fprintf(stderr, "loss did not halve: %.4f -> %.4f\n", (double)first, (double)loss);
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
