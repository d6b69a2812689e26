// manifest.c: protobuf text-format output and validation of a Job (see
// manifest.h).
#include "jobs/manifest.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "data/synth.h"
#include "io/lora.h"
#include "sampling/scheduler.h"

static void print_indent(FILE *f, int n) {
    for (int i = 0; i < n; i++) fputs("  ", f);
}

static void print_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p < 0x20) fprintf(f, "\\%03o", *p);
        else fputc(*p, f); // UTF-8 passes through, as protoc prints it
    }
    fputc('"', f);
}

// Prints one value of a field; returns 0 when it is the proto3 default and
// was skipped (only for singular fields).
static int print_value(FILE *f, const ProtobufCFieldDescriptor *fd, const void *v, int indent, int skip_default) {
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: {
        int32_t x = *(const int32_t *)v;
        if (skip_default && x == 0) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: %" PRId32 "\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        uint32_t x = *(const uint32_t *)v;
        if (skip_default && x == 0) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: %" PRIu32 "\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
        int64_t x = *(const int64_t *)v;
        if (skip_default && x == 0) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: %" PRId64 "\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t x = *(const uint64_t *)v;
        if (skip_default && x == 0) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: %" PRIu64 "\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        float x = *(const float *)v;
        if (skip_default && x == 0.0f) return 0;
        print_indent(f, indent);
        if (isnan(x)) fprintf(f, "%s: nan\n", fd->name); // as protoc: "-nan" would read back as nan
        else fprintf(f, "%s: %.9g\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double x = *(const double *)v;
        if (skip_default && x == 0.0) return 0;
        print_indent(f, indent);
        if (isnan(x)) fprintf(f, "%s: nan\n", fd->name);
        else fprintf(f, "%s: %.17g\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean x = *(const protobuf_c_boolean *)v;
        if (skip_default && !x) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: %s\n", fd->name, x ? "true" : "false");
        return 1;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int x = *(const int *)v;
        if (skip_default && x == 0) return 0;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, x);
        print_indent(f, indent);
        if (ev) fprintf(f, "%s: %s\n", fd->name, ev->name);
        else fprintf(f, "%s: %d\n", fd->name, x);
        return 1;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *x = *(const char *const *)v;
        if (skip_default && (!x || !*x)) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: ", fd->name);
        print_string(f, x ? x : "");
        fputc('\n', f);
        return 1;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = v;
        if (skip_default && b->len == 0) return 0;
        print_indent(f, indent);
        fprintf(f, "%s: \"", fd->name);
        for (size_t i = 0; i < b->len; i++) fprintf(f, "\\%03o", b->data[i]);
        fputs("\"\n", f);
        return 1;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)v;
        if (!m) return 0;
        print_indent(f, indent);
        fprintf(f, "%s {\n", fd->name);
        manifest_print_text(f, m, indent + 1);
        print_indent(f, indent);
        fputs("}\n", f);
        return 1;
    }
    }
    return 0;
}

static size_t field_elem_size(const ProtobufCFieldDescriptor *fd) {
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    default: return 4;
    }
}

int manifest_field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *fd) {
    const char *base = (const char *)msg;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) return *(const size_t *)(base + fd->quantifier_offset) > 0;
    if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) return *(const uint32_t *)(base + fd->quantifier_offset) == fd->id;
    if (fd->type == PROTOBUF_C_TYPE_MESSAGE || fd->type == PROTOBUF_C_TYPE_STRING) {
        const void *p = *(const void *const *)(base + fd->offset);
        return p && p != fd->default_value;
    }
    if (fd->label == PROTOBUF_C_LABEL_OPTIONAL) return *(const protobuf_c_boolean *)(base + fd->quantifier_offset);
    return 1; // required, or proto3 (print_value skips zero values)
}

void manifest_print_text(FILE *f, const ProtobufCMessage *msg, int indent) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        const char *base = (const char *)msg;
        if (!manifest_field_present(msg, fd)) continue;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + fd->quantifier_offset);
            const char *arr = *(const char *const *)(base + fd->offset);
            for (size_t k = 0; k < n; k++) print_value(f, fd, arr + k * field_elem_size(fd), indent, 0);
        } else {
            print_value(f, fd, base + fd->offset, indent, fd->label == PROTOBUF_C_LABEL_NONE);
        }
    }
}

int manifest_validate(const Sdc__Job *job, SdcError *err) {
    if (job->task == SDC__TASK__TASK_UNSPECIFIED)
        return sdc_err(err, SDC_ERR_ARG, "manifest: field 'task' is not set ---> e.g. task: TASK_GENERATE");
    // dataset import and convert check their own messages (data/); their
    // model, when they take one, is checked where it is opened
    if (job->task == SDC__TASK__TASK_DATASET_IMPORT || job->task == SDC__TASK__TASK_CONVERT ||
        job->task == SDC__TASK__TASK_TRAIN_VAE) // jobs/vae_runner.c checks its own
        return 0;
    if (job->task == SDC__TASK__TASK_INIT_MODEL) {
        const Sdc__InitModel *m = job->init_model;
        if (!m || !m->config_dir || !m->config_dir[0] || !m->output || !m->output[0])
            return sdc_err(err, SDC_ERR_ARG, "manifest: init_model needs config_dir and output ---> sdc init-model "
                           "--config DIR --vae MODEL -o OUT");
        return 0;
    }
    if (job->task == SDC__TASK__TASK_DATASET_SCORE) {
        if (!job->dataset_score || !job->dataset_score->n_inputs)
            return sdc_err(err, SDC_ERR_ARG, "manifest: dataset_score.inputs is empty ---> name generation outputs "
                           "(.h5)");
        return 0;
    }
    if (job->task == SDC__TASK__TASK_DATASET_SYNTH) {
        const Sdc__DatasetSynth *d = job->dataset_synth;
        SynthSplit sp;
        if (!d) return sdc_err(err, SDC_ERR_ARG, "manifest: TASK_DATASET_SYNTH without a dataset_synth message");
        if (d->split && synth_split_parse(d->split, &sp))
            return sdc_err(err, SDC_ERR_ARG, "manifest: dataset_synth.split '%s'; expected train, heldout, all, subject or varied",
                           d->split);
        if (d->count < 1 || d->count > ((int64_t)1 << 31))
            return sdc_err(err, SDC_ERR_ARG, "manifest: dataset_synth.count %lld; expected 1 to 2^31",
                           (long long)d->count);
        if (d->resolution < 8 || d->resolution > 8192)
            return sdc_err(err, SDC_ERR_ARG, "manifest: dataset_synth.resolution %d; expected 8 to 8192",
                           d->resolution);
        if (d->latents_dtype && strcmp(d->latents_dtype, "f32") && strcmp(d->latents_dtype, "f16"))
            return sdc_err(err, SDC_ERR_ARG, "manifest: dataset_synth.latents_dtype '%s'; expected f32 or f16",
                           d->latents_dtype);
        return 0;
    }
    if (!job->model || !job->model->path || !job->model->path[0])
        return sdc_err(err, SDC_ERR_ARG, "manifest: field 'model.path' is empty ---> pass -m MODEL "
                                         "(a .safetensors file or a diffusers folder)");
    if (job->model->clip_skip < 0)
        return sdc_err(err, SDC_ERR_ARG, "manifest: model.clip_skip is %d; expected 0 (default) or more",
                       job->model->clip_skip);
    for (size_t i = 0; i < job->model->n_lora; i++) {
        LoraSpec spec;
        if (lora_spec_parse(job->model->lora[i], &spec, err))
            return sdc_err_wrap(err, "manifest: model.lora[%zu]", i);
    }
    const char *pt = job->model->prediction_type;
    if (pt && pt[0] && strcmp(pt, "epsilon") && strcmp(pt, "v_prediction"))
        return sdc_err(err, SDC_ERR_ARG, "manifest: model.prediction_type '%s'; expected epsilon or v_prediction",
                       pt);
    if (job->runtime) {
        const char *dev = job->runtime->device;
        if (dev && dev[0] && strcmp(dev, "cpu") && strcmp(dev, "cuda"))
            return sdc_err(err, SDC_ERR_ARG, "manifest: runtime.device '%s'; expected cpu or cuda", dev);
        if (job->runtime->pipeline_stages < 1 || job->runtime->micro_batches < 0)
            return sdc_err(err, SDC_ERR_ARG, "manifest: runtime.pipeline_stages %d, micro_batches %d; expected 1 or "
                           "more stages and 0 (2 x stages) or more micro-batches", job->runtime->pipeline_stages,
                           job->runtime->micro_batches);
        if (job->runtime->pipeline_cut && job->runtime->pipeline_cut[0] && job->runtime->pipeline_stages < 2)
            return sdc_err(err, SDC_ERR_ARG, "manifest: runtime.pipeline_cut \"%s\" with %d stage ---> "
                           "--pipeline-cut goes with --pipeline-stages P (P > 1)", job->runtime->pipeline_cut,
                           job->runtime->pipeline_stages);
        if (job->runtime->threads < 0)
            return sdc_err(err, SDC_ERR_ARG, "manifest: runtime.threads is %d; expected 0 (all cores) or more",
                           job->runtime->threads);
    }
    if (job->task == SDC__TASK__TASK_GENERATE) {
        const Sdc__Generate *g = job->generate;
        if (!g || (g->n_prompts == 0 && !(g->prompts_file && g->prompts_file[0])))
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.prompts is empty ---> pass -p \"a prompt\" or "
                           "--from-file PROMPTS.txt");
        if (g->steps < 1 || g->steps > 1000)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.steps is %d; expected 1 to 1000", g->steps);
        if (g->width < 0 || g->height < 0 || g->width % 8 || g->height % 8)
            return sdc_err(err, SDC_ERR_ARG,
                           "manifest: generate size %dx%d; width and height must be multiples of 8 "
                           "---> e.g. -W 512 -H 512",
                           g->width, g->height);
        if (g->batch_count < 1)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.batch_count is %d; expected 1 or more",
                           g->batch_count);
        if (g->has_strength && !(g->strength >= 0.0f && g->strength <= 1.0f))
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.strength %g; expected 0 to 1", g->strength);
        if (g->batch_size < 1)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.batch_size is %d; expected 1 or more",
                           g->batch_size);
        {
            const struct {
                const char *name;
                size_t n;
                const int32_t *v;
                int min;
            } xl[6] = {{"original_size", g->n_original_size, g->original_size, 1},
                       {"crops_coords_top_left", g->n_crops_coords_top_left, g->crops_coords_top_left, 0},
                       {"target_size", g->n_target_size, g->target_size, 1},
                       {"negative_original_size", g->n_negative_original_size, g->negative_original_size, 1},
                       {"negative_crops_coords_top_left", g->n_negative_crops_coords_top_left,
                        g->negative_crops_coords_top_left, 0},
                       {"negative_target_size", g->n_negative_target_size, g->negative_target_size, 1}};
            for (int k = 0; k < 6; k++) {
                if (xl[k].n != 0 && xl[k].n != 2)
                    return sdc_err(err, SDC_ERR_ARG, "manifest: generate.%s has %zu values; expected 2 (%s)",
                                   xl[k].name, xl[k].n, k % 3 == 1 ? "top, left" : "height, width");
                for (size_t i = 0; i < xl[k].n; i++)
                    if (xl[k].v[i] < xl[k].min || xl[k].v[i] > 65536)
                        return sdc_err(err, SDC_ERR_ARG, "manifest: generate.%s[%zu] is %d; expected %d to 65536",
                                       xl[k].name, i, xl[k].v[i], xl[k].min);
            }
            if ((g->n_negative_original_size != 0) != (g->n_negative_target_size != 0) ||
                (g->n_negative_crops_coords_top_left && !g->n_negative_original_size))
                return sdc_err(err, SDC_ERR_ARG, "manifest: generate.negative_original_size and negative_target_size "
                               "go together (diffusers ignores one without the other), and "
                               "negative_crops_coords_top_left needs them ---> give --negative-original-size and "
                               "--negative-target-size");
        }
        const int refiner = g->refiner && g->refiner[0];
        if (g->has_refiner_start && !refiner)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.refiner_start %g without generate.refiner ---> "
                           "--refiner-start goes with --refiner SDXL_REFINER", g->refiner_start);
        if (refiner && !(g->refiner_start > 0.0 && g->refiner_start < 1.0))
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.refiner_start %g; expected a fraction between 0 and 1 "
                           "(not 0 or 1): the base denoises up to it, the refiner the rest ---> e.g. --refiner-start "
                           "0.8", g->refiner_start);
        if (refiner && job->runtime && job->runtime->pipeline_stages > 1)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "manifest: generate.refiner with runtime.pipeline_stages %d is "
                           "not supported ---> drop --pipeline-stages (or --refiner)", job->runtime->pipeline_stages);
        if (!(g->aesthetic_score > 0.0f && g->aesthetic_score <= 1000.0f) ||
            !(g->negative_aesthetic_score > 0.0f && g->negative_aesthetic_score <= 1000.0f))
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.aesthetic_score %g, negative_aesthetic_score %g; "
                           "expected scores above 0 (LAION aesthetic scores: 1 to 10)", g->aesthetic_score,
                           g->negative_aesthetic_score);
        if (g->n_outpaint != 0 && g->n_outpaint != 4)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.outpaint has %zu values; expected 4 (left, top, "
                                             "right, bottom)", g->n_outpaint);
        if (!(g->cfg_scale >= 0.0f && g->cfg_scale <= 100.0f))
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.cfg_scale %g; expected 0 to 100", g->cfg_scale);
        for (size_t i = 0; i < g->n_sweep_cfg_scale; i++)
            if (!(g->sweep_cfg_scale[i] >= 0.0f && g->sweep_cfg_scale[i] <= 100.0f))
                return sdc_err(err, SDC_ERR_ARG, "manifest: generate.sweep_cfg_scale[%zu] is %g; expected 0 to 100", i,
                               g->sweep_cfg_scale[i]);
        for (size_t i = 0; i < g->n_sweep_steps; i++)
            if (g->sweep_steps[i] < 1 || g->sweep_steps[i] > 1000)
                return sdc_err(err, SDC_ERR_ARG, "manifest: generate.sweep_steps[%zu] is %d; expected 1 to 1000", i,
                               g->sweep_steps[i]);
        if (g->timestep_spacing && g->timestep_spacing[0] && sched_spacing_parse(g->timestep_spacing) < 0)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate.timestep_spacing '%s'; expected leading, trailing, "
                           "linspace or \"\" (the model's scheduler config)", g->timestep_spacing);
        if (g->karras) { // every sampler of the run must have Karras sigmas in diffusers
            SamplerKind k;
            for (size_t i = 0; i <= g->n_sweep_sampler; i++) {
                const char *name = i < g->n_sweep_sampler ? g->sweep_sampler[i] : g->n_sweep_sampler ? NULL : g->sampler;
                if (!name || sampler_parse(name, &k, NULL)) continue; // unknown names fail where they are used
                if (!sampler_has_karras(k))
                    return sdc_err(err, SDC_ERR_ARG, "manifest: generate.karras with sampler %s: diffusers' %s has no "
                                   "Karras sigmas ---> use euler, heun, lms, dpm++2m, dpm++2m_sde or unipc with "
                                   "--karras", sampler_name(k), sampler_class_name(k));
            }
        }
        if (g->shard_count < 1 || g->shard_index < 0 || g->shard_index >= g->shard_count)
            return sdc_err(err, SDC_ERR_ARG, "manifest: generate shard %d of %d; expected 0 <= shard_index < "
                           "shard_count ---> e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
                           g->shard_index, g->shard_count);
    } else if (job->task == SDC__TASK__TASK_DREAMBOOTH) {
        if (!job->dreambooth)
            return sdc_err(err, SDC_ERR_ARG, "manifest: task TASK_DREAMBOOTH needs a dreambooth { ... } section");
        // the trainer's runner checks each field (jobs/train_runner.c)
    } else if (job->task == SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE) {
        if (!job->text_to_image)
            return sdc_err(err, SDC_ERR_ARG, "manifest: task TASK_TRAIN_TEXT_TO_IMAGE needs a text_to_image { ... } "
                           "section");
    } else {
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "manifest: task %d is not implemented in this version of sdc",
                       job->task);
    }
    return 0;
}

char *manifest_to_text(const Sdc__Job *job) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    manifest_print_text(f, &job->base, 0);
    fclose(f);
    return buf;
}
