/* provider.c - provider types, chunks, wrap hooks and get_model.
 *
 * The order of get_model is the reference's (provider.h lists it); what
 * differs is deliberate and documented there: configs are copied, never
 * mutated; tri-state options honour the provider's own values; a hook
 * that leaves no chunks is an error naming it; seeds are offset by
 * pipeline rank. */
#include <stdlib.h>
#include <string.h>

#include "mhub/gpt.h"
#include "mhub/mlp.h"
#include "mhub/provider.h"

/* ---- registry ------------------------------------------------------------ */

#define MAX_PROVIDER_TYPES 64

static const mhub_provider_type *registry[MAX_PROVIDER_TYPES];
static int registry_count;
static bool builtins_registered;

static mhub_status check_type(const mhub_provider_type *t)
{
    if (!t || !t->name || !t->name[0] || !t->provide)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "a provider type needs a name and provide()");
    if (t->config_size < sizeof(mhub_provider_config))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "provider type '%s': config_size %zu is smaller than "
                          "mhub_provider_config (%zu); embed it as the first member",
                          t->name, t->config_size, sizeof(mhub_provider_config));
    if (t->num_fields < 0 || (t->num_fields > 0 && !t->fields))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider type '%s': bad field table", t->name);
    int ncommon = 0;
    const mhub_config_field *common = mhub_provider_common_fields(&ncommon);
    for (int i = 0; i < t->num_fields; i++) {
        const mhub_config_field *f = &t->fields[i];
        if (!f->key || !f->key[0])
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider type '%s': field %d has no key",
                              t->name, i);
        if (f->offset < sizeof(mhub_provider_config) || f->offset >= t->config_size)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                              "provider type '%s': field '%s' lies outside the type's own "
                              "part of the config",
                              t->name, f->key);
        if (!strcmp(f->key, "provider"))
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                              "provider type '%s': 'provider' is a reserved key", t->name);
        for (int j = 0; j < ncommon; j++)
            if (!strcmp(f->key, common[j].key))
                return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                                  "provider type '%s': field '%s' repeats a common field",
                                  t->name, f->key);
        for (int j = 0; j < i; j++)
            if (!strcmp(f->key, t->fields[j].key))
                return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                                  "provider type '%s': field '%s' appears twice", t->name,
                                  f->key);
    }
    return MHUB_OK;
}

static mhub_status register_type(const mhub_provider_type *t)
{
    MHUB_TRY(check_type(t));
    for (int i = 0; i < registry_count; i++)
        if (!strcmp(registry[i]->name, t->name))
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "a provider type named '%s' is already "
                              "registered", t->name);
    if (registry_count == MAX_PROVIDER_TYPES)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "the registry holds at most %d provider types",
                          MAX_PROVIDER_TYPES);
    registry[registry_count++] = t;
    return MHUB_OK;
}

/* Built-in types are registered on first use, so a program that never
 * touches the registry pays nothing and user types can follow them. */
static void ensure_builtins(void)
{
    if (builtins_registered)
        return;
    builtins_registered = true;
    const mhub_provider_type *builtin[] = {mhub_mlp_provider_type(), mhub_gpt_provider_type()};
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
        if (builtin[i])
            (void)register_type(builtin[i]);
}

mhub_status mhub_provider_type_register(const mhub_provider_type *type)
{
    ensure_builtins();
    return register_type(type);
}

const mhub_provider_type *mhub_provider_type_find(const char *name)
{
    ensure_builtins();
    if (!name)
        return NULL;
    for (int i = 0; i < registry_count; i++)
        if (!strcmp(registry[i]->name, name))
            return registry[i];
    return NULL;
}

int mhub_provider_type_count(void)
{
    ensure_builtins();
    return registry_count;
}

const mhub_provider_type *mhub_provider_type_at(int index)
{
    ensure_builtins();
    return index >= 0 && index < registry_count ? registry[index] : NULL;
}

/* ---- chunks ---------------------------------------------------------------- */

struct mhub_chunk {
    char type_name[64];
    void *model;
    mhub_chunk_ops ops;
    bool pre_process, post_process;
    int vp_stage;
    mhub_model_type model_type;
    bool meta;
    mhub_dp_engine *engine;
};

mhub_status mhub_chunk_create(const char *type_name, void *model, const mhub_chunk_ops *ops,
                              mhub_chunk **out)
{
    if (!ops || !ops->params || !ops->free || !model || !out || !type_name) {
        if (ops && ops->free && model)
            ops->free(model);
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "a chunk needs a type name, a model and params/free ops");
    }
    mhub_chunk *c = calloc(1, sizeof *c);
    if (!c) {
        ops->free(model);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "chunk");
    }
    snprintf(c->type_name, sizeof c->type_name, "%s", type_name);
    c->model = model;
    c->ops = *ops;
    c->vp_stage = -1;
    c->pre_process = c->post_process = true;
    const mhub_param_list *pl = ops->params(model);
    c->meta = pl && pl->count > 0 && pl->items[0].value.data == NULL;
    *out = c;
    return MHUB_OK;
}

void mhub_chunk_free(mhub_chunk *c)
{
    if (!c)
        return;
    /* the engine gives gradients back to the parameters, so it goes first */
    mhub_dp_engine_free(c->engine);
    if (c->ops.set_grad_ready)
        c->ops.set_grad_ready(c->model, NULL, NULL);
    if (c->ops.set_unit_hooks)
        c->ops.set_unit_hooks(c->model, NULL);
    c->ops.free(c->model);
    free(c);
}

const char *mhub_chunk_type_name(const mhub_chunk *c) { return c ? c->type_name : ""; }
void *mhub_chunk_model(mhub_chunk *c) { return c ? c->model : NULL; }
mhub_param_list *mhub_chunk_params(mhub_chunk *c) { return c ? c->ops.params(c->model) : NULL; }
int64_t mhub_chunk_numel(mhub_chunk *c) { return c ? mhub_param_list_numel(mhub_chunk_params(c)) : 0; }
bool mhub_chunk_pre_process(const mhub_chunk *c) { return c && c->pre_process; }
bool mhub_chunk_post_process(const mhub_chunk *c) { return c && c->post_process; }
int mhub_chunk_vp_stage(const mhub_chunk *c) { return c ? c->vp_stage : -1; }
mhub_model_type mhub_chunk_model_type(const mhub_chunk *c)
{
    return c ? c->model_type : MHUB_MODEL_ENCODER_OR_DECODER;
}
bool mhub_chunk_is_meta(const mhub_chunk *c) { return c && c->meta; }
mhub_dp_engine *mhub_chunk_engine(mhub_chunk *c) { return c ? c->engine : NULL; }

void mhub_chunk_describe(const mhub_chunk *c, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    buf[0] = '\0';
    if (c && c->ops.describe)
        c->ops.describe(c->model, buf, len);
    else if (c)
        snprintf(buf, len, "%s chunk", c->type_name);
}

static mhub_status list_reserve(mhub_chunk_list *l, int need)
{
    if (need <= l->cap)
        return MHUB_OK;
    int cap = l->cap ? 2 * l->cap : 4;
    while (cap < need)
        cap *= 2;
    mhub_chunk **items = realloc(l->items, (size_t)cap * sizeof *items);
    if (!items)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "chunk list of %d", cap);
    l->items = items;
    l->cap = cap;
    return MHUB_OK;
}

mhub_status mhub_chunk_list_insert(mhub_chunk_list *l, int index, mhub_chunk *c)
{
    if (!l || !c)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list or chunk is NULL");
    if (index < 0 || index > l->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "index %d outside [0, %d]", index, l->count);
    MHUB_TRY(list_reserve(l, l->count + 1));
    memmove(&l->items[index + 1], &l->items[index],
            (size_t)(l->count - index) * sizeof l->items[0]);
    l->items[index] = c;
    l->count++;
    return MHUB_OK;
}

mhub_status mhub_chunk_list_append(mhub_chunk_list *l, mhub_chunk *c)
{
    return mhub_chunk_list_insert(l, l ? l->count : 0, c);
}

mhub_chunk *mhub_chunk_list_remove(mhub_chunk_list *l, int index)
{
    if (!l || index < 0 || index >= l->count)
        return NULL;
    mhub_chunk *c = l->items[index];
    memmove(&l->items[index], &l->items[index + 1],
            (size_t)(l->count - index - 1) * sizeof l->items[0]);
    l->count--;
    return c;
}

int64_t mhub_chunk_list_numel(const mhub_chunk_list *l)
{
    int64_t n = 0;
    for (int i = 0; l && i < l->count; i++)
        n += mhub_chunk_numel(l->items[i]);
    return n;
}

void mhub_chunk_list_free(mhub_chunk_list *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->count; i++)
        mhub_chunk_free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- hook chains ---------------------------------------------------------- */

struct mhub_hook_chain {
    mhub_wrap_hook *items;  /* names point at copies this chain owns */
    int count;
    int cap;
};

static mhub_status chain_add(mhub_hook_chain *h, const char *name, mhub_wrap_hook_fn fn,
                             void *user, bool prepend)
{
    if (!fn)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "hook '%s' has no function",
                          name ? name : "(unnamed)");
    if (h->count == h->cap) {
        int cap = h->cap ? 2 * h->cap : 4;
        mhub_wrap_hook *items = realloc(h->items, (size_t)cap * sizeof *items);
        if (!items)
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "hook list");
        h->items = items;
        h->cap = cap;
    }
    char *copy = strdup(name ? name : "(unnamed)");
    if (!copy)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "hook name");
    int at = prepend ? 0 : h->count;
    memmove(&h->items[at + 1], &h->items[at], (size_t)(h->count - at) * sizeof h->items[0]);
    h->items[at] = (mhub_wrap_hook){.name = copy, .fn = fn, .user = user};
    h->count++;
    return MHUB_OK;
}

static void chain_free(mhub_hook_chain *h)
{
    for (int i = 0; i < h->count; i++)
        free((char *)h->items[i].name);
    free(h->items);
    memset(h, 0, sizeof *h);
}

int mhub_hook_chain_length(const mhub_hook_chain *h) { return h ? h->count : 0; }

const mhub_wrap_hook *mhub_hook_chain_at(const mhub_hook_chain *h, int index)
{
    return h && index >= 0 && index < h->count ? &h->items[index] : NULL;
}

mhub_status mhub_wrap_hooks_run(const mhub_wrap_hook *hooks, int count, const char *kind,
                                mhub_chunk_list *chunks)
{
    if (!chunks || (count > 0 && !hooks))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "hooks or chunks is NULL");
    if (!kind)
        kind = "wrap";
    for (int i = 0; i < count; i++) {
        const char *name = hooks[i].name ? hooks[i].name : "(unnamed)";
        if (!hooks[i].fn)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s hook '%s' has no function", kind, name);
        mhub_clear_error();
        mhub_status s = hooks[i].fn(hooks[i].user, chunks);
        if (s != MHUB_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", mhub_last_error());
            return mhub_error(s, "%s hook '%s' failed: %s", kind, name,
                              why[0] ? why : mhub_status_name(s));
        }
        if (chunks->count == 0)
            return mhub_error(MHUB_ERR_STATE, "%s hook '%s' left no model chunks", kind, name);
    }
    return MHUB_OK;
}

mhub_status mhub_hook_chain_run(const mhub_hook_chain *h, mhub_chunk_list *chunks)
{
    if (!h)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "no hook chain (none registered)");
    return mhub_wrap_hooks_run(h->items, h->count, "wrap", chunks);
}

/* ---- providers -------------------------------------------------------------- */

struct mhub_provider {
    mhub_provider_config *cfg;
    mhub_backend *backend;
    int64_t micro_batch;
    mhub_parallel *parallel;
    bool have_seed_override;
    int64_t seed_override;
    mhub_hook_chain pre_hooks, post_hooks;
};

mhub_status mhub_provider_create(const mhub_provider_config *cfg, mhub_provider **out)
{
    if (!cfg || !out || !cfg->type)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config (with its type) or out is NULL");
    *out = NULL;
    if (mhub_provider_type_find(cfg->type->name) != cfg->type)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "provider type '%s' is not registered (mhub only instantiates "
                          "registered types)",
                          cfg->type->name);
    MHUB_TRY(mhub_config_validate(cfg));
    mhub_provider *p = calloc(1, sizeof *p);
    if (!p)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "provider");
    mhub_status s = mhub_config_clone(cfg, &p->cfg);
    if (s != MHUB_OK) {
        free(p);
        return s;
    }
    p->micro_batch = 1;
    *out = p;
    return MHUB_OK;
}

mhub_status mhub_provider_create_default(const char *type_name, mhub_provider **out)
{
    const mhub_provider_type *t = mhub_provider_type_find(type_name);
    if (!t)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "no provider type named '%s'",
                          type_name ? type_name : "(null)");
    mhub_provider_config *cfg = NULL;
    MHUB_TRY(mhub_config_create(t, &cfg));
    mhub_status s = mhub_provider_create(cfg, out);
    mhub_config_free(cfg);
    return s;
}

void mhub_provider_free(mhub_provider *p)
{
    if (!p)
        return;
    mhub_parallel_free(p->parallel);
    chain_free(&p->pre_hooks);
    chain_free(&p->post_hooks);
    mhub_config_free(p->cfg);
    free(p);
}

const mhub_provider_type *mhub_provider_type_of(const mhub_provider *p)
{
    return p ? p->cfg->type : NULL;
}
const mhub_provider_config *mhub_provider_config_of(const mhub_provider *p)
{
    return p ? p->cfg : NULL;
}
mhub_provider_config *mhub_provider_config_mut(mhub_provider *p) { return p ? p->cfg : NULL; }
void mhub_provider_set_backend(mhub_provider *p, mhub_backend *be)
{
    if (p)
        p->backend = be;
}
void mhub_provider_set_micro_batch(mhub_provider *p, int64_t rows)
{
    if (p)
        p->micro_batch = rows > 0 ? rows : 1;
}
mhub_parallel *mhub_provider_parallel(const mhub_provider *p) { return p ? p->parallel : NULL; }

mhub_status mhub_provider_register_pre_wrap_hook(mhub_provider *p, const char *name,
                                                 mhub_wrap_hook_fn fn, void *user, bool prepend)
{
    if (!p)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider is NULL");
    return chain_add(&p->pre_hooks, name, fn, user, prepend);
}

mhub_status mhub_provider_register_post_wrap_hook(mhub_provider *p, const char *name,
                                                  mhub_wrap_hook_fn fn, void *user, bool prepend)
{
    if (!p)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider is NULL");
    return chain_add(&p->post_hooks, name, fn, user, prepend);
}

const mhub_hook_chain *mhub_provider_pre_wrap_hook(const mhub_provider *p)
{
    return p && p->pre_hooks.count > 0 ? &p->pre_hooks : NULL;
}

const mhub_hook_chain *mhub_provider_post_wrap_hook(const mhub_provider *p)
{
    return p && p->post_hooks.count > 0 ? &p->post_hooks : NULL;
}

/* ---- initialize_model_parallel and seeds ---------------------------------- */

mhub_status mhub_provider_initialize_model_parallel(mhub_provider *p, mhub_comm *world,
                                                    const int64_t *seed, const char *order)
{
    if (!p || !world)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or world is NULL");
    if (seed && (*seed < 0 || *seed > (INT64_C(1) << 53)))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "seed %lld is outside [0, 2^53]",
                          (long long)*seed);
    MHUB_TRY(mhub_config_validate(p->cfg));
    const mhub_provider_config *c = p->cfg;
    mhub_parallel_sizes sizes = {
        .tp = c->tensor_model_parallel_size,
        .pp = c->pipeline_model_parallel_size,
        .cp = c->context_parallel_size,
        .ep = c->expert_model_parallel_size,
        .etp = c->expert_tensor_parallel_size,
        .vp = c->virtual_pipeline_model_parallel_size,
        .order = order,
    };
    mhub_parallel *par = NULL;
    MHUB_TRY(mhub_parallel_create(world, &sizes, &par));
    mhub_parallel_free(p->parallel);
    p->parallel = par;
    p->have_seed_override = seed != NULL;
    if (seed)
        p->seed_override = *seed;
    return MHUB_OK;
}

static int coord_or_zero(const mhub_provider *p, mhub_group_kind kind)
{
    int r = p->parallel ? mhub_parallel_rank(p->parallel, kind) : 0;
    return r > 0 ? r : 0;
}

mhub_status mhub_provider_seeds_of(const mhub_provider *p, bool data_parallel_random_init,
                                   mhub_provider_seeds *out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or out is NULL");
    uint64_t seed = (uint64_t)(p->have_seed_override ? p->seed_override : p->cfg->seed);
    uint64_t base = seed + 100u * (uint64_t)coord_or_zero(p, MHUB_GROUP_PP);
    if (data_parallel_random_init)
        base += 10u * (uint64_t)coord_or_zero(p, MHUB_GROUP_DP);
    out->base = base;
    out->tensor_parallel = base + 2718u + (uint64_t)coord_or_zero(p, MHUB_GROUP_TP);
    out->expert_parallel = base + 1024u + 100u * (uint64_t)coord_or_zero(p, MHUB_GROUP_EP) +
                           (uint64_t)coord_or_zero(p, MHUB_GROUP_ETP);
    return MHUB_OK;
}

/* ---- provide ------------------------------------------------------------------ */

int mhub_provide_args_num_chunks(const mhub_provide_args *a)
{
    return a ? (a->pp_size > 0 ? a->pp_size : 1) * (a->vp_size > 0 ? a->vp_size : 1) : 0;
}

int mhub_provide_args_chunk_index(const mhub_provide_args *a)
{
    if (!a)
        return -1;
    int pp = a->pp_size > 0 ? a->pp_size : 1;
    return (a->vp_stage > 0 ? a->vp_stage : 0) * pp + a->pp_rank;
}

/* Arguments for a chunk at this rank's position under config `cfg`. */
static mhub_status fill_args(const mhub_provider *p, const mhub_provider_config *cfg,
                             int pp_rank, bool dp_random_init, mhub_provide_args *a)
{
    mhub_provider_seeds seeds;
    MHUB_TRY(mhub_provider_seeds_of(p, dp_random_init, &seeds));
    memset(a, 0, sizeof *a);
    a->vp_stage = -1;
    a->pp_size = cfg->pipeline_model_parallel_size;
    a->pp_rank = pp_rank;
    a->vp_size = cfg->virtual_pipeline_model_parallel_size > 0
                     ? cfg->virtual_pipeline_model_parallel_size : 1;
    a->tp_size = cfg->tensor_model_parallel_size;
    a->tp_rank = coord_or_zero(p, MHUB_GROUP_TP);
    a->backend = cfg->init_model_with_meta_device ? NULL : p->backend;
    /* the pipeline offset belongs to the stage being built */
    uint64_t stage_shift = 100u * (uint64_t)(pp_rank - coord_or_zero(p, MHUB_GROUP_PP));
    a->seed = seeds.base + stage_shift;
    a->tp_seed = seeds.tensor_parallel + stage_shift;
    a->micro_batch = p->micro_batch;
    return MHUB_OK;
}

static mhub_status provide_with(const mhub_provider_config *cfg,
                                const mhub_provide_args *a, mhub_model_type model_type,
                                mhub_chunk **out)
{
    if (a->vp_stage >= a->vp_size || a->vp_stage < -1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "vp_stage %d outside [0, %d)", a->vp_stage,
                          a->vp_size);
    *out = NULL;
    mhub_chunk *c = NULL;
    MHUB_TRY(cfg->type->provide(cfg, a, &c));
    if (!c)
        return MHUB_ERROR(MHUB_ERR_STATE, "provider type '%s' returned no chunk",
                          cfg->type->name);
    c->pre_process = a->pre_process;
    c->post_process = a->post_process;
    c->vp_stage = a->vp_stage;
    c->model_type = model_type;
    c->meta = a->backend == NULL;
    *out = c;
    return MHUB_OK;
}

mhub_status mhub_provider_provide(mhub_provider *p, bool pre_process, bool post_process,
                                  int vp_stage, mhub_chunk **out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or out is NULL");
    *out = NULL;
    MHUB_TRY(mhub_config_validate(p->cfg));
    mhub_provide_args a;
    MHUB_TRY(fill_args(p, p->cfg, coord_or_zero(p, MHUB_GROUP_PP), false, &a));
    a.pre_process = pre_process;
    a.post_process = post_process;
    a.vp_stage = vp_stage;
    return provide_with(p->cfg, &a, MHUB_MODEL_ENCODER_OR_DECODER, out);
}

/* _create_model: one chunk per virtual stage, pipeline flags as the
 * reference sets them. */
static mhub_status create_chunks(const mhub_provider *p, const mhub_provider_config *cfg,
                                 int pp_rank, bool dp_random_init, mhub_model_type model_type,
                                 mhub_chunk_list *out)
{
    int pp = cfg->pipeline_model_parallel_size;
    int vp = cfg->virtual_pipeline_model_parallel_size;
    if (pp_rank < 0 || pp_rank >= pp)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "pipeline rank %d outside [0, %d)", pp_rank, pp);
    if (vp > 0 && model_type == MHUB_MODEL_ENCODER_AND_DECODER)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "virtual pipelining (virtual_pipeline_model_parallel_size = %d) is "
                          "not available for encoder-and-decoder models",
                          vp);
    mhub_provide_args a;
    MHUB_TRY(fill_args(p, cfg, pp_rank, dp_random_init, &a));
    int chunks = pp > 1 && vp > 0 ? vp : 1;
    for (int i = 0; i < chunks; i++) {
        a.vp_stage = pp > 1 && vp > 0 ? i : -1;
        a.pre_process = i == 0 && pp_rank == 0;
        a.post_process = i == chunks - 1 && pp_rank == pp - 1;
        mhub_chunk *c = NULL;
        mhub_status s = provide_with(cfg, &a, model_type, &c);
        if (s == MHUB_OK)
            s = mhub_chunk_list_append(out, c);
        if (s != MHUB_OK) {
            mhub_chunk_free(c);
            mhub_chunk_list_free(out);
            return s;
        }
    }
    return MHUB_OK;
}

mhub_status mhub_provider_meta_stage(mhub_provider *p, int pp_rank, mhub_chunk_list *out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or out is NULL");
    memset(out, 0, sizeof *out);
    mhub_provider_config *cfg = NULL;
    MHUB_TRY(mhub_config_clone(p->cfg, &cfg));
    cfg->init_model_with_meta_device = true;
    mhub_status s = mhub_config_validate(cfg);
    if (s == MHUB_OK)
        s = create_chunks(p, cfg, pp_rank, false, MHUB_MODEL_ENCODER_OR_DECODER, out);
    mhub_config_free(cfg);
    return s;
}

mhub_status mhub_provider_total_params(mhub_provider *p, int64_t *out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or out is NULL");
    MHUB_TRY(mhub_config_validate(p->cfg));
    if (p->cfg->type->total_params) {
        *out = p->cfg->type->total_params(p->cfg);
        return MHUB_OK;
    }
    int64_t n = 0;
    for (int s = 0; s < p->cfg->pipeline_model_parallel_size; s++) {
        mhub_chunk_list l;
        MHUB_TRY(mhub_provider_meta_stage(p, s, &l));
        n += mhub_chunk_list_numel(&l);
        mhub_chunk_list_free(&l);
    }
    *out = n;
    return MHUB_OK;
}

/* ---- get_model ------------------------------------------------------------------ */

void mhub_get_model_options_init(mhub_get_model_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->model_type = MHUB_MODEL_ENCODER_OR_DECODER;
    o->fp16 = o->bf16 = MHUB_UNSET;
    o->use_cpu_initialization = o->init_model_with_meta_device = MHUB_UNSET;
    o->wrap_with_ddp = true;
}

static bool tristate_valid(mhub_tristate t)
{
    return t == MHUB_UNSET || t == MHUB_FALSE || t == MHUB_TRUE;
}

static mhub_status check_options(const mhub_get_model_options *o)
{
    if (!tristate_valid(o->fp16) || !tristate_valid(o->bf16) ||
        !tristate_valid(o->use_cpu_initialization) ||
        !tristate_valid(o->init_model_with_meta_device))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "fp16, bf16, use_cpu_initialization and init_model_with_meta_device "
                          "take MHUB_UNSET, MHUB_FALSE or MHUB_TRUE");
    if (o->fp16 == MHUB_TRUE && o->bf16 == MHUB_TRUE)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "fp16 and bf16 cannot both be enabled");
    if (o->wrap_with_ddp && !o->ddp_config)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ddp_config is required when wrap_with_ddp is "
                          "true");
    if (o->model_type != MHUB_MODEL_ENCODER_OR_DECODER &&
        o->model_type != MHUB_MODEL_ENCODER_AND_DECODER)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model_type %d is not a model type",
                          (int)o->model_type);
    if ((o->num_pre_wrap_hooks > 0 && !o->pre_wrap_hooks) ||
        (o->num_post_wrap_hooks > 0 && !o->post_wrap_hooks) || o->num_pre_wrap_hooks < 0 ||
        o->num_post_wrap_hooks < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "hook count without hooks");
    if (o->ddp_config)
        MHUB_TRY(mhub_ddp_config_validate(o->ddp_config));
    return MHUB_OK;
}

/* The config get_model builds from: the provider's, with the call's
 * overrides. Precision overrides follow the reference: enabling one
 * clears the other, and either sets params_dtype. */
static mhub_status effective_config(const mhub_provider *p, const mhub_get_model_options *o,
                                    mhub_provider_config **out)
{
    mhub_provider_config *c = NULL;
    MHUB_TRY(mhub_config_clone(p->cfg, &c));
    if (o->fp16 != MHUB_UNSET) {
        c->fp16 = o->fp16 == MHUB_TRUE;
        if (c->fp16 && o->bf16 == MHUB_UNSET)
            c->bf16 = false;
    }
    if (o->bf16 != MHUB_UNSET) {
        c->bf16 = o->bf16 == MHUB_TRUE;
        if (c->bf16 && o->fp16 == MHUB_UNSET)
            c->fp16 = false;
    }
    if (o->fp16 != MHUB_UNSET || o->bf16 != MHUB_UNSET)
        c->params_dtype = c->fp16 ? MHUB_F16 : c->bf16 ? MHUB_BF16 : MHUB_F32;
    if (o->use_cpu_initialization != MHUB_UNSET)
        c->use_cpu_initialization = o->use_cpu_initialization == MHUB_TRUE;
    if (o->init_model_with_meta_device != MHUB_UNSET)
        c->init_model_with_meta_device = o->init_model_with_meta_device == MHUB_TRUE;
    mhub_status s = mhub_config_validate(c);
    if (s != MHUB_OK) {
        mhub_config_free(c);
        return s;
    }
    *out = c;
    return MHUB_OK;
}

static void print_num_params(const mhub_provider *p, const mhub_chunk_list *chunks, FILE *log)
{
    if (coord_or_zero(p, MHUB_GROUP_DP) != 0 || coord_or_zero(p, MHUB_GROUP_CP) != 0)
        return;
    fprintf(log ? log : stdout,
            " > number of parameters on (tensor, pipeline) model parallel rank (%d, %d): %lld\n",
            coord_or_zero(p, MHUB_GROUP_TP), coord_or_zero(p, MHUB_GROUP_PP),
            (long long)mhub_chunk_list_numel(chunks));
    fflush(log ? log : stdout);
}

static mhub_comm *dp_comm(const mhub_provider *p)
{
    return p->parallel ? mhub_parallel_comm(p->parallel, MHUB_GROUP_DP_CP) : NULL;
}

/* Replicas start equal: every parameter from dp rank 0. Done before the
 * engines copy parameters into their own buffers (main copies, shards),
 * so what they copy is already rank 0's. */
static mhub_status broadcast_params(mhub_comm *dp, mhub_chunk_list *chunks)
{
    for (int i = 0; i < chunks->count; i++) {
        mhub_param_list *pl = mhub_chunk_params(chunks->items[i]);
        for (int k = 0; k < pl->count; k++) {
            mhub_tensor *v = &pl->items[k].value;
            MHUB_TRY(mhub_comm_broadcast(dp, v->data, v->numel, v->dtype, 0));
        }
    }
    return MHUB_OK;
}

static mhub_status wrap_chunk(mhub_chunk *c, int index, mhub_comm *dp,
                              const mhub_get_model_options *o)
{
    if (c->meta)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "a meta chunk (shapes only) cannot be wrapped for training; build "
                          "it on a backend or set wrap_with_ddp false");
    if (!c->ops.set_grad_ready || !c->ops.set_unit_hooks)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "'%s' chunks cannot be wrapped: the model reports no gradient "
                          "events (set_grad_ready/set_unit_hooks)",
                          c->type_name);
    /* never the caller's config: a copy, with bucketing off where the
     * reference turns it off */
    mhub_ddp_config ddp = *o->ddp_config;
    if (index > 0 || o->overlap_param_gather_with_optimizer_step)
        ddp.bucket_size = INT64_MAX;
    mhub_dp_engine_kind kind = o->use_fsdp ? MHUB_DP_FSDP
                               : ddp.use_distributed_optimizer ? MHUB_DP_DISTOPT : MHUB_DP_DDP;
    mhub_optim_config sgd;
    mhub_optim_config_init(&sgd, MHUB_OPTIM_SGD);
    MHUB_TRY(mhub_dp_engine_create(kind, mhub_chunk_params(c), dp, &ddp,
                                   o->optim ? o->optim : &sgd, o->fsdp_options, &c->engine));
    mhub_grad_ready_fn ready = NULL;
    void *ready_user = NULL;
    mhub_unit_hooks hooks;
    MHUB_TRY(mhub_dp_engine_hooks(c->engine, &ready, &ready_user, &hooks));
    c->ops.set_grad_ready(c->model, ready, ready_user);
    c->ops.set_unit_hooks(c->model, &hooks);
    return MHUB_OK;
}

static mhub_status get_model_with(mhub_provider *p, const mhub_get_model_options *o,
                                  const mhub_wrap_hook *pre, int num_pre, mhub_chunk_list *out)
{
    MHUB_TRY(check_options(o));
    if (o->wrap_with_ddp && !p->parallel)
        return MHUB_ERROR(MHUB_ERR_STATE, "wrapping needs the process groups: call "
                          "mhub_provider_initialize_model_parallel first");
    mhub_provider_config *cfg = NULL;
    MHUB_TRY(effective_config(p, o, &cfg));
    mhub_status s = create_chunks(p, cfg, coord_or_zero(p, MHUB_GROUP_PP),
                                  o->data_parallel_random_init, o->model_type, out);
    if (s == MHUB_OK && num_pre > 0)
        s = mhub_wrap_hooks_run(pre, num_pre, "pre-wrap", out);
    if (s == MHUB_OK)
        print_num_params(p, out, o->log);
    /* Placement: chunks were built on the provider's backend, which on
     * the CPU backend is also where cpu initialisation happens; fp16/bf16
     * parameters were created in 16 bits (effective params_dtype), and the
     * engines keep f32 main copies. */
    if (s == MHUB_OK && o->wrap_with_ddp && o->data_parallel_random_init)
        for (int i = 0; s == MHUB_OK && i < out->count; i++)
            if (out->items[i]->meta)
                s = MHUB_ERROR(MHUB_ERR_UNSUPPORTED, "a meta chunk has no values to broadcast");
    if (s == MHUB_OK && o->wrap_with_ddp && o->data_parallel_random_init)
        s = broadcast_params(dp_comm(p), out);
    for (int i = 0; s == MHUB_OK && o->wrap_with_ddp && i < out->count; i++)
        s = wrap_chunk(out->items[i], i, dp_comm(p), o);
    mhub_config_free(cfg);
    if (s != MHUB_OK)
        mhub_chunk_list_free(out);
    return s;
}

mhub_status mhub_get_model(mhub_provider *p, const mhub_get_model_options *opts,
                           mhub_chunk_list *out)
{
    if (!p || !opts || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider, options or out is NULL");
    memset(out, 0, sizeof *out);
    return get_model_with(p, opts, opts->pre_wrap_hooks, opts->num_pre_wrap_hooks, out);
}

mhub_status mhub_provide_distributed_model(mhub_provider *p, const mhub_get_model_options *opts,
                                           mhub_chunk_list *out)
{
    if (!p || !opts || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider, options or out is NULL");
    memset(out, 0, sizeof *out);
    MHUB_TRY(check_options(opts));
    if (!p->parallel && opts->world) {
        if (opts->world->rank == 0) {
            fprintf(opts->log ? opts->log : stdout,
                    "Model parallel not initialized, initializing...\n");
            fflush(opts->log ? opts->log : stdout);
        }
        MHUB_TRY(mhub_provider_initialize_model_parallel(p, opts->world, NULL, NULL));
    }
    const mhub_wrap_hook *pre = opts->pre_wrap_hooks;
    int num_pre = opts->num_pre_wrap_hooks;
    if (num_pre == 0) {
        pre = p->pre_hooks.items;
        num_pre = p->pre_hooks.count;
    }
    MHUB_TRY(get_model_with(p, opts, pre, num_pre, out));
    const mhub_wrap_hook *post = opts->post_wrap_hooks;
    int num_post = opts->num_post_wrap_hooks;
    if (num_post == 0) {
        post = p->post_hooks.items;
        num_post = p->post_hooks.count;
    }
    mhub_status s = mhub_wrap_hooks_run(post, num_post, "post-wrap", out);
    if (s != MHUB_OK)
        mhub_chunk_list_free(out);
    return s;
}

/* The reference's meta_model (broken upstream) meant get_model with
 * meta chunks and no wrapping. Registered pre-wrap hooks run, since they
 * may change the model (adapters, frozen layers) that the caller wants
 * to inspect; post-wrap hooks expect wrapped chunks and do not. */
mhub_status mhub_provider_meta_model(mhub_provider *p, mhub_chunk_list *out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider or out is NULL");
    memset(out, 0, sizeof *out);
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.wrap_with_ddp = false;
    o.init_model_with_meta_device = MHUB_TRUE;
    FILE *devnull = fopen("/dev/null", "w");
    o.log = devnull;
    mhub_status s = get_model_with(p, &o, p->pre_hooks.items, p->pre_hooks.count, out);
    if (devnull)
        fclose(devnull);
    return s;
}
