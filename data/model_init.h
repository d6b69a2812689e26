// model_init.h: `sdc init-model`: a diffusers folder whose UNet and text
// encoder(s) are initialised from scratch (src/models/init.h) from a config
// folder, with a trained VAE's weights; what `sdc train` starts from when a
// model is trained from scratch (issue 16).
#ifndef SDC_MODEL_INIT_H
#define SDC_MODEL_INIT_H

#include "core/error.h"
#include "models/init.h"

int model_init_folder(const ModelInitOpts *o, SdcError *err);

#endif
