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
endif()
