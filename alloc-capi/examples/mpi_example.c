/* The C API under MPI: the ranks of a node share one pool (the node's first rank creates it and
   broadcasts its descriptor); every rank writes an allocation and hands it to the next rank of
   its node as a descriptor, which reads the same memory. Run: mpirun -n 4 ./mpi_example */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmpool.h"

static void ok(int status, const char *what) {
  if (status != SHMPOOL_OK) {
    fprintf(stderr, "%s: %s\n", what, shmpool_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int world_rank, rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &rank);
  MPI_Comm_size(node, &size);
  int job = getpid(), leader = world_rank;
  MPI_Bcast(&job, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(&leader, 1, MPI_INT, 0, node);

  shmpool_pool *pool = NULL;
  unsigned char descriptor[128];
  size_t len = 0;
  if (rank == 0) {
    char name[64];
    snprintf(name, sizeof name, "mpi-c-%d-node%d", job, leader);
    ok(shmpool_create(name, 16u << 20, &pool), "create");
    ok(shmpool_descriptor(pool, descriptor, sizeof descriptor, &len), "descriptor");
  }
  unsigned long long n = len;
  MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, node);
  MPI_Bcast(descriptor, (int)n, MPI_UNSIGNED_CHAR, 0, node);
  if (rank != 0) ok(shmpool_attach(descriptor, n, &pool), "attach");

  shmpool_allocation mine, got;
  ok(shmpool_alloc(pool, 4096, &mine), "alloc");
  for (int i = 0; i < 1024; i++) ((int *)mine.ptr)[i] = world_rank;
  unsigned char out[128], in[128];
  ok(shmpool_alloc_descriptor(pool, &mine, out, sizeof out, &len), "alloc_descriptor");
  int after = (rank + 1) % size, before = (rank + size - 1) % size, before_world;
  int sent = (int)len, in_len = 0;
  MPI_Sendrecv(&world_rank, 1, MPI_INT, after, 0, &before_world, 1, MPI_INT, before, 0, node, MPI_STATUS_IGNORE);
  MPI_Sendrecv(&sent, 1, MPI_INT, after, 1, &in_len, 1, MPI_INT, before, 1, node, MPI_STATUS_IGNORE);
  MPI_Sendrecv(out, sent, MPI_UNSIGNED_CHAR, after, 2, in, in_len, MPI_UNSIGNED_CHAR, before, 2, node, MPI_STATUS_IGNORE);
  shmpool_pool *through = NULL;
  ok(shmpool_attach_alloc(in, (size_t)in_len, &through, &got), "attach_alloc");
  for (int i = 0; i < 1024; i++)
    if (((int *)got.ptr)[i] != before_world) {
      fprintf(stderr, "rank %d read another rank's bytes\n", world_rank);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  MPI_Barrier(node);
  ok(shmpool_free(through, &got), "free");
  ok(shmpool_detach(through), "detach");
  MPI_Barrier(node);
  if (rank == 0) {
    ok(shmpool_check(pool), "check");
    ok(shmpool_destroy(pool), "destroy");
  } else {
    ok(shmpool_detach(pool), "detach");
  }
  if (world_rank == 0) printf("mpi (C): %d ranks on this node shared one pool: ok\n", size);
  MPI_Finalize();
  return 0;
}
