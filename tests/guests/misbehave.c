/* Test guest: every way a driver can misbehave, one export each (tests/unit/test_wasm_guest.py). */
#include <stdlib.h>
#include <string.h>
#include "edgeagent_i2c.h"

EA_EXPORT("trap") int32_t trap(void) { __builtin_trap(); }

EA_EXPORT("spin") int32_t spin(void) {
    volatile int32_t x = 0;
    for (;;) x++;
}

/* Loops on a blocking host call: only the per-call wall-clock limit stops it. */
EA_EXPORT("spin_host") int32_t spin_host(uint32_t delay) {
    for (;;) ea_delay_ns(delay, 1000000);
}

/* Grows linear memory 1 MiB at a time until the host refuses; returns the final size in pages. */
EA_EXPORT("bomb") int32_t bomb(void) {
    while (__builtin_wasm_memory_grow(0, 16) != (size_t)-1) {}
    return (int32_t)__builtin_wasm_memory_size(0);
}

/* Same through malloc: returns how many MiB it got before malloc failed. */
EA_EXPORT("malloc_bomb") int32_t malloc_bomb(void) {
    int32_t n = 0;
    while (malloc(1 << 20)) n++;
    return n;
}

EA_EXPORT("bad_pointer") int32_t bad_pointer(uint32_t i2c) {
    return ea_i2c_read(i2c, 0x48, (uint8_t *)0xFFFFFFF0u, 32);
}

EA_EXPORT("div") int32_t divide(int32_t a, int32_t b) { return a / b; }

EA_EXPORT("recurse") int32_t recurse(int32_t n) {
    volatile char pad[256];
    pad[0] = (char)n;
    if (n < 0) return 0; /* never, for n >= 0; keeps the compiler from calling it infinite */
    return recurse(n + 1) + pad[0];
}

/* Register read through write-read; returns the 16-bit big-endian value or the negative error. */
EA_EXPORT("read_word") int32_t read_word(uint32_t i2c, uint32_t addr, uint32_t reg) {
    uint8_t r = (uint8_t)reg, b[2];
    int32_t rc = ea_i2c_write_read(i2c, addr, &r, 1, b, 2);
    return rc != EA_OK ? rc : (b[0] << 8) | b[1];
}

/* The same through one combined transaction: write the register pointer, repeated start, read two bytes. */
EA_EXPORT("read_word_txn") int32_t read_word_txn(uint32_t i2c, uint32_t addr, uint32_t reg) {
    uint8_t r = (uint8_t)reg, b[2] = {0, 0};
    ea_i2c_op_t ops[2] = {{EA_I2C_OP_WRITE, &r, 1}, {EA_I2C_OP_READ, b, 2}};
    int32_t rc = ea_i2c_transaction(i2c, addr, ops, 2);
    return rc != EA_OK ? rc : (b[0] << 8) | b[1];
}

/* A transaction with an unknown operation kind: an ABI violation, the host traps the guest. */
EA_EXPORT("bad_txn") int32_t bad_txn(uint32_t i2c) {
    uint8_t b[1];
    ea_i2c_op_t ops[1] = {{7, b, 1}};
    return ea_i2c_transaction(i2c, 0x48, ops, 1);
}

/* State that lives in globals and on the heap, for snapshot/restore. */
static int32_t counter;
static int32_t *history;
EA_EXPORT("tick") int32_t tick(void) {
    counter++;
    history = realloc(history, sizeof *history * (size_t)counter);
    history[counter - 1] = counter * 10;
    return counter;
}
EA_EXPORT("history_sum") int32_t history_sum(void) {
    int32_t s = 0;
    for (int32_t i = 0; i < counter; i++) s += history[i];
    return s;
}

EA_EXPORT("say") void say(void) {
    static const char m[] = "hello from misbehave";
    ea_log(EA_LOG_INFO, m, sizeof m - 1);
}

/* Plain read and write: set the TMP102 register pointer with a write, then read the word it points at. */
EA_EXPORT("pointer_read") int32_t pointer_read(uint32_t i2c, uint32_t addr, uint32_t reg) {
    uint8_t r = (uint8_t)reg, b[2];
    int32_t rc = ea_i2c_write(i2c, addr, &r, 1);
    if (rc != EA_OK) return rc;
    rc = ea_i2c_read(i2c, addr, b, 2);
    return rc != EA_OK ? rc : (b[0] << 8) | b[1];
}

/* Grows memory by `pages` and returns the address of the first new byte, for host access after a grow. */
EA_EXPORT("grow") uint32_t grow(uint32_t pages) {
    size_t old = __builtin_wasm_memory_grow(0, pages);
    return old == (size_t)-1 ? 0 : (uint32_t)(old * 65536);
}
