# The sdc command on diffusers folders (included from tests/CMakeLists.txt):
# schedule options; tests/folders_cli.sh prints "N passed, N failed".
if(TARGET sdc)
  add_test(NAME folders_cli
    COMMAND ${CMAKE_SOURCE_DIR}/tests/folders_cli.sh $<TARGET_FILE:sdc> ${CMAKE_BINARY_DIR}/test-out/folders_cli)
  set_tests_properties(folders_cli PROPERTIES TIMEOUT 600 FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
# tools/check_export.py: the exports loaded by diffusers' StableDiffusionPipeline
# and compared image for image with sdc (needs torch + diffusers: skipped,
# CTest's skip status, where they are not installed, as in CI).
if(TARGET sdc)
  add_test(NAME export_diffusers_roundtrip
    COMMAND sh -c "command -v python3 >/dev/null || { echo 'SKIPPED: no python3'; exit 77; }; exec python3 ${CMAKE_SOURCE_DIR}/tools/check_export.py --sdc $<TARGET_FILE:sdc>")
  set_tests_properties(export_diffusers_roundtrip PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1200
                       FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
# tools/check_namings.py: the layouts current diffusers / transformers
# save_pretrained write (transformers 5's text encoder names, shards, fp16
# variants, CLIPTextModelWithProjection, old VAE attention names) through sdc
# convert (skipped without torch, like export_diffusers_roundtrip).
if(TARGET sdc)
  add_test(NAME namings_save_pretrained
    COMMAND sh -c "command -v python3 >/dev/null || { echo 'SKIPPED: no python3'; exit 77; }; exec python3 ${CMAKE_SOURCE_DIR}/tools/check_namings.py --sdc $<TARGET_FILE:sdc>")
  set_tests_properties(namings_save_pretrained PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600
                       FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
# tools/check_export_sdxl.py: sdc convert's SDXL exports (folder, from h5, from
# a single file, an inferred architecture) opened by diffusers'
# StableDiffusionXLPipeline.from_pretrained and drawing sdc's images (within
# 1/255), and an exported single file loaded by from_single_file(config=)
# (skipped without torch, like export_diffusers_roundtrip).
if(TARGET sdc)
  add_test(NAME export_sdxl_diffusers
    COMMAND sh -c "command -v python3 >/dev/null || { echo 'SKIPPED: no python3'; exit 77; }; exec python3 ${CMAKE_SOURCE_DIR}/tools/check_export_sdxl.py --sdc $<TARGET_FILE:sdc>")
  set_tests_properties(export_sdxl_diffusers PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1200
                       FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
