// The C API from C++: a pool, an allocation written through its pointer, its descriptor
// attached again (as another process would), and errors as exceptions.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#include "shmpool.h"

static void ok(int status) {
  if (status != SHMPOOL_OK) throw std::runtime_error(std::string("shmpool: ") + shmpool_last_error());
}

int main() {
  std::string name = "test-cpp-example-" + std::to_string(getpid());
  shmpool_pool *pool = nullptr;
  ok(shmpool_create(name.c_str(), 4u << 20, &pool));
  shmpool_allocation a;
  ok(shmpool_alloc(pool, 64, &a));
  std::strcpy(static_cast<char *>(a.ptr), "hello from C++");
  std::vector<uint8_t> descriptor(128);
  size_t len = 0;
  ok(shmpool_alloc_descriptor(pool, &a, descriptor.data(), descriptor.size(), &len));
  shmpool_pool *other = nullptr;
  shmpool_allocation same;
  ok(shmpool_attach_alloc(descriptor.data(), len, &other, &same));
  std::printf("%s (%zu-byte descriptor)\n", static_cast<const char *>(same.ptr), len);
  ok(shmpool_free(other, &same));
  try {
    ok(shmpool_free(pool, &a));
    return 1;
  } catch (const std::runtime_error &error) {
    std::printf("a double free is an error: %s\n", error.what());
  }
  ok(shmpool_detach(other));
  ok(shmpool_destroy(pool));
  return 0;
}
