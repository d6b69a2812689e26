# The sdc command on diffusers folders (included from tests/CMakeLists.txt):
# schedule options; tests/folders_cli.sh prints "N passed, N failed".
if(TARGET sdc)
  add_test(NAME folders_cli
    COMMAND ${CMAKE_SOURCE_DIR}/tests/folders_cli.sh $<TARGET_FILE:sdc> ${CMAKE_BINARY_DIR}/test-out/folders_cli)
  set_tests_properties(folders_cli PROPERTIES TIMEOUT 600 FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK")
endif()
