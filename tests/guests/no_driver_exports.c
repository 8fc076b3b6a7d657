/* Test guest: a valid reactor module that is not a driver (no init, no ea_abi_version). */
#include <stdint.h>
__attribute__((export_name("hello"))) int32_t hello(void) { return 42; }
