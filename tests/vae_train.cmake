# `sdc train vae` end to end (tests/vae_train_checks.sh): resume bit-identical,
# the output folder loads in sdc and diffusers, bad input refused.
if(TARGET sdc)
  add_test(NAME vae_train_cli
    COMMAND sh ${CMAKE_SOURCE_DIR}/tests/vae_train_checks.sh $<TARGET_FILE:sdc> ${CMAKE_SOURCE_DIR}
            ${CMAKE_BINARY_DIR}/test-vae-train)
  set_tests_properties(vae_train_cli PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
