/* cuda_absent.c - the CUDA entry points of a build without --with-cuda.
 *
 * Programs call the same functions whether or not the backend was built;
 * here each says why it cannot work, so `mhub train --backend cuda` on
 * such a build is a clear error rather than a link failure. */
#include <stdio.h>

#include "mhub/backend.h"
#include "mhub/comm.h"

#define NOT_BUILT "mhub was built without the CUDA backend (configure --with-cuda to build it)"

bool mhub_cuda_available(char *why, size_t len)
{
    if (why && len > 0)
        snprintf(why, len, "%s", NOT_BUILT);
    return false;
}

mhub_status mhub_cuda_backend_create(const mhub_cuda_options *opts, mhub_backend **out)
{
    (void)opts;
    if (out)
        *out = NULL;
    return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, NOT_BUILT);
}

mhub_status mhub_cuda_backend_set_matmul(mhub_backend *be, mhub_matmul_precision p)
{
    (void)be;
    (void)p;
    return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, NOT_BUILT);
}

int mhub_cuda_backend_device(const mhub_backend *be)
{
    (void)be;
    return -1;
}

mhub_status mhub_comm_create_nccl(const void *mpi_comm, mhub_backend *be, const char *name,
                                  mhub_comm **out)
{
    (void)mpi_comm;
    (void)be;
    (void)name;
    if (out)
        *out = NULL;
    return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, NOT_BUILT);
}
