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
// src (a file, a symlink or a folder tree) again at dst, whose parent
// exists: folders made anew, files hard-linked (no data copied; the same
// file system only), symlinks copied. 0, or -1 with errno set.
int fs_link_tree(const char *src, const char *dst);
// Copies the file src to dst (created or truncated); errors name the path
// and end with fs_write_hint's hint.
int fs_copy_file(const char *src, const char *dst, SdcError *err);
// Swaps the paths a and b in one step (renameat2 RENAME_EXCHANGE), so a
// reader or a kill sees either both old or both new. 0, or -1 with errno set
// (EINVAL / ENOSYS where the file system or kernel cannot).
int fs_exchange(const char *a, const char *b);
// The hint that ends a message about a failed write with errno e: a full
// disk or quota (ENOSPC, EDQUOT), a read-only or forbidden folder, or else.
const char *fs_write_hint(int e);
// A .jpg / .jpeg / .png name (any case): what dataset import reads from a folder.
int fs_is_image_name(const char *name);
// Image files (fs_is_image_name, not hidden) directly in dir; 0 when it cannot be read.
int fs_count_images(const char *dir);

#endif
