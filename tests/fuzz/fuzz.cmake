# The fuzz targets of tests/fuzz (included from tests/CMakeLists.txt).
#
# Normal build: each target's LLVMFuzzerTestOneInput with tests/fuzz/
# replay_main.c as fuzz_replay_<target>, and the CTest test of that name,
# which replays the target's seed corpus and its kept findings
# (tests/fuzz/regress/<target>/) once each: a fixed bug that comes back
# fails it. Also make_fuzz_seeds (writes the binary seed corpora) and
# fuzz_short: a few seconds of real fuzzing per target through tools/fuzz.sh
# when clang is installed (CTest "skipped", status 77, otherwise).
#
# SDC_FUZZ=ON (a clang build made by tools/fuzz.sh, the whole library
# instrumented): each target as fuzz_<target>, libFuzzer's main.
set(SDC_FUZZ_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz)
# target:source-file stem:seed folder (relative to the source root)
set(SDC_FUZZ_TARGETS
    safetensors:fuzz_safetensors:tests/fuzz/seeds/safetensors
    image:fuzz_image:tests/fixtures/images
    sched:fuzz_sched_config:tests/fixtures/sched
    json_config:fuzz_json_config:tests/fuzz/seeds/json_config
    tokenizer:fuzz_tokenizer:tests/fuzz/seeds/tokenizer
    lora:fuzz_lora:tests/fuzz/seeds/lora)
if(NOT SDC_MINIMAL) # protobuf-c and HDF5
  list(APPEND SDC_FUZZ_TARGETS
       manifest_text:fuzz_manifest_text:tests/fuzz/seeds/manifest_text
       manifest_bin:fuzz_manifest_bin:tests/fuzz/seeds/manifest_bin
       h5_dataset:fuzz_h5_dataset:tests/fuzz/seeds/h5_dataset
       h5_ckpt:fuzz_h5_ckpt:tests/fuzz/seeds/h5_ckpt
       h5_genout:fuzz_h5_genout:tests/fuzz/seeds/h5_genout
       # the same three readers, structure-aware (fuzz_h5_build.h: FUZZ_H5_STRUCT)
       h5s_dataset:fuzz_h5_dataset:tests/fuzz/seeds/h5s_dataset
       h5s_ckpt:fuzz_h5_ckpt:tests/fuzz/seeds/h5s_ckpt
       h5s_genout:fuzz_h5_genout:tests/fuzz/seeds/h5s_genout)
endif()

foreach(entry ${SDC_FUZZ_TARGETS})
  string(REPLACE ":" ";" entry ${entry})
  list(GET entry 0 name)
  list(GET entry 1 stem)
  list(GET entry 2 seeds)
  if(SDC_FUZZ)
    add_executable(fuzz_${name} ${SDC_FUZZ_DIR}/${stem}.c)
    target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
    set(exe fuzz_${name})
  else()
    add_executable(fuzz_replay_${name} ${SDC_FUZZ_DIR}/${stem}.c ${SDC_FUZZ_DIR}/replay_main.c)
    set(exe fuzz_replay_${name})
    set(dirs ${CMAKE_SOURCE_DIR}/${seeds})
    if(EXISTS ${SDC_FUZZ_DIR}/regress/${name})
      list(APPEND dirs ${SDC_FUZZ_DIR}/regress/${name})
    endif()
    add_test(NAME fuzz_replay_${name} COMMAND fuzz_replay_${name} ${dirs} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(fuzz_replay_${name} PROPERTIES TIMEOUT 300)
  endif()
  target_link_libraries(${exe} PRIVATE ${SDC_TEST_LIB})
  target_include_directories(${exe} PRIVATE ${SDC_FUZZ_DIR})
  if(name MATCHES "^h5s_")
    target_compile_definitions(${exe} PRIVATE FUZZ_H5_STRUCT)
  endif()
endforeach()

if(NOT SDC_FUZZ AND NOT SDC_MINIMAL)
  add_executable(make_fuzz_seeds ${SDC_FUZZ_DIR}/make_fuzz_seeds.c)
  target_link_libraries(make_fuzz_seeds PRIVATE sdc_jobs)
  target_include_directories(make_fuzz_seeds PRIVATE ${SDC_FUZZ_DIR})
  # A few seconds of libFuzzer per target (its own clang build under
  # test-out/fuzz, or $SDC_FUZZ_OUT to share tools/fuzz.sh's: the first run
  # builds it, minutes). Skipped without clang. Not the h5_* targets: HDF5
  # 1.10.8 itself can loop on a damaged global heap (tests/fuzz/hdf5-bugs),
  # which a short run may hit by chance; their fixed findings are replayed
  # by fuzz_replay_h5_* and their campaigns run through tools/fuzz.sh. The
  # structure-aware h5s_* targets (valid files only) run here.
  add_test(NAME fuzz_short
    COMMAND sh -c "command -v clang >/dev/null 2>&1 || { echo 'clang not found: skipped'; exit 77; }; export FUZZ_OUT=\${SDC_FUZZ_OUT:-${CMAKE_BINARY_DIR}/test-out/fuzz}; for t in safetensors image sched json_config tokenizer lora manifest_text manifest_bin h5s_dataset h5s_ckpt h5s_genout; do ${CMAKE_SOURCE_DIR}/tools/fuzz.sh 3 1 $t || exit 1; done"
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(fuzz_short PROPERTIES TIMEOUT 3600 SKIP_RETURN_CODE 77)
  # the h5 harnesses' CPU limit per input, on libhdf5's global-heap loop
  add_test(NAME fuzz_h5_cpu_limit
    COMMAND sh -c "sh tests/fuzz/cpu_limit.sh \${SDC_FUZZ_OUT:-${CMAKE_BINARY_DIR}/test-out/fuzz}"
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(fuzz_h5_cpu_limit PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 DEPENDS fuzz_short)
endif()
