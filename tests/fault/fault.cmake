# Running out of memory (tests/fault/failalloc.sh): failalloc.so, an
# LD_PRELOAD allocation-failure injector (tests/fault/failalloc.c), fails the
# allocations of the sdc command one at a time, on generate, an HDF5 sweep,
# convert, dataset import and a resumed DreamBooth run; each must end in a
# named error (or
# work around the failure with the same output), never an abort or a crash,
# and leave the earlier outputs readable. CI tries 8 spread indices per
# command plus 5 "all after" runs (about 40 s of CPU; the limit is for a
# loaded machine); tools/failalloc_sweep.sh tries them all.
# glibc only (it wraps __libc_malloc); not under the sanitizers (ASan owns malloc).
if(TARGET sdc AND CMAKE_SYSTEM_NAME STREQUAL "Linux" AND NOT SDC_SANITIZE)
  add_library(failalloc MODULE ${CMAKE_CURRENT_SOURCE_DIR}/fault/failalloc.c)
  set_target_properties(failalloc PROPERTIES PREFIX "" C_VISIBILITY_PRESET default)
  target_link_libraries(failalloc PRIVATE ${CMAKE_DL_LIBS})
  add_test(NAME fault_failalloc
    COMMAND sh ${CMAKE_SOURCE_DIR}/tests/fault/failalloc.sh $<TARGET_FILE:sdc> $<TARGET_FILE:failalloc>
            ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/test-out/fault_failalloc 8)
  set_tests_properties(fault_failalloc PROPERTIES TIMEOUT 600)
endif()
