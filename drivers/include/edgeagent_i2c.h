/*
 * edgeagent_i2c.h - the ABI between an edgeagent I2C driver (a wasm32-wasi core module) and its host.
 *
 * Everything a driver author needs is in this file and drivers/README.md. The interfaces are the WIT proposal
 * wasi:i2c@0.2.0-draft (drivers/wit/deps/i2c/i2c.wit) and the driver world edgeagent:driver (drivers/wit/driver.wit),
 * lowered to core Wasm by hand: lists are (pointer, length) pairs in the guest's memory, buffers are always
 * allocated by the guest, results come back as an int32 error code.
 *
 * Build (see drivers/Makefile): clang-14 --target=wasm32-wasi -O2 -mexec-model=reactor -mmutable-globals
 *   -Wl,--export=__stack_pointer -Wl,-z,stack-size=65536 -Iinclude
 *
 * Lifecycle, as the host drives it:
 *   1. instantiate, then the host calls `_initialize` (wasi-libc's reactor start-up: static constructors).
 *   2. ea_abi_version() must return EA_ABI_VERSION.
 *   3. init(i2c, delay, address): the host hands over an i2c bus handle, a delay handle and the device address
 *      from the driver's policy. Probe the chip, configure it, return EA_OK or a negative EA_I2C_ERR_*.
 *   4. Sensors: read() fills ea_buffer() with `double` values, returns their count (or a negative error);
 *      describe() writes "name:unit,name:unit,..." (one per value, in the same order) into ea_buffer() and
 *      returns its length. Output devices: the host copies input into ea_buffer() and calls write(len).
 * The host may snapshot the guest between calls and resume it later in a fresh instance: keep all state in
 * memory (globals, heap), never in host handles you did not get from init().
 *
 * Limits: a guest gets a memory limit (default 16 MiB) and an epoch deadline: a stretch of Wasm code longer
 * than the compute limit (default 50 ms) between host calls is stopped, and a whole call longer than the call
 * limit (default 10 s) too. Waiting belongs in ea_delay_ns(), which does not count as compute.
 *
 * Capabilities: the handle only reaches the addresses the policy grants. Any other address fails with
 * EA_I2C_ERR_ACCESS without touching the bus.
 */
#ifndef EDGEAGENT_I2C_H
#define EDGEAGENT_I2C_H

#include <stddef.h>
#include <stdint.h>

/* ABI versions: 1, the original; 2 adds EA_ERR_DATA with ea_fail() and EA_SKIP (the host accepts both, so
 * drivers built against version 1 keep working; a version-2 driver on a host that only knows 1 is refused
 * with one line naming both versions). Define EA_ABI_VERSION before including this header to build for an
 * older host. */
#ifndef EA_ABI_VERSION
#define EA_ABI_VERSION 2
#endif

#define EA_IMPORT(mod, name) __attribute__((import_module(mod), import_name(name)))
#define EA_EXPORT(name) __attribute__((export_name(name)))

/* Handles (WIT resources `i2c` and `delay`): opaque non-zero integers the host hands to init(). */
typedef uint32_t ea_i2c_t;
typedef uint32_t ea_delay_t;

/* wasi:i2c/i2c `type address = u16`: 7-bit (0x00-0x7f) or 10-bit addresses. */
typedef uint16_t ea_i2c_address_t;

/* Result codes: 0 is success; the negative values are the WIT `error-code` variant in its order, then
 * EA_I2C_ERR_ACCESS, edgeagent's policy denial (a component host would report it as `other`). */
enum {
    EA_OK = 0,
    EA_I2C_ERR_BUS = -1,              /* bus error: misplaced START/STOP, adapter fault */
    EA_I2C_ERR_ARBITRATION_LOSS = -2, /* another master won the bus */
    EA_I2C_ERR_NO_ACK_ADDRESS = -3,   /* no-acknowledge(address): nothing answers at that address */
    EA_I2C_ERR_NO_ACK_DATA = -4,      /* no-acknowledge(data): the device refused a data byte */
    EA_I2C_ERR_NO_ACK_UNKNOWN = -5,   /* no-acknowledge(unknown): a NACK the adapter cannot place */
    EA_I2C_ERR_OVERRUN = -6,          /* overrun / underrun */
    EA_I2C_ERR_OTHER = -7,            /* anything else (timeout, too long a transfer, adapter gone) */
    EA_I2C_ERR_ACCESS = -8,           /* the policy does not grant this address */
};

/* Driver-defined results (ABI 2), from init(), read() or write():
 *   EA_ERR_DATA: the device answered but its data is wrong (CRC mismatch, unexpected chip ID, out-of-range
 *     raw value). Return it through ea_fail("what was wrong"): the host reports "data error: <message>",
 *     blaming the data, not the bus; a stream of readings goes on with the next one.
 *   EA_SKIP (read only): no reading this time (a conversion not ready, a value to be discarded); the host
 *     records nothing and asks again at the next interval. */
enum {
    EA_ERR_DATA = -32,
    EA_SKIP = -33,
};
/* wasi:i2c/i2c `variant operation { read(u64), write(list<u8>) }`, lowered: the discriminant, then the guest
 * buffer the host reads from (write) or fills (read). */
enum { EA_I2C_OP_READ = 0, EA_I2C_OP_WRITE = 1 };
typedef struct {
    uint32_t kind;  /* EA_I2C_OP_READ or EA_I2C_OP_WRITE */
    uint8_t *buf;   /* read: filled by the host; write: sent */
    uint32_t len;   /* bytes */
} ea_i2c_op_t;      /* 12 bytes: {u32 kind; u32 ptr; u32 len} */

/* Limits enforced by the host (exceeding them returns EA_I2C_ERR_OTHER). */
#define EA_I2C_MAX_OPS 64
#define EA_I2C_MAX_TRANSFER 65536

/* ---- imports: wasi:i2c/i2c (resource i2c) ---- */

/* transaction: one combined transfer (repeated START between operations, one STOP at the end: Linux
 * I2C_RDWR). On success every read operation's buffer is filled. */
EA_IMPORT("wasi:i2c/i2c", "[method]i2c.transaction")
int32_t ea_i2c_transaction(ea_i2c_t bus, uint32_t address, const ea_i2c_op_t *ops, uint32_t n_ops);

/* read: `len` bytes from the device into `buf`. */
EA_IMPORT("wasi:i2c/i2c", "[method]i2c.read")
int32_t ea_i2c_read(ea_i2c_t bus, uint32_t address, uint8_t *buf, uint32_t len);

/* write: `len` bytes from `buf` to the device. */
EA_IMPORT("wasi:i2c/i2c", "[method]i2c.write")
int32_t ea_i2c_write(ea_i2c_t bus, uint32_t address, const uint8_t *buf, uint32_t len);

/* write-read: write `wlen` bytes, repeated START, read `rlen` bytes (the usual register read). */
EA_IMPORT("wasi:i2c/i2c", "[method]i2c.write-read")
int32_t ea_i2c_write_read(ea_i2c_t bus, uint32_t address, const uint8_t *wbuf, uint32_t wlen, uint8_t *rbuf,
                          uint32_t rlen);

/* ---- imports: wasi:i2c/delay (resource delay) ---- */

/* delay-ns: wait at least `ns` nanoseconds (sleeps in the host; not counted as compute). */
EA_IMPORT("wasi:i2c/delay", "[method]delay.delay-ns")
void ea_delay_ns(ea_delay_t delay, uint32_t ns);

/* ---- imports: edgeagent:driver/log ---- */

enum { EA_LOG_TRACE = 0, EA_LOG_DEBUG = 1, EA_LOG_INFO = 2, EA_LOG_WARN = 3, EA_LOG_ERROR = 4 };
/* log: one line (UTF-8, up to 1024 bytes) to the agent's log, tagged with the driver's name. Rate-limited. */
EA_IMPORT("edgeagent:driver/log", "log")
void ea_log(uint32_t level, const char *msg, uint32_t len);

/* ---- helpers (header-only) ---- */

/* Reads `n` bytes starting at register `reg` (8-bit register address, auto-increment). */
static inline int32_t ea_i2c_read_regs(ea_i2c_t bus, uint32_t addr, uint8_t reg, uint8_t *out, uint32_t n) {
    return ea_i2c_write_read(bus, addr, &reg, 1, out, n);
}

/* Writes one byte `value` to register `reg`. */
static inline int32_t ea_i2c_write_reg(ea_i2c_t bus, uint32_t addr, uint8_t reg, uint8_t value) {
    uint8_t b[2] = {reg, value};
    return ea_i2c_write(bus, addr, b, 2);
}

static inline void ea_delay_ms(ea_delay_t delay, uint32_t ms) {
    while (ms > 4000) { ea_delay_ns(delay, 4000000000u); ms -= 4000; }
    ea_delay_ns(delay, ms * 1000000u);
}

/* ---- exports every I2C driver defines (see drivers/README.md for a complete example) ----
 *
 *   EA_EXPORT("ea_abi_version") int32_t ea_abi_version(void);     return EA_ABI_VERSION
 *   EA_EXPORT("ea_buffer")      uint8_t *ea_buffer(void);         the exchange buffer, EA_BUFFER_SIZE bytes
 *   EA_EXPORT("init")           int32_t init(uint32_t i2c, uint32_t delay, uint32_t address);
 * sensors:
 *   EA_EXPORT("describe")       int32_t describe(void);           "name:unit,..." into ea_buffer(); length
 *   EA_EXPORT("read")           int32_t read(void);               doubles into ea_buffer(); count or error
 * output devices:
 *   EA_EXPORT("write")          int32_t write(uint32_t len);      consume ea_buffer()[0..len); 0 or error
 *
 * EA_DRIVER_BUFFER() defines the first two.
 */
#define EA_BUFFER_SIZE 4096
extern uint8_t ea_exchange_buffer[EA_BUFFER_SIZE];

/* ea_fail: `return ea_fail("CRC mismatch");` The message (up to 255 bytes, NUL-terminated) goes into the
 * exchange buffer, where the host reads it when the call returns EA_ERR_DATA. Needs EA_DRIVER_BUFFER(). */
static inline int32_t ea_fail(const char *msg) {
    size_t i = 0;
    for (; msg[i] && i < 255; i++) ea_exchange_buffer[i] = (uint8_t)msg[i];
    ea_exchange_buffer[i] = 0;
    return EA_ERR_DATA;
}

#define EA_DRIVER_BUFFER()                                                                  \
    _Alignas(8) uint8_t ea_exchange_buffer[EA_BUFFER_SIZE];                                 \
    EA_EXPORT("ea_abi_version") int32_t ea_abi_version(void) { return EA_ABI_VERSION; }    \
    EA_EXPORT("ea_buffer") uint8_t *ea_buffer(void) { return ea_exchange_buffer; }

#endif /* EDGEAGENT_I2C_H */
