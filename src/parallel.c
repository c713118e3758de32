/* parallel.c - process groups laid out as Megatron-Core lays them out.
 *
 * A layout is two "rank generators" over the same order string: the dense
 * one over (tp, cp, ep=1, dp, pp) and the expert one over (etp, cp=1, ep,
 * edp, pp). Each generator views a rank as a mixed-radix number whose
 * digits are the axes in order, the leftmost digit varying fastest. A group
 * kind picks a set of axes (the "mask"): one group holds the ranks that
 * differ only in the masked digits, and the groups are enumerated over the
 * remaining digits - Megatron-Core's generate_masked_orthogonal_rank_groups,
 * reproduced from its description so that mhub's groups match its tables
 * rank for rank. mhub_parallel then turns the layout into one communicator
 * per group kind by splitting the world communicator; every rank computes
 * the same layout first, so bad sizes are rejected everywhere before any
 * message is sent. */
#include <cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mhub/parallel.h"

/* Axes in the order of the default order string "tp-cp-ep-dp-pp". */
enum { AX_TP, AX_CP, AX_EP, AX_DP, AX_PP, AX_COUNT };

static const char *const axis_names[AX_COUNT] = {"tp", "cp", "ep", "dp", "pp"};
/* The same axes as the expert generator calls them. */
static const char *const expert_axis_names[AX_COUNT] = {"etp", "cp", "ep", "edp", "pp"};

/* Megatron-Core appends the axes an order string omits in the order of its
 * name_to_size table; doing the same keeps the resolved strings alike. */
static const int append_order[AX_COUNT] = {AX_TP, AX_PP, AX_DP, AX_EP, AX_CP};

#define DEFAULT_ORDER "tp-cp-ep-dp-pp"
#define ORDER_CAP 32

typedef struct generator {
    int size[AX_COUNT];   /* indexed by axis */
    int stride[AX_COUNT]; /* product of the sizes of the axes before it in the order */
} generator;

typedef struct group_table {
    int count;
    int size;   /* every group of one kind has the same size */
    int *ranks; /* count * size */
    int *of;    /* per world rank: its group, or -1 */
} group_table;

struct mhub_layout {
    int world, dp, edp;
    mhub_parallel_sizes sizes; /* resolved; sizes.order points at `order` */
    char order[ORDER_CAP];
    int axes[AX_COUNT];        /* the axis at each position of the order */
    generator dense, expert;
    group_table groups[MHUB_GROUP_COUNT];
};

static const char *const group_names[MHUB_GROUP_COUNT] = {
    [MHUB_GROUP_TP] = "tp",
    [MHUB_GROUP_CP] = "cp",
    [MHUB_GROUP_DP] = "dp",
    [MHUB_GROUP_DP_CP] = "dp-cp",
    [MHUB_GROUP_PP] = "pp",
    [MHUB_GROUP_MP] = "mp",
    [MHUB_GROUP_TP_DP] = "tp-dp",
    [MHUB_GROUP_TP_CP] = "tp-cp",
    [MHUB_GROUP_TP_DP_CP] = "tp-dp-cp",
    [MHUB_GROUP_EMBEDDING] = "embedding",
    [MHUB_GROUP_POS_EMBEDDING] = "position-embedding",
    [MHUB_GROUP_EP] = "ep",
    [MHUB_GROUP_ETP] = "etp",
    [MHUB_GROUP_EDP] = "edp",
    [MHUB_GROUP_TP_EP] = "tp-ep",
    [MHUB_GROUP_TP_EP_PP] = "tp-ep-pp",
};

#define BIT(axis) (1u << (axis))

/* Which generator and which axes make each kind (Megatron's token). The
 * embedding kinds are derived from the pipeline groups instead. */
typedef struct group_recipe {
    bool expert;
    unsigned mask;
} group_recipe;

static const group_recipe recipes[MHUB_GROUP_COUNT] = {
    [MHUB_GROUP_TP] = {false, BIT(AX_TP)},
    [MHUB_GROUP_CP] = {false, BIT(AX_CP)},
    [MHUB_GROUP_DP] = {false, BIT(AX_DP)},
    [MHUB_GROUP_DP_CP] = {false, BIT(AX_DP) | BIT(AX_CP)},
    [MHUB_GROUP_PP] = {false, BIT(AX_PP)},
    [MHUB_GROUP_MP] = {false, BIT(AX_TP) | BIT(AX_PP)},
    [MHUB_GROUP_TP_DP] = {false, BIT(AX_TP) | BIT(AX_DP)},
    [MHUB_GROUP_TP_CP] = {false, BIT(AX_TP) | BIT(AX_CP)},
    [MHUB_GROUP_TP_DP_CP] = {false, BIT(AX_TP) | BIT(AX_DP) | BIT(AX_CP)},
    [MHUB_GROUP_EMBEDDING] = {false, 0},
    [MHUB_GROUP_POS_EMBEDDING] = {false, 0},
    [MHUB_GROUP_EP] = {true, BIT(AX_EP)},
    [MHUB_GROUP_ETP] = {true, BIT(AX_TP)},
    [MHUB_GROUP_EDP] = {true, BIT(AX_DP)},
    [MHUB_GROUP_TP_EP] = {true, BIT(AX_TP) | BIT(AX_EP)},
    [MHUB_GROUP_TP_EP_PP] = {true, BIT(AX_TP) | BIT(AX_EP) | BIT(AX_PP)},
};

const char *mhub_group_name(mhub_group_kind kind)
{
    if ((int)kind < 0 || kind >= MHUB_GROUP_COUNT)
        return "invalid";
    return group_names[kind];
}

static bool valid_kind(mhub_group_kind kind)
{
    return (int)kind >= 0 && kind < MHUB_GROUP_COUNT;
}

/* The helpers below report errors under the name of the public function
 * the caller called, not their own. */
#define LAYOUT_ERROR(code, ...) mhub_error_at((code), "mhub_layout_create", __VA_ARGS__)

/* ---- checking the sizes ---------------------------------------------- */

/* a*b*c, or -1 once it exceeds any int (then no int world divides it). */
static long long product3(int a, int b, int c)
{
    long long p = (long long)a * b;
    if (p > INT_MAX)
        return -1;
    p *= c;
    return p > INT_MAX ? -1 : p;
}

static mhub_status check_nonnegative(const mhub_parallel_sizes *s)
{
    const struct { const char *name; int value; } v[] = {
        {"tp", s->tp}, {"pp", s->pp}, {"cp", s->cp},
        {"ep", s->ep}, {"etp", s->etp}, {"vp", s->vp},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i].value < 0)
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                                "%s = %d is negative; a parallel size is >= 1 (0 means the "
                                "default)",
                                v[i].name, v[i].value);
    return MHUB_OK;
}

/* Divide `world` by a*b*c, explaining the arithmetic when it does not go. */
static mhub_status divide(const char *what, int world, const char *names, int a, int b, int c,
                          int *quotient)
{
    long long p = product3(a, b, c);
    if (p < 0)
        return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                            "%s %d is not divisible by %s = %d*%d*%d, which exceeds it", what,
                            world, names, a, b, c);
    if (world % p != 0)
        return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                            "%s %d is not divisible by %s = %d*%d*%d = %lld", what, world, names,
                            a, b, c, p);
    *quotient = (int)(world / p);
    return MHUB_OK;
}

/* ---- the order string ------------------------------------------------ */

static int axis_of_token(const char *tok, size_t len)
{
    for (int a = 0; a < AX_COUNT; a++)
        if (len == 2 && strncasecmp(tok, axis_names[a], 2) == 0)
            return a;
    return -1;
}

/* Split `text` into axes; *n gets how many it names. */
static mhub_status parse_order(const char *text, int axes[AX_COUNT], int *n)
{
    bool seen[AX_COUNT] = {false};
    *n = 0;
    if (!*text)
        return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                            "order '' is empty; name the axes like '" DEFAULT_ORDER "'");
    const char *p = text;
    for (;;) {
        size_t len = strcspn(p, "-");
        if (len == 0)
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                                "order '%s' is malformed: an empty axis name (axes are joined "
                                "by single '-', like '" DEFAULT_ORDER "')",
                                text);
        int a = axis_of_token(p, len);
        if (a < 0)
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                                "order '%s' names an unknown axis '%.*s' (the axes are tp, cp, "
                                "ep, dp, pp)",
                                text, (int)len, p);
        if (seen[a])
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG, "order '%s' names axis %s twice", text,
                                axis_names[a]);
        seen[a] = true;
        axes[(*n)++] = a;
        if (p[len] == '\0')
            return MHUB_OK;
        p += len + 1;
    }
}

/* Append the axes the order omits; an omitted axis must have size 1 in
 * both generators, since its place in the order would otherwise matter. */
static mhub_status complete_order(const char *text, const int dense[AX_COUNT],
                                  const int expert[AX_COUNT], int axes[AX_COUNT], int n)
{
    for (int i = 0; i < AX_COUNT; i++) {
        int a = append_order[i];
        bool named = false;
        for (int j = 0; j < n; j++)
            named = named || axes[j] == a;
        if (named)
            continue;
        if (dense[a] > 1)
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                                "order '%s' does not name %s, whose size is %d; an order must "
                                "name every axis of size > 1",
                                text, axis_names[a], dense[a]);
        if (expert[a] > 1)
            return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                                "order '%s' does not name %s, whose expert size (%s) is %d; an "
                                "order must name every axis of size > 1",
                                text, axis_names[a], expert_axis_names[a], expert[a]);
        axes[n++] = a;
    }
    return MHUB_OK;
}

static void format_order(const int axes[AX_COUNT], char out[ORDER_CAP])
{
    out[0] = '\0';
    for (int i = 0; i < AX_COUNT; i++) {
        if (i > 0)
            strcat(out, "-");
        strcat(out, axis_names[axes[i]]);
    }
}

/* ---- generators and groups ------------------------------------------- */

static void init_generator(generator *g, const int sizes[AX_COUNT], const int axes[AX_COUNT])
{
    int stride = 1;
    for (int i = 0; i < AX_COUNT; i++) {
        int a = axes[i];
        g->size[a] = sizes[a];
        g->stride[a] = stride;
        stride *= sizes[a];
    }
}

/* Spread `index` over the axes selected by `want_masked` (first axis of
 * the order fastest) and return the rank offset those digits stand for. */
static int offset_of(const generator *g, const int axes[AX_COUNT], unsigned mask,
                     bool want_masked, int index)
{
    int offset = 0;
    for (int i = 0; i < AX_COUNT; i++) {
        int a = axes[i];
        if (((mask & BIT(a)) != 0) != want_masked)
            continue;
        offset += (index % g->size[a]) * g->stride[a];
        index /= g->size[a];
    }
    return offset;
}

static mhub_status alloc_table(group_table *t, int world, int count, int size)
{
    t->count = count;
    t->size = size;
    t->ranks = malloc((size_t)count * (size_t)size * sizeof *t->ranks);
    t->of = malloc((size_t)world * sizeof *t->of);
    if (!t->ranks || !t->of)
        return LAYOUT_ERROR(MHUB_ERR_NO_MEMORY, "no memory for the groups of a world of %d ranks",
                            world);
    for (int r = 0; r < world; r++)
        t->of[r] = -1;
    return MHUB_OK;
}

static mhub_status build_masked(mhub_layout *l, mhub_group_kind kind)
{
    const group_recipe *rc = &recipes[kind];
    const generator *g = rc->expert ? &l->expert : &l->dense;
    int size = 1;
    for (int a = 0; a < AX_COUNT; a++)
        if (rc->mask & BIT(a))
            size *= g->size[a];
    group_table *t = &l->groups[kind];
    MHUB_TRY(alloc_table(t, l->world, l->world / size, size));
    for (int gi = 0; gi < t->count; gi++) {
        int base = offset_of(g, l->axes, rc->mask, false, gi);
        for (int j = 0; j < size; j++) {
            int r = base + offset_of(g, l->axes, rc->mask, true, j);
            t->ranks[gi * size + j] = r;
            t->of[r] = gi;
        }
    }
    return MHUB_OK;
}

/* Embedding groups join the first and last stage of each pipeline group
 * (one rank when pp == 1); position-embedding groups the first only. */
static mhub_status build_embedding(mhub_layout *l, mhub_group_kind kind)
{
    const group_table *pp = &l->groups[MHUB_GROUP_PP];
    int size = kind == MHUB_GROUP_EMBEDDING && pp->size > 1 ? 2 : 1;
    group_table *t = &l->groups[kind];
    MHUB_TRY(alloc_table(t, l->world, pp->count, size));
    for (int gi = 0; gi < pp->count; gi++) {
        const int *stages = pp->ranks + gi * pp->size;
        int members[2] = {stages[0], stages[pp->size - 1]};
        for (int j = 0; j < size; j++) {
            t->ranks[gi * size + j] = members[j];
            t->of[members[j]] = gi;
        }
    }
    return MHUB_OK;
}

/* Megatron-Core requires both generators to agree on the pipelines: an
 * expert layer's stage must be the same rank set as its dense layer's. */
static mhub_status check_pipelines(const mhub_layout *l)
{
    if (l->dense.stride[AX_PP] == l->expert.stride[AX_PP])
        return MHUB_OK;
    return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                        "order '%s' gives different pipeline groups to dense layers (ranks %d "
                        "apart) and expert layers (ranks %d apart); the product of the sizes "
                        "before pp must agree (tp*cp vs etp*ep) or pp must come last",
                        l->order, l->dense.stride[AX_PP], l->expert.stride[AX_PP]);
}

/* Megatron's "pp-last" rule: when an axis of size > 1 follows pp, dense
 * and expert data-parallel sizes must match. */
static mhub_status check_pp_last(const mhub_layout *l)
{
    bool after_pp = false, pp_last = true;
    for (int i = 0; i < AX_COUNT; i++) {
        int a = l->axes[i];
        if (after_pp && (l->dense.size[a] > 1 || l->expert.size[a] > 1))
            pp_last = false;
        after_pp = after_pp || a == AX_PP;
    }
    if (pp_last || l->sizes.pp == 1 || l->dp == l->edp)
        return MHUB_OK;
    return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                        "order '%s' does not put pp last, so dense dp (%d) and expert dp "
                        "(world/(etp*ep*pp) = %d) must be equal",
                        l->order, l->dp, l->edp);
}

/* ---- the layout -------------------------------------------------------- */

static int or_one(int v) { return v == 0 ? 1 : v; }

static mhub_status resolve_sizes(int world, const mhub_parallel_sizes *in, mhub_layout *l)
{
    MHUB_TRY(check_nonnegative(in));
    mhub_parallel_sizes *s = &l->sizes;
    s->tp = or_one(in->tp);
    s->pp = or_one(in->pp);
    s->cp = or_one(in->cp);
    s->ep = or_one(in->ep);
    s->etp = in->etp == 0 ? s->tp : in->etp;
    s->vp = in->vp;
    if (s->vp > 0 && s->pp <= 1)
        return LAYOUT_ERROR(MHUB_ERR_INVALID_ARG,
                            "pipeline-model-parallel size should be greater than 1 with "
                            "interleaved schedule (vp = %d, pp = %d)",
                            s->vp, s->pp);
    MHUB_TRY(divide("world size", world, "tp*cp*pp", s->tp, s->cp, s->pp, &l->dp));
    return divide("expert world size", world, "etp*ep*pp", s->etp, s->ep, s->pp, &l->edp);
}

static mhub_status resolve_order(const char *text, mhub_layout *l)
{
    const mhub_parallel_sizes *s = &l->sizes;
    int dense[AX_COUNT] = {[AX_TP] = s->tp, [AX_CP] = s->cp, [AX_EP] = 1,
                           [AX_DP] = l->dp, [AX_PP] = s->pp};
    int expert[AX_COUNT] = {[AX_TP] = s->etp, [AX_CP] = 1, [AX_EP] = s->ep,
                            [AX_DP] = l->edp, [AX_PP] = s->pp};
    int n = 0;
    MHUB_TRY(parse_order(text, l->axes, &n));
    MHUB_TRY(complete_order(text, dense, expert, l->axes, n));
    format_order(l->axes, l->order);
    l->sizes.order = l->order;
    init_generator(&l->dense, dense, l->axes);
    init_generator(&l->expert, expert, l->axes);
    return MHUB_OK;
}

static mhub_status build_groups(mhub_layout *l)
{
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_group_kind kind = (mhub_group_kind)k;
        if (kind == MHUB_GROUP_EMBEDDING || kind == MHUB_GROUP_POS_EMBEDDING)
            continue;
        MHUB_TRY(build_masked(l, kind));
    }
    MHUB_TRY(build_embedding(l, MHUB_GROUP_EMBEDDING));
    return build_embedding(l, MHUB_GROUP_POS_EMBEDDING);
}

mhub_status mhub_layout_create(int world, const mhub_parallel_sizes *sizes, mhub_layout **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!sizes)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "sizes is NULL; pass a zeroed mhub_parallel_sizes for the defaults");
    if (world < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "world size %d is not positive", world);
    mhub_layout *l = calloc(1, sizeof *l);
    if (!l)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for a layout");
    l->world = world;
    mhub_status st = resolve_sizes(world, sizes, l);
    if (st == MHUB_OK)
        st = resolve_order(sizes->order ? sizes->order : DEFAULT_ORDER, l);
    if (st == MHUB_OK)
        st = check_pp_last(l);
    if (st == MHUB_OK)
        st = check_pipelines(l);
    if (st == MHUB_OK)
        st = build_groups(l);
    if (st != MHUB_OK) {
        mhub_layout_free(l);
        return st;
    }
    *out = l;
    return MHUB_OK;
}

void mhub_layout_free(mhub_layout *l)
{
    if (!l)
        return;
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        free(l->groups[k].ranks);
        free(l->groups[k].of);
    }
    free(l);
}

int mhub_layout_world(const mhub_layout *l) { return l ? l->world : 0; }

const mhub_parallel_sizes *mhub_layout_sizes(const mhub_layout *l)
{
    return l ? &l->sizes : NULL;
}

int mhub_layout_dp(const mhub_layout *l) { return l ? l->dp : 0; }

int mhub_layout_edp(const mhub_layout *l) { return l ? l->edp : 0; }

int mhub_layout_group_count(const mhub_layout *l, mhub_group_kind kind)
{
    return l && valid_kind(kind) ? l->groups[kind].count : 0;
}

int mhub_layout_group_size(const mhub_layout *l, mhub_group_kind kind, int i)
{
    if (!l || !valid_kind(kind) || i < 0 || i >= l->groups[kind].count)
        return 0;
    return l->groups[kind].size;
}

const int *mhub_layout_group_ranks(const mhub_layout *l, mhub_group_kind kind, int i)
{
    if (!l || !valid_kind(kind) || i < 0 || i >= l->groups[kind].count)
        return NULL;
    return l->groups[kind].ranks + (size_t)i * (size_t)l->groups[kind].size;
}

int mhub_layout_group_of(const mhub_layout *l, mhub_group_kind kind, int rank)
{
    if (!l || !valid_kind(kind) || rank < 0 || rank >= l->world)
        return -1;
    return l->groups[kind].of[rank];
}

static int digit(const generator *g, int axis, int rank)
{
    return (rank / g->stride[axis]) % g->size[axis];
}

mhub_status mhub_layout_coords(const mhub_layout *l, int rank, mhub_rank_coords *out)
{
    if (!l || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "layout or out is NULL");
    if (rank < 0 || rank >= l->world)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "rank %d is outside the world [0, %d)", rank,
                          l->world);
    out->tp = digit(&l->dense, AX_TP, rank);
    out->cp = digit(&l->dense, AX_CP, rank);
    out->dp = digit(&l->dense, AX_DP, rank);
    out->pp = digit(&l->dense, AX_PP, rank);
    out->etp = digit(&l->expert, AX_TP, rank);
    out->ep = digit(&l->expert, AX_EP, rank);
    out->edp = digit(&l->expert, AX_DP, rank);
    return MHUB_OK;
}

/* ---- JSON -------------------------------------------------------------- */

static bool add_int(cJSON *obj, const char *key, int v)
{
    return cJSON_AddNumberToObject(obj, key, v) != NULL;
}

static cJSON *sizes_json(const mhub_layout *l)
{
    const mhub_parallel_sizes *s = &l->sizes;
    cJSON *o = cJSON_CreateObject();
    bool ok = o && add_int(o, "tp", s->tp) && add_int(o, "cp", s->cp) &&
              add_int(o, "pp", s->pp) && add_int(o, "dp", l->dp) &&
              add_int(o, "ep", s->ep) && add_int(o, "etp", s->etp) &&
              add_int(o, "edp", l->edp) && add_int(o, "vp", s->vp) &&
              cJSON_AddStringToObject(o, "order", l->order) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *groups_json(const group_table *t)
{
    cJSON *arr = cJSON_CreateArray();
    for (int gi = 0; arr && gi < t->count; gi++) {
        cJSON *g = cJSON_CreateIntArray(t->ranks + (size_t)gi * (size_t)t->size, t->size);
        if (!g || !cJSON_AddItemToArray(arr, g)) {
            cJSON_Delete(g);
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

static bool add_item(cJSON *obj, const char *key, cJSON *item)
{
    if (!item)
        return false;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

mhub_status mhub_layout_to_json(const mhub_layout *l, char **out)
{
    if (!l || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "layout or out is NULL");
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    bool ok = root && add_int(root, "world", l->world) && add_item(root, "sizes", sizes_json(l));
    for (int k = 0; ok && k < MHUB_GROUP_COUNT; k++)
        ok = add_item(root, group_names[k], groups_json(&l->groups[k]));
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for the JSON of a %d-rank layout",
                          l->world);
    *out = text;
    return MHUB_OK;
}

/* ---- communicators ------------------------------------------------------ */

struct mhub_parallel {
    mhub_layout *layout;
    mhub_comm *world;
    mhub_comm *comms[MHUB_GROUP_COUNT];
    mhub_rank_coords coords;
};

static int position_in_group(const mhub_layout *l, mhub_group_kind kind, int group, int rank)
{
    const group_table *t = &l->groups[kind];
    const int *ranks = t->ranks + (size_t)group * (size_t)t->size;
    for (int j = 0; j < t->size; j++)
        if (ranks[j] == rank)
            return j;
    return -1;
}

/* Split one communicator per kind. Every rank makes every split, even
 * after a local failure (with color -1), so no rank is left waiting in a
 * split the others never reach. Returns the first local failure. */
static mhub_status split_all(mhub_comm *world, const mhub_layout *l,
                             mhub_comm *comms[MHUB_GROUP_COUNT], char *msg, size_t cap)
{
    mhub_status first = MHUB_OK;
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_group_kind kind = (mhub_group_kind)k;
        int color = first == MHUB_OK ? mhub_layout_group_of(l, kind, world->rank) : -1;
        int key = color >= 0 ? position_in_group(l, kind, color, world->rank) : 0;
        mhub_status st = mhub_comm_split(world, color, key, group_names[k], &comms[k]);
        if (st != MHUB_OK && first == MHUB_OK) {
            first = st;
            snprintf(msg, cap, "%s", mhub_last_error());
        }
    }
    return first;
}

static void free_comms(mhub_comm *comms[MHUB_GROUP_COUNT])
{
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_comm_free(comms[k]);
        comms[k] = NULL;
    }
}

/* All ranks learn whether any rank failed, so they all return alike. */
static bool any_rank_failed(mhub_comm *world, bool failed)
{
    float mine = failed ? 1.0f : 0.0f, any = 1.0f;
    if (mhub_comm_allreduce(world, &mine, &any, 1, MHUB_F32, MHUB_MAX) != MHUB_OK)
        return true;
    return any != 0.0f;
}

mhub_status mhub_parallel_create(mhub_comm *world, const mhub_parallel_sizes *sizes,
                                 mhub_parallel **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!world)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "world communicator is NULL");
    char msg[512] = "";
    mhub_layout *l = NULL;
    mhub_status st = mhub_layout_create(world->size, sizes, &l);
    /* Bad sizes fail identically on every rank, before any communication. */
    if (st == MHUB_ERR_INVALID_ARG)
        return st;
    /* Any other failure from here on may be this rank's alone (memory):
     * take part in every collective anyway, in no group, and agree on the
     * outcome at the end. */
    if (st != MHUB_OK)
        snprintf(msg, sizeof msg, "%s", mhub_last_error());
    mhub_parallel *p = st == MHUB_OK ? calloc(1, sizeof *p) : NULL;
    if (st == MHUB_OK && !p) {
        st = MHUB_ERR_NO_MEMORY;
        snprintf(msg, sizeof msg, "no memory for mhub_parallel");
    }
    mhub_comm *comms[MHUB_GROUP_COUNT] = {NULL};
    char split_msg[512] = "";
    mhub_status split_st =
        split_all(world, st == MHUB_OK ? l : NULL, comms, split_msg, sizeof split_msg);
    if (st == MHUB_OK && split_st != MHUB_OK) {
        st = split_st;
        memcpy(msg, split_msg, sizeof msg);
    }
    if (any_rank_failed(world, st != MHUB_OK)) {
        free_comms(comms);
        mhub_layout_free(l);
        free(p);
        if (st != MHUB_OK)
            return MHUB_ERROR(st, "%s", msg);
        return MHUB_ERROR(MHUB_ERR_COMM,
                          "another rank failed to create its process groups (this rank, %d, "
                          "succeeded)",
                          world->rank);
    }
    p->layout = l;
    p->world = world;
    memcpy(p->comms, comms, sizeof comms);
    mhub_layout_coords(l, world->rank, &p->coords);
    *out = p;
    return MHUB_OK;
}

void mhub_parallel_free(mhub_parallel *p)
{
    if (!p)
        return;
    free_comms(p->comms);
    mhub_layout_free(p->layout);
    free(p);
}

const mhub_layout *mhub_parallel_layout(const mhub_parallel *p) { return p ? p->layout : NULL; }

mhub_comm *mhub_parallel_world(const mhub_parallel *p) { return p ? p->world : NULL; }

mhub_comm *mhub_parallel_comm(const mhub_parallel *p, mhub_group_kind kind)
{
    return p && valid_kind(kind) ? p->comms[kind] : NULL;
}

int mhub_parallel_rank(const mhub_parallel *p, mhub_group_kind kind)
{
    mhub_comm *c = mhub_parallel_comm(p, kind);
    return c ? c->rank : -1;
}

int mhub_parallel_size(const mhub_parallel *p, mhub_group_kind kind)
{
    mhub_comm *c = mhub_parallel_comm(p, kind);
    return c ? c->size : 0;
}

const mhub_rank_coords *mhub_parallel_coords(const mhub_parallel *p)
{
    return p ? &p->coords : NULL;
}

bool mhub_parallel_is_first_stage(const mhub_parallel *p)
{
    return p && p->coords.pp == 0;
}

bool mhub_parallel_is_last_stage(const mhub_parallel *p)
{
    return p && p->coords.pp == p->layout->sizes.pp - 1;
}
