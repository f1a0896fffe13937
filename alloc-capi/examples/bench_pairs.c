/* A 64-byte alloc+free pair through the C API: median ns per pair over 7 rounds of 1M pairs
   (with a working set of 1024 live allocations, as in BENCHMARKS.md's pairs), through the pool
   handle and through a per-thread cached handle (shmpool_local_*). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "shmpool.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static shmpool_allocation ring[1024];

/* Median ns per pair; `local` NULL: through the pool handle. */
static double pairs(shmpool_pool *pool, shmpool_local *local) {
  double rounds[7];
  for (int r = 0; r < 7; r++) {
    double start = now();
    for (int i = 0; i < 1000000; i++) {
      shmpool_allocation *slot = &ring[i & 1023];
      int rc = local ? shmpool_local_free(local, slot) : shmpool_free(pool, slot);
      if (rc == SHMPOOL_OK) rc = local ? shmpool_local_alloc(local, 64, slot) : shmpool_alloc(pool, 64, slot);
      if (rc != SHMPOOL_OK) return -1;
    }
    rounds[r] = (now() - start) / 1e6;
  }
  qsort(rounds, 7, sizeof rounds[0], cmp);
  return rounds[3];
}

int main(void) {
  char name[64];
  snprintf(name, sizeof name, "bench-capi-%d", (int)getpid());
  shmpool_pool *pool;
  shmpool_local *local;
  if (shmpool_create(name, 64u << 20, &pool) != SHMPOOL_OK) return 1;
  if (shmpool_local_new(pool, &local) != SHMPOOL_OK) return 1;
  for (int i = 0; i < 1024; i++)
    if (shmpool_alloc(pool, 64, &ring[i]) != SHMPOOL_OK) return 1;
  double uncached = pairs(pool, NULL), cached = pairs(pool, local);
  printf("c api: 64 B pair, working set 1024: %.1f ns, cached %.1f ns (median of 7 x 1M)\n", uncached, cached);
  int ok = uncached > 0 && cached > 0 && shmpool_local_close(local) == SHMPOOL_OK;
  return ok && shmpool_destroy(pool) == SHMPOOL_OK ? 0 : 1;
}
