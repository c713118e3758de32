/* test_mlp.c - the MLP's whole gradient against central finite differences
 * of an independent double-precision forward; grad-ready order; training
 * on the synthetic task; SGD; meta models; bad input. */
#include <string.h>

#include "testutil.h"

static mhub_backend *be;

static void setup(void) { CK_OK(mhub_cpu_backend_create(NULL, &be)); }
static void teardown(void)
{
    mhub_backend_free(be);
    be = NULL;
}

/* ---- a double-precision reference forward, written from the math ---- */
static double gelu_d(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* Mean cross-entropy of the MLP whose parameters are given in double, in
 * the model's parameter order (W0, b0, W1, b1, ...). */
static double reference_loss(const mhub_mlp_config *cfg, double **params, const float *x,
                             const int32_t *y, int rows)
{
    int widths[MHUB_MLP_MAX_HIDDEN + 2];
    int layers = cfg->num_hidden + 1;
    widths[0] = cfg->inputs;
    for (int i = 0; i < cfg->num_hidden; i++)
        widths[i + 1] = cfg->hidden[i];
    widths[layers] = cfg->classes;
    double total = 0;
    double act[2][256];
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < widths[0]; j++)
            act[0][j] = x[r * widths[0] + j];
        int cur = 0;
        for (int l = 0; l < layers; l++) {
            const double *w = params[2 * l], *b = params[2 * l + 1];
            for (int o = 0; o < widths[l + 1]; o++) {
                double s = b[o];
                for (int j = 0; j < widths[l]; j++)
                    s += w[o * widths[l] + j] * act[cur][j];
                act[1 - cur][o] = l + 1 < layers ? gelu_d(s) : s;
            }
            cur = 1 - cur;
        }
        double mx = -INFINITY, z = 0;
        for (int c = 0; c < cfg->classes; c++)
            mx = fmax(mx, act[cur][c]);
        for (int c = 0; c < cfg->classes; c++)
            z += exp(act[cur][c] - mx);
        total += -(act[cur][y[r]] - mx - log(z));
    }
    return total / rows;
}

START_TEST(test_gradient_matches_finite_differences)
{
    mhub_mlp_config cfg = {.inputs = 5, .num_hidden = 2, .hidden = {7, 6}, .classes = 4};
    const int rows = 3;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, rows, 17, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    ck_assert_int_eq(pl->count, 6);
    float x[3 * 5];
    int32_t y[3] = {0, 3, 2};
    mhub_rng_fill_normal(x, 15, 3, 4, 0, 0.0f, 1.0f);
    float loss;
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_mlp_forward(m, x, y, rows, &loss));
    CK_OK(mhub_mlp_backward(m, 1.0f / rows));

    double *params[6];
    for (int p = 0; p < pl->count; p++) {
        const mhub_tensor *v = &pl->items[p].value;
        params[p] = malloc((size_t)v->numel * sizeof(double));
        for (int64_t i = 0; i < v->numel; i++)
            params[p][i] = ((const float *)v->data)[i];
    }
    double ref = reference_loss(&cfg, params, x, y, rows);
    ck_assert_msg(mhub_test_relerr(loss, ref, 1e-6) < 1e-5, "loss %g vs reference %g",
                  (double)loss, ref);
    /* Central differences in double have truncation error ~h^2 f''' and
     * rounding ~1e-16/h: h = 1e-5 gives ~1e-10 absolute. The analytic
     * gradient is f32 arithmetic (~1e-7 relative per op), so compare with
     * a relative tolerance of 1e-3 above a floor of 1e-4. */
    const double h = 1e-5;
    double worst = 0;
    for (int p = 0; p < pl->count; p++) {
        const mhub_param *pp = &pl->items[p];
        const float *g = pp->grad.data;
        for (int64_t i = 0; i < pp->value.numel; i++) {
            double keep = params[p][i];
            params[p][i] = keep + h;
            double up = reference_loss(&cfg, params, x, y, rows);
            params[p][i] = keep - h;
            double down = reference_loss(&cfg, params, x, y, rows);
            params[p][i] = keep;
            double fd = (up - down) / (2 * h);
            double err = fabs(g[i] - fd) / fmax(fabs(fd), 1e-4);
            worst = fmax(worst, err);
            ck_assert_msg(err < 1e-3, "%s[%lld]: analytic %.8g vs finite difference %.8g",
                          pp->name, (long long)i, (double)g[i], fd);
        }
    }
    ck_assert_double_lt(worst, 1e-3);
    for (int p = 0; p < pl->count; p++)
        free(params[p]);
    mhub_mlp_free(m);
}
END_TEST

typedef struct {
    int order[16];
    int count;
    int fail_at;
} ready_log;

static mhub_status record_ready(void *user, int index)
{
    ready_log *log = user;
    if (log->count == log->fail_at)
        return mhub_error(MHUB_ERR_COMM, "engine refused parameter %d", index);
    log->order[log->count++] = index;
    return MHUB_OK;
}

START_TEST(test_grad_ready_order_and_accumulation)
{
    mhub_mlp_config cfg = {.inputs = 4, .num_hidden = 2, .hidden = {8, 8}, .classes = 3};
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 8, 1, &m));
    float x[8 * 4];
    int32_t y[8] = {0, 1, 2, 0, 1, 2, 0, 1};
    mhub_rng_fill_normal(x, 32, 1, 2, 0, 0.0f, 1.0f);
    ready_log log = {.fail_at = -1};
    mhub_mlp_set_grad_ready(m, record_ready, &log);
    mhub_param_list *pl = mhub_mlp_params(m);
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_mlp_forward(m, x, y, 8, NULL));
    CK_OK(mhub_mlp_backward(m, 0.125f));
    /* exactly the reverse of the parameter list */
    ck_assert_int_eq(log.count, 6);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(log.order[i], 5 - i);
    /* a second backward accumulates: gradients double exactly (x + x) */
    float first[8 * 4];
    memcpy(first, pl->items[0].grad.data, sizeof first);
    CK_OK(mhub_mlp_backward(m, 0.125f));
    const float *g = pl->items[0].grad.data;
    for (int i = 0; i < 32; i++)
        ck_assert(g[i] == 2.0f * first[i]);
    /* an engine error stops backward with that error */
    log.count = 0;
    log.fail_at = 2;
    CK_FAILS(MHUB_ERR_COMM, mhub_mlp_backward(m, 0.125f));
    mhub_mlp_free(m);
}
END_TEST

typedef struct {
    char calls[64][8];
    int count;
} hook_log;

static mhub_status log_call(void *user, const char *what, int unit)
{
    hook_log *log = user;
    snprintf(log->calls[log->count++], 8, "%s%d", what, unit);
    return MHUB_OK;
}
static mhub_status pre_f(void *u, int unit) { return log_call(u, "F", unit); }
static mhub_status post_f(void *u, int unit) { return log_call(u, "f", unit); }
static mhub_status pre_b(void *u, int unit) { return log_call(u, "B", unit); }
static mhub_status post_b(void *u, int unit) { return unit == 1 ? mhub_error(MHUB_ERR_COMM, "x") : log_call(u, "b", unit); }

START_TEST(test_unit_hooks)
{
    mhub_mlp_config cfg = {.inputs = 3, .num_hidden = 2, .hidden = {4, 4}, .classes = 2};
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 2, 1, &m));
    ck_assert_int_eq(mhub_mlp_num_units(m), 3);
    mhub_param_list *pl = mhub_mlp_params(m);
    for (int p = 0; p < pl->count; p++)
        ck_assert_int_eq(pl->items[p].unit, p / 2);
    hook_log log = {.count = 0};
    mhub_unit_hooks hooks = {pre_f, post_f, pre_b, post_b, &log};
    mhub_mlp_set_unit_hooks(m, &hooks);
    float x[6] = {0};
    int32_t y[2] = {0, 1};
    CK_OK(mhub_mlp_forward(m, x, y, 2, NULL));
    /* backward stops at unit 1's post_backward error */
    CK_FAILS(MHUB_ERR_COMM, mhub_mlp_backward(m, 0.5f));
    const char *want[] = {"F0", "f0", "F1", "f1", "F2", "f2", "B2", "b2", "B1"};
    ck_assert_int_eq(log.count, 9);
    for (int i = 0; i < 9; i++)
        ck_assert_str_eq(log.calls[i], want[i]);
    mhub_mlp_set_unit_hooks(m, NULL);
    CK_OK(mhub_mlp_backward(m, 0.5f));
    ck_assert_int_eq(log.count, 9);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_half_parameters_compute_in_f32)
{
    /* A bf16 model computes exactly what an f32 model with the same
     * (bf16-rounded) weights computes: storage is 16-bit, compute f32. */
    mhub_mlp_config cfg = {.inputs = 6, .num_hidden = 1, .hidden = {9}, .classes = 3,
                           .param_dtype = MHUB_BF16};
    mhub_mlp *half, *full;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 3, &half));
    cfg.param_dtype = MHUB_F32;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 3, &full));
    mhub_param_list *ph = mhub_mlp_params(half), *pf = mhub_mlp_params(full);
    for (int p = 0; p < ph->count; p++) {
        ck_assert_int_eq(ph->items[p].value.dtype, MHUB_BF16);
        ck_assert_int_eq(ph->items[p].grad.dtype, MHUB_F32);
        const uint16_t *h = ph->items[p].value.data;
        float *f = pf->items[p].value.data;
        for (int64_t i = 0; i < ph->items[p].value.numel; i++) {
            /* the bf16 init is the f32 init rounded */
            ck_assert_uint_eq(h[i], mhub_f32_to_bf16(f[i]));
            f[i] = mhub_bf16_to_f32(h[i]);
        }
    }
    float x[4 * 6];
    int32_t y[4] = {0, 2, 1, 2};
    mhub_rng_fill_normal(x, 24, 8, 8, 0, 0.0f, 1.0f);
    float lh, lf;
    CK_OK(mhub_mlp_forward(half, x, y, 4, &lh));
    CK_OK(mhub_mlp_forward(full, x, y, 4, &lf));
    ck_assert(lh == lf);
    CK_OK(mhub_mlp_backward(half, 0.25f));
    CK_OK(mhub_mlp_backward(full, 0.25f));
    for (int p = 0; p < ph->count; p++)
        ck_assert_mem_eq(ph->items[p].grad.data, pf->items[p].grad.data,
                         mhub_tensor_nbytes(&pf->items[p].grad));
    /* a 16-bit gradient (as an engine may give it) accumulates in f32 and
     * rounds once per backward */
    mhub_tensor g16;
    CK_OK(mhub_tensor_alloc(&g16, be, MHUB_BF16, 2, ph->items[0].value.shape));
    mhub_tensor keep = ph->items[0].grad;
    ph->items[0].grad = g16;
    CK_OK(mhub_mlp_backward(half, 0.25f));
    CK_OK(mhub_mlp_backward(half, 0.25f));
    const float *g32 = keep.data;
    const uint16_t *gh = g16.data;
    for (int64_t i = 0; i < g16.numel; i++) {
        /* g32 holds one backward's f32 gradient g: after the first
         * backward into g16 it is round(g), after the second
         * round(round(g) + g) */
        float once = mhub_bf16_to_f32(mhub_f32_to_bf16(g32[i]));
        ck_assert_uint_eq(gh[i], mhub_f32_to_bf16(once + g32[i]));
    }
    ph->items[0].grad = keep;
    mhub_tensor_free(&g16);
    cfg.param_dtype = (mhub_dtype)9;
    mhub_mlp *bad;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&cfg, be, 4, 3, &bad));
    mhub_mlp_free(half);
    mhub_mlp_free(full);
}
END_TEST

START_TEST(test_same_seed_same_model)
{
    mhub_mlp_config cfg = {.inputs = 6, .num_hidden = 1, .hidden = {10}, .classes = 3};
    mhub_mlp *a, *b, *c;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 5, &a));
    CK_OK(mhub_mlp_create(&cfg, be, 16, 5, &b)); /* buffer size must not matter */
    CK_OK(mhub_mlp_create(&cfg, be, 4, 6, &c));
    mhub_param_list *pa = mhub_mlp_params(a), *pb = mhub_mlp_params(b), *pc = mhub_mlp_params(c);
    for (int p = 0; p < pa->count; p++)
        ck_assert_mem_eq(pa->items[p].value.data, pb->items[p].value.data,
                         mhub_tensor_nbytes(&pa->items[p].value));
    ck_assert(memcmp(pa->items[0].value.data, pc->items[0].value.data,
                     mhub_tensor_nbytes(&pa->items[0].value)) != 0);
    ck_assert_str_eq(pa->items[2].name, "layers.1.weight");
    ck_assert_int_eq(pa->items[2].value.shape[0], 3);
    ck_assert_int_eq(pa->items[2].value.shape[1], 10);
    mhub_mlp_free(a);
    mhub_mlp_free(b);
    mhub_mlp_free(c);
}
END_TEST

START_TEST(test_meta_model)
{
    mhub_mlp_config cfg = {.inputs = 50000, .num_hidden = 2, .hidden = {50000, 50000},
                           .classes = 1000};
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, NULL, 0, 0, &m)); /* 5e9 params, nothing allocated */
    mhub_param_list *pl = mhub_mlp_params(m);
    ck_assert_int_eq(mhub_param_list_numel(pl),
                     50000LL * 50000 * 2 + 50000LL * 2 + 1000LL * 50000 + 1000);
    for (int p = 0; p < pl->count; p++)
        ck_assert(mhub_tensor_is_meta(&pl->items[p].value));
    float x = 0;
    int32_t y = 0;
    CK_FAILS(MHUB_ERR_STATE, mhub_mlp_forward(m, &x, &y, 1, NULL));
    ck_assert_ptr_eq(mhub_mlp_config_of(m)->hidden, mhub_mlp_config_of(m)->hidden);
    ck_assert_int_eq(mhub_mlp_config_of(m)->classes, 1000);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_bad_input)
{
    mhub_mlp *m = NULL;
    mhub_mlp_config ok = {.inputs = 3, .num_hidden = 1, .hidden = {4}, .classes = 2};
    mhub_mlp_config bad = ok;
    bad.classes = 1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&bad, be, 4, 0, &m));
    bad = ok;
    bad.inputs = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&bad, be, 4, 0, &m));
    bad = ok;
    bad.hidden[0] = -2;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&bad, be, 4, 0, &m));
    bad = ok;
    bad.num_hidden = MHUB_MLP_MAX_HIDDEN + 1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&bad, be, 4, 0, &m));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(&ok, be, 0, 0, &m));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_create(NULL, be, 4, 0, &m));
    ck_assert_ptr_null(m);
    CK_OK(mhub_mlp_create(&ok, be, 4, 0, &m));
    float x[5 * 3] = {0};
    int32_t y[5] = {0, 1, 0, 1, 0};
    int64_t correct;
    CK_FAILS(MHUB_ERR_STATE, mhub_mlp_backward(m, 1.0f));
    CK_FAILS(MHUB_ERR_STATE, mhub_mlp_count_correct(m, &correct));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_forward(m, x, y, 5, NULL)); /* > max_rows */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_forward(m, x, y, 0, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_forward(m, NULL, y, 2, NULL));
    y[1] = 2; /* label out of range: reported by the loss kernel */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_forward(m, x, y, 2, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_count_correct(NULL, &correct));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_mlp_backward(NULL, 1.0f));
    mhub_mlp_free(m);
    mhub_mlp_free(NULL);
    ck_assert_ptr_null(mhub_mlp_params(NULL));
}
END_TEST

START_TEST(test_flops)
{
    mhub_mlp_config cfg = {.inputs = 10, .num_hidden = 1, .hidden = {20}, .classes = 5};
    /* macs per row = 10*20 + 20*5 = 300; 6 flops per mac per row */
    ck_assert_double_eq(mhub_mlp_flops_per_step(&cfg, 4), 6.0 * 300 * 4);
    ck_assert_double_eq(mhub_mlp_flops_per_step(NULL, 4), 0.0);
}
END_TEST

START_TEST(test_synthetic_task)
{
    mhub_synthetic_task t;
    CK_OK(mhub_synthetic_init(&t, 8, 5, 77));
    float xa[40 * 8], xb[40 * 8];
    int32_t ya[40], yb[40];
    CK_OK(mhub_synthetic_batch(&t, 1000, 40, xa, ya));
    CK_OK(mhub_synthetic_batch(&t, 1000, 13, xb, yb)); /* any split, same samples */
    CK_OK(mhub_synthetic_batch(&t, 1013, 27, xb + 13 * 8, yb + 13));
    ck_assert_mem_eq(xa, xb, sizeof xa);
    ck_assert_mem_eq(ya, yb, sizeof ya);
    int seen[5] = {0};
    float x[8];
    int32_t y;
    for (int i = 0; i < 2000; i++) {
        CK_OK(mhub_synthetic_batch(&t, (uint64_t)i, 1, x, &y));
        ck_assert(y >= 0 && y < 5);
        seen[y]++;
    }
    for (int c = 0; c < 5; c++)
        ck_assert_int_gt(seen[c], 50); /* every class occurs */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_synthetic_batch(&t, 0, 1, NULL, &y));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_synthetic_batch(&t, 0, -1, x, &y));
    mhub_synthetic_free(&t);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_synthetic_init(&t, 0, 5, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_synthetic_init(&t, 4, 1, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_synthetic_batch(&t, 0, 1, x, &y)); /* not initialised */
    mhub_synthetic_free(NULL);
}
END_TEST

START_TEST(test_sgd)
{
    mhub_param_list list = {0};
    int64_t s[1] = {3};
    CK_OK(mhub_param_list_add(&list, "w", MHUB_F32, 1, s, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_materialize(&list, be, 0));
    float *w = list.items[0].value.data, *g = list.items[0].grad.data;
    mhub_sgd *opt;
    mhub_sgd_config cfg = {.lr = 0.5f, .momentum = 0.5f, .weight_decay = 0.0f};
    CK_OK(mhub_sgd_create(&list, be, &cfg, &opt));
    /* two steps with grad 1: buf 1 then 1.5; w = 1 - 0.5 - 0.75 = -0.25 */
    for (int i = 0; i < 3; i++)
        g[i] = 1.0f;
    CK_OK(mhub_sgd_step(opt));
    CK_OK(mhub_sgd_step(opt));
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq_tol(w[i], -0.25f, 1e-7f);
    CK_OK(mhub_sgd_set_lr(opt, 0.0f));
    CK_OK(mhub_sgd_step(opt));
    ck_assert_float_eq_tol(w[0], -0.25f, 1e-7f);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_set_lr(opt, NAN));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_set_lr(opt, -1.0f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_set_lr(NULL, 1.0f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_step(NULL));
    mhub_sgd_free(opt);
    mhub_sgd_config bad = {.lr = 0.1f, .momentum = 1.0f};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_create(&list, be, &bad, &opt));
    bad = (mhub_sgd_config){.lr = 0.1f, .weight_decay = -1.0f};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_create(&list, be, &bad, &opt));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sgd_create(NULL, be, &cfg, &opt));
    mhub_param_list half = {0};
    CK_OK(mhub_param_list_add(&half, "h", MHUB_BF16, 1, s, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_materialize(&half, be, 0));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_sgd_create(&half, be, &cfg, &opt));
    mhub_param_list meta = {0};
    CK_OK(mhub_param_list_add(&meta, "m", MHUB_F32, 1, s, MHUB_INIT_ONES, 0, NULL));
    CK_FAILS(MHUB_ERR_STATE, mhub_sgd_create(&meta, be, &cfg, &opt));
    mhub_param_list_free(&list);
    mhub_param_list_free(&half);
    mhub_param_list_free(&meta);
    mhub_sgd_free(NULL);
}
END_TEST

START_TEST(test_optim_config_and_update)
{
    mhub_optim_config c;
    mhub_optim_config_init(&c, MHUB_OPTIM_ADAMW);
    ck_assert_int_eq(mhub_optim_state_arrays(&c), 2);
    CK_OK(mhub_optim_config_validate(&c));
    mhub_optim_kind k;
    ck_assert_int_eq(mhub_optim_kind_parse("sgd", &k), 0);
    ck_assert_int_eq(k, MHUB_OPTIM_SGD);
    ck_assert_int_eq(mhub_optim_kind_parse("adam", &k), -1);
    ck_assert_str_eq(mhub_optim_kind_name(MHUB_OPTIM_ADAMW), "adamw");
    /* AdamW step 1 from zero state: m = (1-b1) g, v = (1-b2) g^2, so the
     * bias-corrected update is lr * g / (|g| + eps) = lr * sign(g) */
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -4.0f}, m[2] = {0}, v[2] = {0};
    float *state[2] = {m, v};
    c.lr = 0.1f;
    CK_OK(mhub_optim_update(be, &c, p, g, state, 2, 1));
    ck_assert_float_eq_tol(p[0], 0.9f, 1e-6f);
    ck_assert_float_eq_tol(p[1], -1.9f, 1e-6f);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_optim_update(be, &c, p, g, NULL, 2, 2));
    mhub_optim_config_init(&c, MHUB_OPTIM_SGD);
    ck_assert_int_eq(mhub_optim_state_arrays(&c), 0);
    c.lr = 0.5f;
    CK_OK(mhub_optim_update(be, &c, p, g, NULL, 2, 1)); /* plain SGD needs no state */
    ck_assert_float_eq_tol(p[0], 0.65f, 1e-6f);
    c.momentum = 0.9f;
    ck_assert_int_eq(mhub_optim_state_arrays(&c), 1);
    c.beta1 = 1.0f; /* betas only matter for AdamW */
    CK_OK(mhub_optim_config_validate(&c));
    c.kind = MHUB_OPTIM_ADAMW;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_optim_config_validate(&c));
    c.kind = (mhub_optim_kind)7;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_optim_config_validate(&c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_optim_config_validate(NULL));
}
END_TEST

START_TEST(test_training_reduces_loss)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, 16, 4, 3));
    mhub_mlp_config cfg = {.inputs = 16, .num_hidden = 1, .hidden = {64}, .classes = 4};
    const int batch = 32, steps = 300;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 1024, 3, &m));
    mhub_sgd *opt;
    mhub_sgd_config sc = {.lr = 0.05f, .momentum = 0.9f};
    CK_OK(mhub_sgd_create(mhub_mlp_params(m), be, &sc, &opt));
    static float x[1024 * 16];
    static int32_t y[1024];
    float loss, first = 0, recent = 0;
    for (int s = 0; s < steps; s++) {
        CK_OK(mhub_synthetic_batch(&task, (uint64_t)s * batch, batch, x, y));
        CK_OK(mhub_param_list_zero_grad(mhub_mlp_params(m)));
        CK_OK(mhub_mlp_forward(m, x, y, batch, &loss));
        CK_OK(mhub_mlp_backward(m, 1.0f / batch));
        CK_OK(mhub_sgd_step(opt));
        if (s == 0)
            first = loss;
        if (s >= steps - 20)
            recent += loss / 20;
    }
    /* held-out accuracy far above chance (25%) */
    CK_OK(mhub_synthetic_batch(&task, UINT64_C(1) << 40, 1024, x, y));
    CK_OK(mhub_mlp_forward(m, x, y, 1024, &loss));
    int64_t correct;
    CK_OK(mhub_mlp_count_correct(m, &correct));
    ck_assert_msg(recent < 0.5f * first, "loss %g -> %g did not halve", (double)first,
                  (double)recent);
    ck_assert_msg(correct > 700, "held-out accuracy %lld/1024", (long long)correct);
    mhub_sgd_free(opt);
    mhub_mlp_free(m);
    mhub_synthetic_free(&task);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("mlp");
    TCase *tc = tcase_create("model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gradient_matches_finite_differences);
    tcase_add_test(tc, test_grad_ready_order_and_accumulation);
    tcase_add_test(tc, test_unit_hooks);
    tcase_add_test(tc, test_half_parameters_compute_in_f32);
    tcase_add_test(tc, test_same_seed_same_model);
    tcase_add_test(tc, test_meta_model);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_flops);
    tcase_add_test(tc, test_synthetic_task);
    tcase_add_test(tc, test_sgd);
    tcase_add_test(tc, test_optim_config_and_update);
    tcase_add_test(tc, test_training_reduces_loss);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
