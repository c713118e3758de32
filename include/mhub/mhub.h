/* mhub.h - everything public in one include. */
#ifndef MHUB_MHUB_H
#define MHUB_MHUB_H

#include "mhub/status.h"
#include "mhub/dtype.h"
#include "mhub/tensor.h"
#include "mhub/backend.h"
#include "mhub/comm.h"
#include "mhub/rng.h"
#include "mhub/parallel.h"
#include "mhub/module.h"
#include "mhub/optim.h"
#include "mhub/synthetic.h"
#include "mhub/mlp.h"
#include "mhub/digest.h"
#include "mhub/sampler.h"
#include "mhub/dataset.h"
#include "mhub/ddp.h"
#include "mhub/engine.h"
#include "mhub/fsdp.h"
#include "mhub/distopt.h"
#include "mhub/config.h"
#include "mhub/provider.h"
#include "mhub/gpt.h"
#include "mhub/safetensors.h"
#include "mhub/checkpoint.h"

#endif
