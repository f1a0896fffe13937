/* The C API from C: every function, every error code a caller can reach, and processes (fork)
   passing allocation descriptors through a pipe. Built and run by scripts/c-test. */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmpool.h"

#define CHECK(call, want)                                                                      \
  do {                                                                                         \
    int got_ = (call);                                                                         \
    if (got_ != (want)) {                                                                      \
      fprintf(stderr, "%s:%d: %s gave %d, want %d (%s)\n", __FILE__, __LINE__, #call, got_,   \
              (int)(want), shmpool_last_error());                                              \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

static char name[64];
static char other_name[64];

static void handles_and_descriptors(void) {
  shmpool_pool *pool = NULL, *again = NULL, *by_name = NULL;
  CHECK(shmpool_create(name, 8u << 20, &pool), SHMPOOL_OK);
  CHECK(shmpool_create(name, 8u << 20, &again), SHMPOOL_EXISTS);
  assert(strstr(shmpool_last_error(), name) != NULL);

  uint8_t descriptor[128];
  size_t len = 0;
  CHECK(shmpool_descriptor(pool, descriptor, 4, &len), SHMPOOL_BAD_ARGUMENT);
  assert(len > 4 && len <= sizeof descriptor);
  CHECK(shmpool_descriptor(pool, descriptor, sizeof descriptor, &len), SHMPOOL_OK);
  CHECK(shmpool_attach(descriptor, len, &again), SHMPOOL_OK);
  CHECK(shmpool_attach_by_name(name, &by_name), SHMPOOL_OK);

  shmpool_allocation a;
  CHECK(shmpool_alloc(again, 1000, &a), SHMPOOL_OK);
  assert(a.size == 1000 && a.ptr != NULL && a.alloc_type == 0);
  memset(a.ptr, 7, a.size);
  uint8_t alloc_descriptor[128];
  CHECK(shmpool_alloc_descriptor(pool, &a, alloc_descriptor, sizeof alloc_descriptor, &len), SHMPOOL_OK);
  shmpool_pool *through = NULL;
  shmpool_allocation same;
  CHECK(shmpool_attach_alloc(alloc_descriptor, len, &through, &same), SHMPOOL_OK);
  assert(same.id_slot == a.id_slot && same.id_generation == a.id_generation);
  assert(((unsigned char *)same.ptr)[999] == 7);
  CHECK(shmpool_check(by_name), SHMPOOL_OK);

  CHECK(shmpool_free(by_name, &a), SHMPOOL_OK);
  CHECK(shmpool_free(pool, &a), SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_alloc_descriptor(pool, &a, alloc_descriptor, sizeof alloc_descriptor, &len),
        SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_attach_alloc(alloc_descriptor, len, &through, &same), SHMPOOL_INVALID_ALLOCATION);

  CHECK(shmpool_detach(through), SHMPOOL_OK);
  CHECK(shmpool_detach(by_name), SHMPOOL_OK);
  CHECK(shmpool_destroy(pool), SHMPOOL_OK);
  CHECK(shmpool_alloc(again, 8, &a), SHMPOOL_DESTROYED);
  CHECK(shmpool_detach(again), SHMPOOL_OK);
  CHECK(shmpool_attach_by_name(name, &again), SHMPOOL_NOT_FOUND);
}

static void bad_arguments_and_full_pools(void) {
  shmpool_pool *pool = NULL;
  shmpool_allocation a;
  size_t len;
  uint8_t garbage[40] = {1, 2, 3};
  CHECK(shmpool_create(NULL, 1u << 20, &pool), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_create("bad/name", 1u << 20, &pool), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_create(other_name, 1u << 20, NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_create(other_name, UINT64_MAX / 2, &pool), SHMPOOL_NO_SPACE);
  CHECK(shmpool_attach(NULL, 0, &pool), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_attach(garbage, sizeof garbage, &pool), SHMPOOL_INVALID_DESCRIPTOR);
  CHECK(shmpool_attach_alloc(garbage, sizeof garbage, &pool, &a), SHMPOOL_INVALID_DESCRIPTOR);
  CHECK(shmpool_alloc(NULL, 8, &a), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_free(NULL, &a), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_descriptor(NULL, NULL, 0, &len), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_check(NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_reclaim_dead(NULL, NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_detach(NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_destroy(NULL), SHMPOOL_BAD_ARGUMENT);

  CHECK(shmpool_create(other_name, 1u << 20, &pool), SHMPOOL_OK);
  /* Review of 6fc3234: ids alone do not say which pool they are of; a free through a handle of
     another pool freed that pool's allocation with the same id. */
  shmpool_pool *third = NULL;
  shmpool_allocation mine, theirs;
  CHECK(shmpool_create(name, 1u << 20, &third), SHMPOOL_OK);
  CHECK(shmpool_alloc(pool, 16, &mine), SHMPOOL_OK);
  CHECK(shmpool_alloc(third, 16, &theirs), SHMPOOL_OK);
  assert(mine.id_slot == theirs.id_slot && mine.id_generation == theirs.id_generation);
  CHECK(shmpool_free(third, &mine), SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_alloc_descriptor(third, &mine, garbage, sizeof garbage, &len), SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_free(third, &theirs), SHMPOOL_OK);
  CHECK(shmpool_free(pool, &mine), SHMPOOL_OK);
  CHECK(shmpool_destroy(third), SHMPOOL_OK);
  CHECK(shmpool_alloc(pool, 8, NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_free(pool, NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_alloc(pool, 1u << 30, &a), SHMPOOL_FULL);
  int held = 0;
  shmpool_allocation block[64];
  while (held < 64 && shmpool_alloc(pool, 64u << 10, &block[held]) == SHMPOOL_OK) held++;
  assert(held > 4 && held < 64);
  CHECK(shmpool_alloc_blocking(pool, 64u << 10, 0, &a), SHMPOOL_TIMEOUT);
  CHECK(shmpool_alloc_blocking(pool, 64u << 10, 20 * 1000 * 1000, &a), SHMPOOL_TIMEOUT);
  CHECK(shmpool_free(pool, &block[--held]), SHMPOOL_OK);
  CHECK(shmpool_alloc_blocking(pool, 64u << 10, -1, &a), SHMPOOL_OK);
  CHECK(shmpool_free(pool, &a), SHMPOOL_OK);
  while (held > 0) CHECK(shmpool_free(pool, &block[--held]), SHMPOOL_OK);
  uint64_t freed = 99;
  CHECK(shmpool_reclaim_dead(pool, &freed), SHMPOOL_OK);
  assert(freed == 0);
  CHECK(shmpool_check(pool), SHMPOOL_OK);
  CHECK(shmpool_destroy(pool), SHMPOOL_OK);
}

/* A child allocates, fills and sends descriptors through a pipe, then exits; the parent attaches
   each (adopting it), checks the bytes, frees it. A second child dies holding allocations:
   reclaim gives them back. */
static void processes_pass_descriptors_through_a_pipe(void) {
  shmpool_pool *pool = NULL;
  CHECK(shmpool_create(name, 8u << 20, &pool), SHMPOOL_OK);
  int fds[2];
  assert(pipe(fds) == 0);
  pid_t child = fork();
  assert(child >= 0);
  if (child == 0) {
    close(fds[0]);
    for (int i = 0; i < 10; i++) {
      shmpool_allocation a;
      if (shmpool_alloc(pool, 100 + i * 1000, &a) != SHMPOOL_OK) _exit(2);
      memset(a.ptr, 'a' + i, a.size);
      uint8_t d[128];
      size_t len = 0;
      if (shmpool_alloc_descriptor(pool, &a, d, sizeof d, &len) != SHMPOOL_OK) _exit(3);
      uint8_t n = (uint8_t)len;
      if (write(fds[1], &n, 1) != 1 || write(fds[1], d, len) != (ssize_t)len) _exit(4);
    }
    _exit(0);
  }
  close(fds[1]);
  for (int i = 0; i < 10; i++) {
    uint8_t n, d[128];
    assert(read(fds[0], &n, 1) == 1 && read(fds[0], d, n) == n);
    shmpool_pool *through = NULL;
    shmpool_allocation a;
    CHECK(shmpool_attach_alloc(d, n, &through, &a), SHMPOOL_OK);
    assert(a.size == (uint64_t)(100 + i * 1000));
    for (uint64_t k = 0; k < a.size; k++) assert(((char *)a.ptr)[k] == 'a' + i);
    CHECK(shmpool_free(through, &a), SHMPOOL_OK);
    CHECK(shmpool_detach(through), SHMPOOL_OK);
  }
  close(fds[0]);
  int status;
  assert(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);

  pid_t doomed = fork();
  assert(doomed >= 0);
  if (doomed == 0) {
    shmpool_allocation a;
    for (int i = 0; i < 5; i++)
      if (shmpool_alloc(pool, 4096, &a) != SHMPOOL_OK) _exit(2);
    _exit(0);
  }
  assert(waitpid(doomed, &status, 0) == doomed && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  uint64_t freed = 0;
  CHECK(shmpool_reclaim_dead(pool, &freed), SHMPOOL_OK);
  assert(freed == 5);
  CHECK(shmpool_check(pool), SHMPOOL_OK);
  CHECK(shmpool_destroy(pool), SHMPOOL_OK);
}

/* The per-thread cached view: blocks come back through it, a double free still fails, and a fork
   child's copy never hands out its parent's cached blocks. */
static void cached_views(void) {
  shmpool_pool *pool = NULL;
  shmpool_local *local = NULL;
  shmpool_allocation a, b;
  CHECK(shmpool_create(name, 8u << 20, &pool), SHMPOOL_OK);
  CHECK(shmpool_local_new(NULL, &local), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_local_new(pool, NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_local_new(pool, &local), SHMPOOL_OK);
  CHECK(shmpool_local_alloc(local, 64, &a), SHMPOOL_OK);
  memset(a.ptr, 1, 64);
  CHECK(shmpool_local_free(local, &a), SHMPOOL_OK);
  CHECK(shmpool_local_free(local, &a), SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_free(pool, &a), SHMPOOL_INVALID_ALLOCATION);
  CHECK(shmpool_local_alloc(local, 64, &b), SHMPOOL_OK);
  assert(b.offset == a.offset && b.id_generation != a.id_generation);
  CHECK(shmpool_local_free(local, &b), SHMPOOL_OK);
  /* The cache now holds b's block: a fork child allocating through its copy gets another. */
  int fds[2];
  assert(pipe(fds) == 0);
  pid_t child = fork();
  assert(child >= 0);
  if (child == 0) {
    shmpool_allocation c;
    uint64_t offset = 0;
    if (shmpool_local_alloc(local, 64, &c) == SHMPOOL_OK) offset = c.offset;
    if (write(fds[1], &offset, sizeof offset) != sizeof offset) _exit(3);
    _exit(0);
  }
  uint64_t child_offset = 0;
  assert(read(fds[0], &child_offset, sizeof child_offset) == sizeof child_offset);
  int status;
  assert(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  assert(child_offset != 0 && child_offset != b.offset);
  close(fds[0]);
  close(fds[1]);
  CHECK(shmpool_local_alloc(local, 64, &a), SHMPOOL_OK);
  assert(a.offset == b.offset);
  CHECK(shmpool_local_free(local, &a), SHMPOOL_OK);
  CHECK(shmpool_local_flush(local), SHMPOOL_OK);
  CHECK(shmpool_local_close(local), SHMPOOL_OK);
  CHECK(shmpool_local_close(NULL), SHMPOOL_BAD_ARGUMENT);
  CHECK(shmpool_local_alloc(NULL, 8, &a), SHMPOOL_BAD_ARGUMENT);
  uint64_t freed = 0;
  CHECK(shmpool_reclaim_dead(pool, &freed), SHMPOOL_OK);
  assert(freed == 1); /* the child's block */
  CHECK(shmpool_check(pool), SHMPOOL_OK);
  CHECK(shmpool_destroy(pool), SHMPOOL_OK);
}

/* Review of 6fc3234: a failing call from a thread-exit destructor (after the library's
   per-thread storage was torn down) aborted the process. It must return its status. */
static pthread_key_t key;

static void at_thread_exit(void *value) {
  (void)value;
  shmpool_allocation a;
  memset(&a, 0, sizeof a);
  if (shmpool_free(NULL, &a) != SHMPOOL_BAD_ARGUMENT) abort();
  if (shmpool_last_error() == NULL) abort();
}

static void *set_key(void *value) {
  shmpool_allocation a;
  memset(&a, 0, sizeof a);
  CHECK(shmpool_free(NULL, &a), SHMPOOL_BAD_ARGUMENT); /* the thread's storage exists */
  pthread_setspecific(key, (void *)1);
  return value;
}

static void calls_from_thread_exit_destructors(void) {
  pthread_t thread;
  assert(pthread_key_create(&key, at_thread_exit) == 0);
  assert(pthread_create(&thread, NULL, set_key, NULL) == 0);
  assert(pthread_join(thread, NULL) == 0);
}

int main(void) {
  snprintf(name, sizeof name, "test-c-api-%d", (int)getpid());
  snprintf(other_name, sizeof other_name, "test-c-api-other-%d", (int)getpid());
  handles_and_descriptors();
  bad_arguments_and_full_pools();
  processes_pass_descriptors_through_a_pipe();
  cached_views();
  calls_from_thread_exit_destructors();
  assert(strlen(shmpool_last_error()) > 0);
  printf("c api: all passed\n");
  return 0;
}
