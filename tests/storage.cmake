# HDF5 storage tests (data/): dataset import, convert, generation output,
# under 1, 2 and 4 MPI ranks, and the h5py view of each file kind. The
# checks themselves are in tests/storage_checks.sh (one function per test,
# counted by tests/check.sh: a failed check fails the test; exit 77 = skip).
if(TARGET sdc)
  foreach(name import_dreambooth import_bad_input import_flip mpi_ranks generate_resume model_hash_cache interop_checkpoint
               dataset_synth init_model init_model_vs_torch synth_model
               synth_model_vs_diffusers synth_shipped)
    add_test(NAME storage_${name}
      COMMAND sh ${CMAKE_SOURCE_DIR}/tests/storage_checks.sh ${name} $<TARGET_FILE:sdc> ${CMAKE_SOURCE_DIR}
              ${CMAKE_BINARY_DIR}/test-storage/${name})
    set_tests_properties(storage_${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 240)
  endforeach()
  # diffusers on one thread beside sdc: about 4 minutes on 2 busy cores
  set_tests_properties(storage_synth_model_vs_diffusers PROPERTIES TIMEOUT 900)
endif()

# Every writer on a small full file system (tests/full_disk.sh: a 48 MiB
# tmpfs; exit 77 = skipped where it cannot be mounted): ENOSPC named, earlier
# outputs intact, no half file, the same command finishes once space is freed.
if(TARGET sdc)
  add_test(NAME storage_full_disk
    COMMAND sh ${CMAKE_SOURCE_DIR}/tests/full_disk.sh $<TARGET_FILE:sdc> ${CMAKE_SOURCE_DIR}
            ${CMAKE_BINARY_DIR}/test-storage/full_disk)
  set_tests_properties(storage_full_disk PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
