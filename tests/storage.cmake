# HDF5 storage tests (data/): dataset import, convert, generation output,
# under 1, 2 and 4 MPI ranks, and the h5py view of each file kind
# (tools/h5_interop.py, run with /usr/bin/python3, which has python3-h5py).
if(TARGET sdc)
  set(SDC_DEMO ${CMAKE_SOURCE_DIR}/data/models/sdc-tiny-sd1.safetensors)
  set(ST ${CMAKE_BINARY_DIR}/test-storage)
  set(PY "/usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/h5_interop.py")
  set(MPIRUN "mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1")
  set(DB ${CMAKE_SOURCE_DIR}/../shared/data/dreambooth)
  file(MAKE_DIRECTORY ${ST})
  set(SDC $<TARGET_FILE:sdc>)

  # The DreamBooth photos (all subjects) -> one dataset with cached latents;
  # the source folders are left exactly as they were; h5py sees the layout.
  add_test(NAME storage_import_dreambooth COMMAND sh -c "
    if [ ! -d ${DB}/dog ]; then echo 'SKIP: ${DB} not present (the DreamBooth photos); 0 passed, 0 failed'; exit 0; fi
    set -e; rm -rf ${ST}/db && mkdir -p ${ST}/db
    before=$(ls -laR --time-style=full-iso ${DB} | md5sum)
    ${SDC} dataset import -q --resolution 128 -p 'a photo of sks thing' --cache-latents -m ${SDC_DEMO} -o ${ST}/db/all.h5 ${DB}/*/
    after=$(ls -laR --time-style=full-iso ${DB} | md5sum)
    [ \"$before\" = \"$after\" ] && echo '  OK      source folders unchanged'
    ${PY} check ${ST}/db/all.h5 dataset")

  # Bad input: a caption in Latin-1, an unreadable image, a small image with --no-upscale
  add_test(NAME storage_import_bad_input COMMAND sh -c "
    set -e; rm -rf ${ST}/bad && mkdir -p ${ST}/bad/src ${ST}/bad/src2
    cp ${CMAKE_SOURCE_DIR}/tests/fixtures/images/exif_1.jpg ${ST}/bad/src/a.jpg
    printf 'caf\\351 au lait' > ${ST}/bad/src/a.txt
    ! ${SDC} dataset import -q --resolution 64 -o ${ST}/bad/x.h5 ${ST}/bad/src 2> ${ST}/bad/err1
    grep -q 'a.txt: caption is not valid UTF-8 (bad byte 0xe9 at offset 3)' ${ST}/bad/err1 && echo '  OK      latin-1 caption named'
    [ ! -e ${ST}/bad/x.h5 ] && echo '  OK      no output'
    cp ${CMAKE_SOURCE_DIR}/tests/fixtures/images/exif_1.jpg ${ST}/bad/src2/good.jpg
    cp ${CMAKE_SOURCE_DIR}/tests/fixtures/images/bad_truncated.png ${ST}/bad/src2/broken.png
    ${SDC} dataset import --resolution 4096 --no-upscale -p x -o ${ST}/bad/y.h5 ${ST}/bad/src2 2> ${ST}/bad/err2 || true
    grep -q 'skipped .*broken.png' ${ST}/bad/err2 && grep -q 'smaller than --resolution 4096' ${ST}/bad/err2 && echo '  OK      unreadable and small images reported'
    grep -q 'none of the 2 images' ${ST}/bad/err2 && echo '  OK      nothing left: error'
    ${SDC} dataset import --resolution 64 -p x -o ${ST}/bad/z.h5 ${ST}/bad/src2 2> ${ST}/bad/err3
    grep -q 'imported 1 of 2 images.*1 skipped' ${ST}/bad/err3 && echo '  OK      1 imported, 1 skipped, counted'
    ! ${SDC} dataset import -q --resolution 64 -p x -o ${ST}/bad/src2/inside.h5 ${ST}/bad/src2 2> ${ST}/bad/err4
    grep -q 'inside the source folder' ${ST}/bad/err4 && echo '  OK      output inside a source folder refused'
    ! ${SDC} convert -q -m ${ST}/bad/z.h5 -o ${ST}/bad/q.safetensors 2> ${ST}/bad/err5
    grep -q 'z.h5: sdc_kind is \"dataset\", expected \"checkpoint\"' ${ST}/bad/err5 && echo '  OK      wrong kind named'
    echo '6 passed, 0 failed'")
  set_tests_properties(storage_import_bad_input PROPERTIES PASS_REGULAR_EXPRESSION "6 passed, 0 failed")

  # 1, 2 and 4 ranks write the same dataset and the same generation output;
  # a re-run of a finished sweep makes nothing (resume skips done items).
  add_test(NAME storage_mpi_ranks COMMAND sh -c "
    set -e; rm -rf ${ST}/mpi ${ST}/mpisrc && mkdir -p ${ST}/mpi ${ST}/mpisrc
    cp ${CMAKE_SOURCE_DIR}/tests/fixtures/images/exif_*.jpg ${ST}/mpisrc/
    for R in 1 2 4; do
      ${MPIRUN} -n $R ${SDC} dataset import -q --resolution 32 -p x -o ${ST}/mpi/d$R.h5 ${ST}/mpisrc
      ${MPIRUN} -n $R ${SDC} generate -q -m ${SDC_DEMO} -p 'a red fox' -p 'a cat' -b 3 -W 64 -H 64 --steps 2 --output-h5 ${ST}/mpi/g$R.h5
    done
    for R in 2 4; do ${PY} compare ${ST}/mpi/d1.h5 ${ST}/mpi/d$R.h5 | tail -1; ${PY} compare ${ST}/mpi/g1.h5 ${ST}/mpi/g$R.h5 | tail -1; done
    ${PY} check ${ST}/mpi/g4.h5 generation | tail -1
    ${SDC} generate -m ${SDC_DEMO} -p 'a red fox' -p 'a cat' -b 3 -W 64 -H 64 --steps 2 --output-h5 ${ST}/mpi/g4.h5 2>&1 | grep -q 'wrote 0 items .*6 already done' && echo '  OK      resume: nothing redone'
    ${SDC} generate -q -m ${SDC_DEMO} -p 'a dog' -b 6 -W 64 -H 64 --steps 2 --output-h5 ${ST}/mpi/g4.h5 2>&1 | grep -q 'another sweep'
    echo '  OK      another sweep refused'")
  set_tests_properties(storage_mpi_ranks PROPERTIES FAIL_REGULAR_EXPRESSION "[1-9][0-9]* failed;NOT OK" TIMEOUT 120)

  # An interrupted sweep resumes without gaps or duplicates: item 3 of 6 is
  # unmarked by hand (as a kill between image and done flag leaves it) and
  # only it is made again, identical.
  add_test(NAME storage_generate_resume COMMAND sh -c "
    set -e; rm -f ${ST}/r.h5 ${ST}/r0.h5
    ${SDC} generate -q -m ${SDC_DEMO} -p 'a red fox' -b 6 -W 64 -H 64 --steps 2 --output-h5 ${ST}/r.h5
    cp ${ST}/r.h5 ${ST}/r0.h5
    /usr/bin/python3 -c \"import h5py; f=h5py.File('${ST}/r.h5','r+'); f['done'][3]=0; f['images'][3]=0\"
    ${SDC} generate -m ${SDC_DEMO} -p 'a red fox' -b 6 -W 64 -H 64 --steps 2 --output-h5 ${ST}/r.h5 2>&1 | grep -q 'wrote 1 items .*5 already done'
    ${PY} compare ${ST}/r0.h5 ${ST}/r.h5 | tail -1")

  # The model hash of a generation output (A1111's: SHA-256 of the weights
  # file) is cached by path, size and mtime: the cached value is sha256sum's,
  # a second run reuses it, a touched file is hashed again.
  add_test(NAME storage_model_hash_cache COMMAND sh -c "
    set -e; rm -rf ${ST}/hc ${ST}/hc*.h5 && mkdir -p ${ST}/hc && cp ${SDC_DEMO} ${ST}/hc/m.safetensors
    export SDC_CACHE_DIR=${ST}/hc/cache
    g() { ${SDC} generate -q -m ${ST}/hc/m.safetensors -p x -W 64 -H 64 --steps 1 -t 1 --output-h5 ${ST}/hc$1.h5; }
    g 1; g 2
    want=$(sha256sum ${ST}/hc/m.safetensors | cut -c1-64)
    test $(grep -c $want ${ST}/hc/cache/model-hashes.tsv) -eq 1
    touch -d '2001-01-01' ${ST}/hc/m.safetensors; g 3
    test $(wc -l < ${ST}/hc/cache/model-hashes.tsv) -eq 2
    /usr/bin/python3 -c \"import h5py,sys; h=[h5py.File('${ST}/hc%d.h5' % i)['model_hash'][0].decode() for i in (1,2,3)]; sys.exit(0 if h == ['$want'[:10]]*3 else 1)\"
    echo '1 passed, 0 failed'")

  # h5py reads the checkpoint layout (and verifies every CRC32 itself).
  add_test(NAME storage_interop_checkpoint COMMAND sh -c "
    set -e; ${SDC} convert -q -m ${CMAKE_SOURCE_DIR}/tests/fixtures/tiny-sd2 -o ${ST}/sd2.h5 --dtype bf16
    ${PY} check ${ST}/sd2.h5 checkpoint")
endif()
