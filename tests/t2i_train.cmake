# `sdc train text-to-image` end to end (tests/t2i_checks.sh): resume
# bit-identical, the EMA exported, validation images, 2 ranks and 2 pipeline
# stages against one process, the manifest, bad input refused.
if(TARGET sdc)
  add_test(NAME t2i_train_cli
    COMMAND sh ${CMAKE_SOURCE_DIR}/tests/t2i_checks.sh $<TARGET_FILE:sdc> ${CMAKE_SOURCE_DIR}
            ${CMAKE_BINARY_DIR}/test-t2i)
  set_tests_properties(t2i_train_cli PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
