/* Test guest: imports a function no host provides. */
#include <stdint.h>
__attribute__((import_module("env"), import_name("mystery"))) int32_t mystery(int32_t);
__attribute__((export_name("run"))) int32_t run(int32_t x) { return mystery(x); }
