// bench_mpi_link.c: the MPI link between two ranks, for the scaling model
// (bench/scale_model.c): latency and bandwidth of a point-to-point transfer
// (what the pipeline's activations pay) and of an all-reduce of floats
// (the data-parallel gradients).
//
//   mpiexec -n 2 bench_mpi_link [--max-mib 64]
//
// Ping-pong of 8 B .. max MiB, each size repeated until 0.2 s; one-way time
// t(b) fitted as lat + b / bw by least squares over the sizes >= 64 KiB for
// bw and the smallest for lat; the same for MPI_Allreduce(MPI_SUM) of
// floats. Prints one key=value line per link (rank 0):
//   p2p_lat_us=... p2p_gbps=... allreduce_lat_us=... allreduce_gbps=...
// (GB/s of the message: an all-reduce of b bytes). A benchmark: nothing is
// checked.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double time_sizes(int rank, size_t bytes, int allreduce, char *buf, char *buf2) {
    int reps = 0;
    double t0 = MPI_Wtime(), t = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    do {
        if (allreduce) {
            MPI_Allreduce(buf, buf2, (int)(bytes / 4), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        } else if (rank == 0) {
            MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)bytes, MPI_BYTE, 0, 2, MPI_COMM_WORLD);
        }
        reps++;
        t = MPI_Wtime() - t0;
        MPI_Bcast(&t, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD); // every rank stops after the same rep
    } while (t < 0.2);
    return allreduce ? t / reps : t / reps / 2; // one way
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double max_mib = 64;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--max-mib") && i + 1 < argc) max_mib = atof(argv[++i]);
    if (size != 2) {
        if (rank == 0) fprintf(stderr, "bench_mpi_link: run it on 2 ranks (mpiexec -n 2)\n");
        MPI_Finalize();
        return 2;
    }
    const size_t max_b = (size_t)(max_mib * 1048576);
    char *buf = calloc(max_b, 1), *buf2 = calloc(max_b, 1);
    for (int ar = 0; ar < 2; ar++) {
        double sx = 0, sy = 0, sxx = 0, sxy = 0, lat = 0;
        int n = 0;
        for (size_t b = 8; b <= max_b; b *= 4) {
            const double t = time_sizes(rank, b, ar, buf, buf2);
            if (b == 8) lat = t;
            if (b >= 65536) sx += b, sy += t, sxx += (double)b * b, sxy += b * t, n++;
            if (rank == 0) fprintf(stderr, "  %s %10zu B  %.2f us  %.3f GB/s\n", ar ? "allreduce" : "p2p", b, t * 1e6,
                                   b / t * 1e-9);
        }
        const double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
        if (rank == 0) printf("%s_lat_us=%.3g %s_gbps=%.4g%s", ar ? "allreduce" : "p2p", lat * 1e6,
                              ar ? "allreduce" : "p2p", 1e-9 / slope, ar ? "\n" : " ");
    }
    free(buf), free(buf2);
    MPI_Finalize();
    return 0;
}
