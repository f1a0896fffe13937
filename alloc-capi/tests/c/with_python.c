/* A C process and a Python process share one pool: this program attaches the allocation whose
   descriptor (hex) it is given, checks the bytes Python wrote, writes its answer after them,
   and prints the descriptor of an allocation of its own for Python to read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmpool.h"

static int fail(const char *what) {
  fprintf(stderr, "%s: %s\n", what, shmpool_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  size_t len = strlen(argv[1]) / 2;
  unsigned char descriptor[128];
  if (len > sizeof descriptor) return 2;
  for (size_t i = 0; i < len; i++) sscanf(argv[1] + 2 * i, "%2hhx", &descriptor[i]);
  shmpool_pool *pool = NULL;
  shmpool_allocation a, mine;
  if (shmpool_attach_alloc(descriptor, len, &pool, &a) != SHMPOOL_OK) return fail("attach_alloc");
  if (a.size < 32 || memcmp(a.ptr, "from python", 11) != 0) return fail("python's bytes");
  memcpy((char *)a.ptr + 16, "from C", 6);
  if (shmpool_alloc(pool, 100, &mine) != SHMPOOL_OK) return fail("alloc");
  memcpy(mine.ptr, "made in C", 9);
  unsigned char out[128];
  if (shmpool_alloc_descriptor(pool, &mine, out, sizeof out, &len) != SHMPOOL_OK) return fail("descriptor");
  for (size_t i = 0; i < len; i++) printf("%02x", out[i]);
  printf("\n");
  return shmpool_detach(pool) == SHMPOOL_OK ? 0 : fail("detach");
}
