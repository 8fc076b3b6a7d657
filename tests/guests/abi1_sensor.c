/* Test guest: a sensor driver built for driver ABI 1 (before EA_ERR_DATA and EA_SKIP): still runs. */
#define EA_ABI_VERSION 1
#include "edgeagent_i2c.h"
EA_DRIVER_BUFFER()
EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay, uint32_t address) { return EA_OK; }
EA_EXPORT("describe") int32_t describe(void) {
    __builtin_memcpy(ea_buffer(), "x:1", 3);
    return 3;
}
EA_EXPORT("read") int32_t read(void) {
    ((double *)ea_buffer())[0] = 42.0;
    return 1;
}
