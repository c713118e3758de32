/* comm_internal.h - what communicator implementations share with comm.c. */
#ifndef MHUB_COMM_INTERNAL_H
#define MHUB_COMM_INTERNAL_H

#include "mhub/comm.h"

/* The finish step of a completed request, on the host: MHUB_AVG's
 * division of finish_buf by finish_divisor (then nothing is left to do:
 * the divisor becomes 1). mhub_request_wait and mhub_request_test run it;
 * a communicator wrapping another runs it itself when the buffer is
 * only reachable inside its own calls. */
void mhub_request_finish_host(mhub_request *req);

#endif
