/* Test component (world edgeagent:components/i2c-driver): exercises every wasi:i2c/i2c method through
 * wit-bindgen's C bindings, against a simulated HTS221 (WHO_AM_I 0x0F = 0xBC, calibration at 0x30, auto-increment
 * with the sub-address MSB). read() returns, in order:
 *   0 WHO_AM_I by transaction([write(0x0F), read(1)])
 *   1 WHO_AM_I by write(0x0F) then read(1)
 *   2 WHO_AM_I by write-read
 *   3 the number of results a three-operation transaction returned ([write(0xB0), read(2), read(2)]: 2)
 *   4 calibration bytes 0x30..0x33 from those two reads, as one big-endian number
 *   5 the error-code tag of a transaction to address + 1 (not granted): 4 = other
 *   6 the error-code tag of a read from an address with nothing (granted by the test's policy): 2 = NACK
 *   7 its no-acknowledge-source: 0 = address */
#include <stdlib.h>
#include <string.h>

#include "i2c_driver.h"

static wasi_i2c_i2c_own_i2c_t bus;
static uint16_t addr;

bool exports_edgeagent_driver_i2c_driver_init(wasi_i2c_i2c_own_i2c_t b, wasi_i2c_delay_own_delay_t d,
                                              uint16_t address, wasi_i2c_i2c_error_code_t *err) {
    bus = b;
    addr = address;
    wasi_i2c_delay_delay_drop_own(d);
    return true;
}

void exports_edgeagent_driver_i2c_driver_describe(exports_edgeagent_driver_i2c_driver_list_channel_t *ret) {
    static const char *names[] = {"t", "wr", "ww", "n", "cal", "denied", "nack", "source"};
    size_t n = sizeof names / sizeof names[0];
    ret->ptr = calloc(n, sizeof *ret->ptr);
    ret->len = n;
    for (size_t i = 0; i < n; i++) {
        i2c_driver_string_dup(&ret->ptr[i].name, names[i]);
        i2c_driver_string_dup(&ret->ptr[i].unit, "");
    }
}

static wasi_i2c_i2c_borrow_i2c_t b(void) { return wasi_i2c_i2c_borrow_i2c(bus); }

bool exports_edgeagent_driver_i2c_driver_read(i2c_driver_list_f64_t *ret, wasi_i2c_i2c_error_code_t *err) {
    double *v = calloc(8, sizeof(double));
    uint8_t reg = 0x0F;
    wasi_i2c_i2c_operation_t ops[3];
    ops[0].tag = WASI_I2C_I2C_OPERATION_WRITE;
    ops[0].val.write = (i2c_driver_list_u8_t){&reg, 1};
    ops[1].tag = WASI_I2C_I2C_OPERATION_READ;
    ops[1].val.read = 1;
    wasi_i2c_i2c_list_operation_t list = {ops, 2};
    i2c_driver_list_list_u8_t results;
    if (!wasi_i2c_i2c_method_i2c_transaction(b(), addr, &list, &results, err)) return false;
    v[0] = results.len == 1 && results.ptr[0].len == 1 ? results.ptr[0].ptr[0] : -1;
    i2c_driver_list_list_u8_free(&results);

    i2c_driver_list_u8_t w = {&reg, 1}, got;
    if (!wasi_i2c_i2c_method_i2c_write(b(), addr, &w, err)) return false;
    if (!wasi_i2c_i2c_method_i2c_read(b(), addr, 1, &got, err)) return false;
    v[1] = got.len == 1 ? got.ptr[0] : -1;
    i2c_driver_list_u8_free(&got);

    if (!wasi_i2c_i2c_method_i2c_write_read(b(), addr, &w, 1, &got, err)) return false;
    v[2] = got.len == 1 ? got.ptr[0] : -1;
    i2c_driver_list_u8_free(&got);

    uint8_t cal = 0x30 | 0x80;
    ops[0].val.write = (i2c_driver_list_u8_t){&cal, 1};
    ops[1].val.read = 2;
    ops[2].tag = WASI_I2C_I2C_OPERATION_READ;
    ops[2].val.read = 2;
    list.len = 3;
    if (!wasi_i2c_i2c_method_i2c_transaction(b(), addr, &list, &results, err)) return false;
    v[3] = (double)results.len;
    uint32_t c = 0;
    for (size_t i = 0; i < results.len; i++)
        for (size_t j = 0; j < results.ptr[i].len; j++) c = (c << 8) | results.ptr[i].ptr[j];
    v[4] = c;
    i2c_driver_list_list_u8_free(&results);

    wasi_i2c_i2c_error_code_t e;
    list.len = 2;
    v[5] = wasi_i2c_i2c_method_i2c_transaction(b(), addr + 1, &list, &results, &e) ? -1 : e.tag;
    v[6] = wasi_i2c_i2c_method_i2c_read(b(), 0x10, 1, &got, &e) ? -1 : e.tag;
    v[7] = e.tag == WASI_I2C_I2C_ERROR_CODE_NO_ACKNOWLEDGE ? e.val.no_acknowledge : -1;
    ret->ptr = v;
    ret->len = 8;
    return true;
}

bool exports_edgeagent_driver_i2c_driver_write(i2c_driver_string_t *text, wasi_i2c_i2c_error_code_t *err) {
    i2c_driver_string_free(text);
    err->tag = WASI_I2C_I2C_ERROR_CODE_OTHER;
    return false;
}
