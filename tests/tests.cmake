# Tests that run the sdc command itself (included from tests/CMakeLists.txt).
if(TARGET sdc)
  set(SDC_DEMO ${CMAKE_SOURCE_DIR}/data/models/sdc-tiny-sd1.safetensors)
  set(SDC_TOUT ${CMAKE_BINARY_DIR}/test-out)
  file(MAKE_DIRECTORY ${SDC_TOUT})
  # The README's main job, small: two images of a batch, PNG with parameters.
  add_test(NAME cli_generate_demo
    COMMAND sh -c "rm -f ${SDC_TOUT}/demo*.png && $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p 'a red fox' -W 64 -H 64 --steps 3 -b 2 -o ${SDC_TOUT}/demo.png && test -s ${SDC_TOUT}/demo.png && test -s ${SDC_TOUT}/demo_2.png && grep -a -q 'Steps: 3, Sampler: Euler, CFG scale: 7, Seed: 43' ${SDC_TOUT}/demo_2.png && echo '1 passed, 0 failed'")
  # Same seed, same image: two runs are byte-identical.
  add_test(NAME cli_generate_deterministic
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 -o ${SDC_TOUT}/a.png && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 -o ${SDC_TOUT}/b.png && cmp ${SDC_TOUT}/a.png ${SDC_TOUT}/b.png && echo '1 passed, 0 failed'")
  # Bad input ends in a non-zero exit and a message naming the problem.
  add_test(NAME cli_bad_size COMMAND $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -W 100 -H 64)
  set_tests_properties(cli_bad_size PROPERTIES WILL_FAIL TRUE)
  add_test(NAME cli_bad_size_message
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -W 100 -H 64 2>&1 | grep -q 'multiples of 8'")
  add_test(NAME cli_missing_model
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m /nonexistent.safetensors -p x 2>&1 | grep -q '/nonexistent.safetensors'")
  add_test(NAME cli_unknown_sampler
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x --sampler foo 2>&1 | grep -q 'unknown sampler'")
  # img2img, inpainting and outpainting from the command line: the output
  # size follows the init image (rounded down to 8) or the outpaint canvas.
  set(SDC_IMGS ${CMAKE_SOURCE_DIR}/tests/fixtures/images)
  add_test(NAME cli_img2img
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/src97x61.png --strength 0.5 --steps 4 -o ${SDC_TOUT}/i2i.png && file ${SDC_TOUT}/i2i.png | grep -q '96 x 56' && grep -a -q 'Denoising strength: 0.5' ${SDC_TOUT}/i2i.png && echo '1 passed, 0 failed'")
  add_test(NAME cli_inpaint
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/img24x16.png --mask ${SDC_IMGS}/mask24x16.png --steps 3 -o ${SDC_TOUT}/inp.png && file ${SDC_TOUT}/inp.png | grep -q '24 x 16' && echo '1 passed, 0 failed'")
  add_test(NAME cli_outpaint
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/img24x16.png --outpaint 8,8,8,0 --steps 3 -o ${SDC_TOUT}/outp.png && file ${SDC_TOUT}/outp.png | grep -q '40 x 24' && echo '1 passed, 0 failed'")
  add_test(NAME cli_mask_size_mismatch
    COMMAND sh -c "! $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/img24x16.png --mask ${SDC_IMGS}/src97x61.png -o ${SDC_TOUT}/x.png 2>${SDC_TOUT}/err.txt && grep -q 'expected the same size' ${SDC_TOUT}/err.txt")
  add_test(NAME cli_bad_image
    COMMAND sh -c "! $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/bad_truncated.png -o ${SDC_TOUT}/x.png 2>${SDC_TOUT}/err2.txt && grep -q 'bad_truncated.png' ${SDC_TOUT}/err2.txt")
  add_test(NAME cli_bad_strength
    COMMAND sh -c "! $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -i ${SDC_IMGS}/img24x16.png --strength 1.5 -o ${SDC_TOUT}/x.png 2>${SDC_TOUT}/err3.txt && grep -q 'strength' ${SDC_TOUT}/err3.txt")
  add_test(NAME cli_inpaint_model_needs_mask
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m ${CMAKE_SOURCE_DIR}/tests/fixtures/tiny-sd1-inpaint -p x -o ${SDC_TOUT}/x.png 2>&1 | grep -q 'inpainting model'")
  add_test(NAME cli_long_prompt_warns
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p 'a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a' -W 64 -H 64 --steps 1 -o ${SDC_TOUT}/long.png 2>&1 | grep -q 'tokens were cut'")
  # A request that cannot fit is refused before any work, with both sizes.
  add_test(NAME cli_refuses_what_cannot_fit
    COMMAND sh -c "! $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x -W 4096 -H 4096 --batch-size 256 -b 256 --steps 2 -o ${SDC_TOUT}/big.png 2>${SDC_TOUT}/err4.txt && grep -q 'MiB of activations on cpu, but only' ${SDC_TOUT}/err4.txt && ! test -e ${SDC_TOUT}/big.png && echo '1 passed, 0 failed'")
  # --lora FILE:W (tests/fixtures/lora-demo-kohya.safetensors, kohya names in the
  # original layout, from tools/make_lora_fixture.py): at 0.7 the image changes,
  # at 0 it is byte-identical to the image without a LoRA; the manifest keeps it;
  # a LoRA for another model is refused with the module it names.
  set(SDC_LORA ${CMAKE_SOURCE_DIR}/tests/fixtures/lora-demo-kohya.safetensors)
  add_test(NAME cli_generate_lora
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 -o ${SDC_TOUT}/lora_none.png && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 --lora ${SDC_LORA}:0.7 -o ${SDC_TOUT}/lora_07.png && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 --lora ${SDC_LORA}:0 -o ${SDC_TOUT}/lora_0.png && ! cmp -s ${SDC_TOUT}/lora_none.png ${SDC_TOUT}/lora_07.png && cmp ${SDC_TOUT}/lora_none.png ${SDC_TOUT}/lora_0.png && $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x --lora ${SDC_LORA}:0.7 --lora b.safetensors --dump-manifest | grep -q 'lora: \"b.safetensors\"' && echo '1 passed, 0 failed'")
  add_test(NAME cli_lora_other_model
    COMMAND sh -c "! $<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p x --lora ${CMAKE_SOURCE_DIR}/tests/fixtures/lora-tiny-sd1-kohya.safetensors -o ${SDC_TOUT}/x.png 2>${SDC_TOUT}/err5.txt && grep -q 'a LoRA for another model' ${SDC_TOUT}/err5.txt && echo '1 passed, 0 failed'")
  # A manifest file runs the same job as the command line that printed it.
  add_test(NAME cli_manifest_roundtrip
    COMMAND sh -c "$<TARGET_FILE:sdc> generate -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 -o ${SDC_TOUT}/m1.png --dump-manifest > ${SDC_TOUT}/job.txtpb && $<TARGET_FILE:sdc> run -q ${SDC_TOUT}/job.txtpb && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a cat' -W 64 -H 64 --steps 2 -o ${SDC_TOUT}/m2.png && cmp ${SDC_TOUT}/m1.png ${SDC_TOUT}/m2.png && echo '1 passed, 0 failed'")
endif()

# Data-parallel collectives (mpi/dp.h) under 1, 2 and 4 MPI ranks.
if(TARGET test_dp)
  add_test(NAME dp_mpi_ranks COMMAND sh -c "
    for R in 1 2 4; do mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -n $R $<TARGET_FILE:test_dp> || exit 1; done")
  set_tests_properties(dp_mpi_ranks PROPERTIES FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK" TIMEOUT 120)
endif()

# DreamBooth training end to end (tests/dreambooth_checks.py, numpy + h5py,
# run with /usr/bin/python3 like tools/h5_interop.py): a run SIGKILLed after a
# checkpoint and resumed equals an uninterrupted one bit for bit (full and
# LoRA); 1, 2 and 4 MPI ranks agree within the fp32 summation-order noise;
# bad input, a diverging run and a foreign checkpoint end in clear errors;
# SIGUSR1 (Slurm's time-limit warning) to one process or to one rank of two
# stops the run with exit 75 and a checkpoint of that step, and the resumed
# run equals an uninterrupted one bit for bit (a generation sweep too).
# The demo model at 64 px, a few steps, one thread per process.
if(TARGET sdc)
  foreach(t resume_exact:resume mpi_ranks:mpi bad_input:bad stop_resume:stop)
    string(REPLACE ":" ";" t ${t})
    list(GET t 0 name)
    list(GET t 1 what)
    add_test(NAME dreambooth_${name}
      COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/dreambooth_checks.py ${what} $<TARGET_FILE:sdc> ${SDC_DEMO}
              ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/test-out/dreambooth_${name}
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(dreambooth_${name} PROPERTIES FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK" TIMEOUT 240)
  endforeach()
endif()

# The example training manifest parses and prints back unchanged (comments aside).
if(TARGET sdc)
  add_test(NAME jobs_example_manifest
    COMMAND sh -c "$<TARGET_FILE:sdc> run ${CMAKE_SOURCE_DIR}/jobs/examples/dreambooth-dog.txtpb --dump-manifest > ${CMAKE_BINARY_DIR}/test-out/example.txtpb && grep -v '^#' ${CMAKE_SOURCE_DIR}/jobs/examples/dreambooth-dog.txtpb | cmp - ${CMAKE_BINARY_DIR}/test-out/example.txtpb && echo '1 passed, 0 failed'")
endif()

# A LoRA training checkpoint is a LoRA: `--lora checkpoint-3.h5` gives the
# pixels of `--lora pytorch_lora_weights.safetensors` from the same (last)
# step; a full fine-tuning checkpoint is refused as a LoRA.
if(TARGET sdc)
  set(SDC_LT ${CMAKE_BINARY_DIR}/test-out/lora_ckpt)
  add_test(NAME cli_lora_from_checkpoint
    COMMAND sh -c "rm -rf ${SDC_LT} && $<TARGET_FILE:sdc> train dreambooth -q --pretrained-model ${SDC_DEMO} --instance-data ${CMAKE_SOURCE_DIR}/tests/fixtures/images --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 3 --checkpointing-steps 3 --output-dir ${SDC_LT} --lora-rank 4 --lora-alpha 8 --train-text-encoder --learning-rate 1e-3 -t 1 && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} --lora ${SDC_LT}/checkpoint-3.h5:0.8 -p 'sks dog' -W 64 -H 64 --steps 3 -o ${SDC_LT}/a.png && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} --lora ${SDC_LT}/pytorch_lora_weights.safetensors:0.8 -p 'sks dog' -W 64 -H 64 --steps 3 -o ${SDC_LT}/b.png && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'sks dog' -W 64 -H 64 --steps 3 -o ${SDC_LT}/c.png && /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/png_pixels.py same ${SDC_LT}/a.png ${SDC_LT}/b.png && /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/png_pixels.py differ ${SDC_LT}/a.png ${SDC_LT}/c.png && $<TARGET_FILE:sdc> train dreambooth -q --pretrained-model ${SDC_DEMO} --instance-data ${CMAKE_SOURCE_DIR}/tests/fixtures/images --instance-prompt 'x' --resolution 64 --max-train-steps 1 --checkpointing-steps 1 --output-dir ${SDC_LT}/full -t 1 && ! $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} --lora ${SDC_LT}/full/checkpoint-1.h5 -p x -W 64 -H 64 --steps 2 -o ${SDC_LT}/d.png 2> ${SDC_LT}/err.txt && grep -q 'no LoRA tensors' ${SDC_LT}/err.txt && echo '1 passed, 0 failed'")
endif()

# An sdc HDF5 checkpoint works as the model of a job: converted once into
# X.h5.sdc-cache/ (a diffusers folder), then the same pixels as the file it
# came from; the second run reuses the cache.
if(TARGET sdc)
  set(SDC_H5M ${CMAKE_BINARY_DIR}/test-out/h5model)
  add_test(NAME cli_generate_from_h5
    COMMAND sh -c "rm -rf ${SDC_H5M} && mkdir -p ${SDC_H5M} && $<TARGET_FILE:sdc> convert -q -m ${SDC_DEMO} -o ${SDC_H5M}/m.h5 && $<TARGET_FILE:sdc> generate -m ${SDC_H5M}/m.h5 -p 'a fox' -W 64 -H 64 --steps 3 -o ${SDC_H5M}/a.png 2> ${SDC_H5M}/log1.txt && grep -q 'converting it once' ${SDC_H5M}/log1.txt && $<TARGET_FILE:sdc> generate -m ${SDC_H5M}/m.h5 -p 'a fox' -W 64 -H 64 --steps 3 -o ${SDC_H5M}/b.png 2> ${SDC_H5M}/log2.txt && ! grep -q 'converting' ${SDC_H5M}/log2.txt && $<TARGET_FILE:sdc> generate -q -m ${SDC_DEMO} -p 'a fox' -W 64 -H 64 --steps 3 -o ${SDC_H5M}/c.png && /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/png_pixels.py same ${SDC_H5M}/a.png ${SDC_H5M}/c.png && /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/png_pixels.py same ${SDC_H5M}/b.png ${SDC_H5M}/c.png && echo '1 passed, 0 failed'")
endif()

# Generation sweeps (tests/sweep_checks.py): lists for --cfg-scale / --sampler /
# --steps, --from-file; item order, seeds and settings as jobs/sdc.proto says,
# each item equal to a plain generate; 1 vs 3 MPI ranks; 3 shards together
# equal the whole sweep; PNG names and parameters; bad lists and shards refused.
if(TARGET sdc)
  add_test(NAME generate_sweep
    COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/sweep_checks.py $<TARGET_FILE:sdc> ${SDC_DEMO}
            ${CMAKE_BINARY_DIR}/test-out/generate_sweep)
  set_tests_properties(generate_sweep PROPERTIES FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK" TIMEOUT 240)
endif()

# Slurm (tests/slurm/): a one-node cluster started for the test (munged,
# slurmctld, slurmd from Debian, all state under /tmp/sdc-slurm). The
# self-test checks what sdc relies on (srun --mpi=pmix, sbatch, requeue,
# signal delivery); sdc_checks.py submits real sdc jobs with `sdc submit`: a
# sweep as a job array of 2 x 2 ranks equal to a local run, and DreamBooth on
# 2 ranks stopped by SIGUSR1 to the batch script (what --signal=B:USR1 does
# before a time limit), requeued and resumed, equal to an uninterrupted run
# bit for bit. They share the cluster, so they never run at the same time.
if(TARGET sdc)
  add_test(NAME slurm_selftest COMMAND ${CMAKE_SOURCE_DIR}/tests/slurm/selftest.sh)
  set_tests_properties(slurm_selftest PROPERTIES RESOURCE_LOCK slurm TIMEOUT 180 SKIP_RETURN_CODE 77)
  add_test(NAME slurm_submit
    COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/slurm/sdc_checks.py $<TARGET_FILE:sdc> ${SDC_DEMO}
            ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/test-out/slurm_submit)
  set_tests_properties(slurm_submit PROPERTIES RESOURCE_LOCK slurm TIMEOUT 300
                       FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
