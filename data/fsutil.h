// fsutil.h: the few file-system helpers the storage code and the job runners
// share (paths, folders, image names). POSIX; no HDF5.
#ifndef SDC_FSUTIL_H
#define SDC_FSUTIL_H

#include "core/error.h"

int fs_is_dir(const char *path);
int fs_ends_with(const char *s, const char *suffix);
// mkdir -p (0755); an existing folder is fine.
int fs_mkdir_p(const char *dir, SdcError *err);
// rm -rf; 0 when it is gone or was never there.
int fs_rm_tree(const char *path);
// The hint that ends a message about a failed write with errno e: a full
// disk or quota (ENOSPC, EDQUOT), a read-only or forbidden folder, or else.
const char *fs_write_hint(int e);
// A .jpg / .jpeg / .png name (any case): what dataset import reads from a folder.
int fs_is_image_name(const char *name);
// Image files (fs_is_image_name, not hidden) directly in dir; 0 when it cannot be read.
int fs_count_images(const char *dir);

#endif
