/* Test guest (driver ABI 2): readings cycle good, data error (ea_fail), skipped, good, ... The value is the
 * reading's number, so a test sees which ones got through. init fails with a data error when the address
 * is 0x77 ("wrong chip ID"), as a driver probing the wrong part would. */
#include "edgeagent_i2c.h"
EA_DRIVER_BUFFER()
static uint32_t n;
EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay, uint32_t address) {
    if (address == 0x77) return ea_fail("chip ID 0x58, expected 0x60");
    return EA_OK;
}
EA_EXPORT("describe") int32_t describe(void) {
    __builtin_memcpy(ea_buffer(), "n:1", 3);
    return 3;
}
EA_EXPORT("read") int32_t read(void) {
    n++;
    if (n % 3 == 2) return ea_fail("CRC mismatch (got 0x12, computed 0x34)");
    if (n % 3 == 0) return EA_SKIP;
    ((double *)ea_buffer())[0] = n;
    return 1;
}
