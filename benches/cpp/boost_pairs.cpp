// Peer benchmark: Boost.Interprocess managed_shared_memory allocate/deallocate, 64-byte
// pairs against a working set of 1024 live blocks (the workload of shmpool's `pairs` child).
// Built and run by benches/src/bin/processes.rs only when the Boost headers are installed.
// Usage: boost_pairs PAIRS   prints the nanoseconds per pair.
#include <boost/interprocess/managed_shared_memory.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
    namespace bip = boost::interprocess;
    const long pairs = argc > 1 ? std::atol(argv[1]) : 1000000;
    const std::string name = "shmpool-bench-boost-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    long nanos = 0;
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), 64 << 20);
        void* ring[1024];
        for (auto& block : ring) block = segment.allocate(64);
        auto start = std::chrono::steady_clock::now();
        for (long i = 0; i < pairs; ++i) {
            void*& block = ring[i % 1024];
            segment.deallocate(block);
            block = segment.allocate(64);
        }
        nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
        for (auto& block : ring) segment.deallocate(block);
    }
    bip::shared_memory_object::remove(name.c_str());
    std::printf("%.1f\n", double(nanos) / double(pairs));
    return 0;
}
