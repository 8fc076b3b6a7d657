/* Test guest: imports wasi:i2c/i2c read with the wrong signature (two parameters instead of four). */
#include <stdint.h>
__attribute__((import_module("wasi:i2c/i2c"), import_name("[method]i2c.read"))) int32_t bad_read(int32_t, int32_t);
__attribute__((export_name("run"))) int32_t run(int32_t x) { return bad_read(x, x); }
