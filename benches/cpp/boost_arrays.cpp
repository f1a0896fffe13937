// Peer benchmark for the arrays workload (benches/src/bin/arrays.rs): Boost.Interprocess
// managed_shared_memory (a best-fit tree behind a mutex) runs the sequence that arrays.rs wrote
// to a file. Usage: boost_arrays SEQUENCE_FILE POOL_BYTES [DRAIN]; prints one markdown table row.
#include <boost/interprocess/managed_shared_memory.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <new>
#include <string>
#include <unistd.h>
#include <vector>

namespace bip = boost::interprocess;
using Clock = std::chrono::steady_clock;

static uint64_t get(std::ifstream& in) {
    uint64_t value = 0;
    in.read(reinterpret_cast<char*>(&value), 8);
    return value;
}

static uint32_t nanos(Clock::time_point since) {
    auto n = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count();
    return n > UINT32_MAX ? UINT32_MAX : uint32_t(n);
}

static std::string at(std::vector<uint32_t>& v, double p) {
    uint32_t value = v[size_t(double(v.size() - 1) * p)];
    char text[32];
    if (value >= 10000) std::snprintf(text, sizeof text, "%.1f µs", value / 1000.0);
    else std::snprintf(text, sizeof text, "%u ns", value);
    return text;
}

static std::string summary(std::vector<uint32_t>& v) {
    std::sort(v.begin(), v.end());
    return at(v, 0.5) + " / " + at(v, 0.99) + " / " + at(v, 0.999) + " / " + at(v, 1.0);
}

static bool drain = true;

// Writes one byte in every page; with `drain`, waits until the writes are done (see arrays.rs).
static void touch(char* block, uint64_t size) {
    for (uint64_t i = 0; i < size; i += 4096) static_cast<volatile char*>(block)[i] = 1;
    if (drain) std::atomic_thread_fence(std::memory_order_seq_cst);
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    std::ifstream in(argv[1], std::ios::binary);
    const uint64_t pool_bytes = std::stoull(argv[2]);
    drain = argc < 4 || std::string(argv[3]) != "0";
    std::vector<uint64_t> initial(get(in));
    for (auto& s : initial) s = get(in);
    std::vector<std::pair<uint64_t, uint64_t>> replacements(get(in));
    for (auto& r : replacements) { r.first = get(in); r.second = get(in); }

    const std::string name = "shmpool-bench-boost-arrays-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    std::vector<uint32_t> allocs, frees;
    uint64_t refused = 0, largest = 0;
    {
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), pool_bytes);
        std::vector<std::pair<char*, uint64_t>> live;
        for (uint64_t s : initial) {
            char* p = static_cast<char*>(segment.allocate(s, std::nothrow));
            if (p) touch(p, s);
            live.push_back({p, s});
        }
        for (auto& [slot, s] : replacements) {
            auto& entry = live[slot];
            if (entry.first) {
                auto t = Clock::now();
                segment.deallocate(entry.first);
                frees.push_back(nanos(t));
                entry.first = nullptr;
            }
            auto t = Clock::now();
            char* p = static_cast<char*>(segment.allocate(s, std::nothrow));
            allocs.push_back(nanos(t));
            if (p) { touch(p, s); entry = {p, s}; } else refused++;
        }
        uint64_t low = 0, high = pool_bytes / 4096 + 1;
        while (low + 1 < high) {
            uint64_t middle = (low + high) / 2;
            void* p = segment.allocate(middle * 4096, std::nothrow);
            if (p) { segment.deallocate(p); low = middle; } else high = middle;
        }
        largest = low * 4096;
        for (auto& entry : live) if (entry.first) segment.deallocate(entry.first);
    }
    bip::shared_memory_object::remove(name.c_str());
    std::printf("| Boost.Interprocess | %s | %s | %llu | %.1f MiB |\n", summary(allocs).c_str(),
                summary(frees).c_str(), (unsigned long long)refused, largest / 1048576.0);
    return 0;
}
