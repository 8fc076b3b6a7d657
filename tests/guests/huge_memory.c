/* Test guest: 64 MiB of static data, so its memory minimum exceeds a 16 MiB limit at instantiation. */
#include <stdint.h>
static volatile uint8_t big[64 << 20];
__attribute__((export_name("touch"))) int32_t touch(int32_t i) { big[i] = 1; return big[i]; }
__attribute__((export_name("base"))) volatile uint8_t *base(void) { return big; }
