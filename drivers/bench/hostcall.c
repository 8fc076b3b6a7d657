/* Benchmark guest: measures the cost of crossing between Wasm and the host.
 * calls(n) makes n calls to a host function that does nothing; ping() does nothing itself. */
#include <stdint.h>

__attribute__((import_module("edgeagent:bench/null"), import_name("noop"))) int32_t host_noop(int32_t x);

__attribute__((export_name("calls"))) int32_t calls(int32_t n) {
    int32_t acc = 0;
    for (int32_t i = 0; i < n; i++) acc += host_noop(i);
    return acc;
}

__attribute__((export_name("ping"))) int32_t ping(int32_t x) { return x + 1; }
