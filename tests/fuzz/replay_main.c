// replay_main.c: the non-fuzzer build of a fuzz target (CTest's
// fuzz_replay_<target>): runs LLVMFuzzerTestOneInput once on every file
// given, or every file in every folder given (sorted by name), the seed
// corpus and the kept findings of tests/fuzz/regress/<target>/. A finding
// that comes back crashes or traps here (or, in a sanitizer build, is
// reported); the run prints how many inputs it replayed.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1); // exactly n bytes: an over-read is past the block
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "%s: read failed\n", path);
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    fprintf(stderr, "replay %s (%ld bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    int n = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st)) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= replay_file(argv[i]);
            n++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            perror(argv[i]);
            return 1;
        }
        char **names = NULL;
        int k = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            if (k == cap) names = realloc(names, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *names);
            names[k++] = strdup(e->d_name);
        }
        closedir(d);
        if (k) qsort(names, (size_t)k, sizeof *names, cmp_str);
        for (int j = 0; j < k; j++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], names[j]);
            bad |= replay_file(p);
            n++;
            free(names[j]);
        }
        free(names);
    }
    printf("replayed %d inputs%s\n", n, bad ? ", some unreadable" : "");
    return bad || n == 0; // no input at all: a corpus went missing
}
