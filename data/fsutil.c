// fsutil.c: see fsutil.h.
#define _GNU_SOURCE // nftw, renameat2
#include "data/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

int fs_mkdir_p(const char *dir, SdcError *err) {
    char tmp[1024];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s", dir) >= sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "%s: path too long", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return sdc_err(err, SDC_ERR_IO, "%s: cannot create the folder (%s)", tmp, strerror(errno));
            *p = '/';
        }
    if (mkdir(tmp, 0755) && errno != EEXIST)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot create the folder (%s)", tmp, strerror(errno));
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f) {
    (void)st, (void)flag, (void)f;
    return remove(path);
}

int fs_rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return 0;
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int fs_link_tree(const char *src, const char *dst) {
    struct stat st;
    if (lstat(src, &st)) return -1;
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlink(src, target, sizeof target - 1);
        if (n < 0) return -1;
        target[n] = 0;
        return symlink(target, dst);
    }
    if (!S_ISDIR(st.st_mode)) return link(src, dst);
    if (mkdir(dst, st.st_mode & 07777)) return -1;
    DIR *d = opendir(src);
    if (!d) return -1;
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char a[4096], b[4096];
        if ((size_t)snprintf(a, sizeof a, "%s/%s", src, e->d_name) >= sizeof a ||
            (size_t)snprintf(b, sizeof b, "%s/%s", dst, e->d_name) >= sizeof b) {
            errno = ENAMETOOLONG;
            rc = -1;
        } else {
            rc = fs_link_tree(a, b);
        }
    }
    const int e_saved = errno;
    closedir(d);
    errno = e_saved;
    return rc;
}

int fs_exchange(const char *a, const char *b) {
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

const char *fs_write_hint(int e) {
    if (e == ENOSPC || e == EDQUOT) return "the disk (or quota) is full: free space there or write elsewhere";
    if (e == EACCES || e == EPERM || e == EROFS) return "is the folder writable?";
    return "is the file system healthy?";
}

int fs_is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

int fs_count_images(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && fs_is_image_name(e->d_name)) n++;
    closedir(d);
    return n;
}

int fs_copy_file(const char *src, const char *dst, SdcError *err) {
    FILE *fi = fopen(src, "rb");
    if (!fi) return sdc_err(err, SDC_ERR_IO, "%s: cannot read (%s)", src, strerror(errno));
    FILE *fo = fopen(dst, "wb");
    if (!fo) {
        const int e = errno;
        fclose(fi);
        return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s) ---> %s", dst, strerror(e), fs_write_hint(e));
    }
    char buf[65536];
    size_t k;
    int ok = 1, e = 0;
    while (ok && (k = fread(buf, 1, sizeof buf, fi)) > 0)
        if (fwrite(buf, 1, k, fo) != k) ok = 0, e = errno;
    if (ok && ferror(fi)) ok = 0, e = EIO;
    fclose(fi);
    if (fclose(fo) && ok) ok = 0, e = errno;
    if (!ok) return sdc_err(err, SDC_ERR_IO, "%s: cannot write (%s) ---> %s", dst, strerror(e), fs_write_hint(e));
    return 0;
}
