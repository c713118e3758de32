/* shm_internal.h - the MPI communicator's intra-node shared-memory half.
 *
 * mpi_comm.c owns the communicator; shm_comm.c owns the memory that
 * mhub_comm_alloc hands out on one node (slots of MPI-3 shared-memory
 * windows) and the all-reduce that runs over it. The state is per
 * communicator and created by the first alloc. Not installed; not public API. */
#ifndef MHUB_SHM_INTERNAL_H
#define MHUB_SHM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "mhub/comm.h"

/* One communicator's windows and its node decision (opaque). */
typedef struct mhub_shm mhub_shm;

/* ops->alloc for the MPI communicator `c` wrapping `comm`. Collective over
 * comm. Creates *state on first use (it stays, even after a failure, to
 * remember the node decision). MHUB_ERR_UNSUPPORTED when the ranks span
 * several nodes or the table of windows is full. */
mhub_status mhub_shm_alloc(mhub_comm *c, MPI_Comm comm, mhub_shm **state, size_t bytes,
                           void **out);

/* ops->free_mem: collective when `ptr` is a slot this rank got from
 * mhub_shm_alloc; anything else records an error and frees nothing. */
void mhub_shm_free(mhub_comm *c, mhub_shm *state, void *ptr);

/* Free every window and the state itself (state may be NULL). With
 * mpi_alive false (after MPI_Finalize) only our own memory is freed. */
void mhub_shm_destroy(mhub_shm *state, bool mpi_alive);

/* An in-place f32 sum of buf[0, count) over the communicator, divided by
 * `divisor` (1 for a sum, the size for an average). When the
 * range lies inside this rank's slot of one of the windows, runs the
 * shared-memory algorithm to completion and sets *used; otherwise touches
 * nothing and clears *used, and the caller takes another path. Every rank
 * must pass the same offset into its slot and the same count. */
mhub_status mhub_shm_allreduce(mhub_comm *c, mhub_shm *state, float *buf, int64_t count,
                               float divisor, bool *used);

#endif
