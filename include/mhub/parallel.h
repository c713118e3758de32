/* parallel.h - process groups, as Megatron-Core's initialize_model_parallel.
 *
 * Two layers:
 *   - mhub_layout: pure arithmetic, no MPI. From a world size and the
 *     parallel sizes it lists the ranks of every group. `mhub layout` prints
 *     it; tests compare it with Megatron-Core's tables.
 *   - mhub_parallel: the layout made real for one rank: a communicator for
 *     each group this rank belongs to (split from a world communicator).
 *
 * Rank order: the order string names the axes, the leftmost varying
 * fastest. With the default "tp-cp-ep-dp-pp" the dense ("decoder") ranks
 * decompose as rank = tp + TP*(cp + CP*(dp + DP*pp)) (ep is 1 for dense
 * groups). Expert groups come from a second generator over
 * (etp, ep, edp, pp) with cp = 1, where edp = world / (etp*ep*pp), as in
 * Megatron-Core. */
#ifndef MHUB_PARALLEL_H
#define MHUB_PARALLEL_H

#include <stdbool.h>

#include "mhub/comm.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_parallel_sizes {
    int tp;            /* tensor parallel; 0 means 1 */
    int pp;            /* pipeline parallel; 0 means 1 */
    int cp;            /* context parallel; 0 means 1 */
    int ep;            /* expert parallel; 0 means 1 */
    int etp;           /* expert tensor parallel; 0 means "same as tp" */
    int vp;            /* virtual pipeline stages per rank; 0 = none (needs pp > 1) */
    const char *order; /* NULL means "tp-cp-ep-dp-pp" */
} mhub_parallel_sizes;

typedef enum mhub_group_kind {
    MHUB_GROUP_TP = 0,        /* tensor parallel */
    MHUB_GROUP_CP,            /* context parallel */
    MHUB_GROUP_DP,            /* data parallel */
    MHUB_GROUP_DP_CP,         /* data x context parallel (gradient reduction) */
    MHUB_GROUP_PP,            /* pipeline */
    MHUB_GROUP_MP,            /* model parallel: tp x pp */
    MHUB_GROUP_TP_DP,         /* tp x dp */
    MHUB_GROUP_TP_CP,         /* tp x cp */
    MHUB_GROUP_TP_DP_CP,      /* tp x dp x cp */
    MHUB_GROUP_EMBEDDING,     /* first and last stage of each pp group */
    MHUB_GROUP_POS_EMBEDDING, /* first stage of each pp group */
    MHUB_GROUP_EP,            /* expert parallel */
    MHUB_GROUP_ETP,           /* expert tensor parallel */
    MHUB_GROUP_EDP,           /* expert data parallel */
    MHUB_GROUP_TP_EP,         /* expert tp x ep */
    MHUB_GROUP_TP_EP_PP,      /* expert tp x ep x pp */
    MHUB_GROUP_COUNT
} mhub_group_kind;

/* "tp", "cp", "dp", "dp-cp", "pp", "mp", "tp-dp", "tp-cp", "tp-dp-cp",
 * "embedding", "position-embedding", "ep", "etp", "edp", "tp-ep",
 * "tp-ep-pp". */
const char *mhub_group_name(mhub_group_kind kind);

typedef struct mhub_rank_coords {
    int tp, cp, dp, pp;       /* dense generator */
    int etp, ep, edp;         /* expert generator */
} mhub_rank_coords;

typedef struct mhub_layout mhub_layout;

/* Check the sizes against `world` and build every group. A world the
 * sizes do not divide, a size < 0, vp without pp > 1, or an order string
 * that is malformed, repeats an axis or lacks an axis whose size is > 1,
 * NULL sizes, and the expert generator's consistency rules of
 * Megatron-Core (its pp groups must equal the dense ones; with pp not
 * last in the order, edp must equal dp) are MHUB_ERR_INVALID_ARG with a
 * message that shows the arithmetic. */
mhub_status mhub_layout_create(int world, const mhub_parallel_sizes *sizes,
                               mhub_layout **out);
void mhub_layout_free(mhub_layout *l);

int mhub_layout_world(const mhub_layout *l);
/* The resolved sizes (zeros replaced, etp filled in, order filled in);
 * the order string belongs to the layout and lives as long as it. */
const mhub_parallel_sizes *mhub_layout_sizes(const mhub_layout *l);
int mhub_layout_dp(const mhub_layout *l);
int mhub_layout_edp(const mhub_layout *l);

/* Groups of one kind: count, and the ranks of group i (ascending within
 * the group in generator order, as Megatron-Core lists them). */
int mhub_layout_group_count(const mhub_layout *l, mhub_group_kind kind);
int mhub_layout_group_size(const mhub_layout *l, mhub_group_kind kind, int i);
const int *mhub_layout_group_ranks(const mhub_layout *l, mhub_group_kind kind, int i);
/* Index of the group of `kind` that holds `rank`, or -1 (a rank may be in
 * no embedding group, for example). */
int mhub_layout_group_of(const mhub_layout *l, mhub_group_kind kind, int rank);
mhub_status mhub_layout_coords(const mhub_layout *l, int rank, mhub_rank_coords *out);

/* The layout as a JSON object: {"world":8,"tp":[[0,1],...],"pp":...,
 * "dp":...,"cp":...,"ep":...} plus the other groups. Caller free()s *out. */
mhub_status mhub_layout_to_json(const mhub_layout *l, char **out);

typedef struct mhub_parallel mhub_parallel;

/* Collective over `world`: every rank must call it with the same sizes.
 * Bad sizes fail on every rank alike (before any communication), so no
 * rank is left waiting. `world` must outlive the result. */
mhub_status mhub_parallel_create(mhub_comm *world, const mhub_parallel_sizes *sizes,
                                 mhub_parallel **out);
void mhub_parallel_free(mhub_parallel *p);

const mhub_layout *mhub_parallel_layout(const mhub_parallel *p);
mhub_comm *mhub_parallel_world(const mhub_parallel *p);
/* This rank's communicator for a group, or NULL if the rank is in no group
 * of that kind. */
mhub_comm *mhub_parallel_comm(const mhub_parallel *p, mhub_group_kind kind);
/* This rank's rank in / size of the group; -1 / 0 when in none. */
int mhub_parallel_rank(const mhub_parallel *p, mhub_group_kind kind);
int mhub_parallel_size(const mhub_parallel *p, mhub_group_kind kind);
/* This rank's coordinates. */
const mhub_rank_coords *mhub_parallel_coords(const mhub_parallel *p);
bool mhub_parallel_is_first_stage(const mhub_parallel *p);
bool mhub_parallel_is_last_stage(const mhub_parallel *p);

#ifdef __cplusplus
}
#endif
#endif
