/* Test guest: a driver declaring an ABI version no host speaks (99): refused in one line. */
#define EA_ABI_VERSION 99
#include "edgeagent_i2c.h"
EA_DRIVER_BUFFER()
EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay, uint32_t address) { return EA_OK; }
EA_EXPORT("read") int32_t read(void) { return 0; }
