/* Makes an unchanged C driver (drivers/<part>.c, written against include/edgeagent_i2c.h) a WASI 0.2
 * component of the world edgeagent:driver/i2c-sensor (drivers/wit/driver.wit).
 *
 * Two directions:
 * - imports: the C ABI's functions (ea_i2c_write_read, ...) are defined here on the bindings wit-bindgen
 *   generates for wasi:i2c/i2c@0.2.0-draft, wasi:i2c/delay and edgeagent:driver/log. A definition wins over
 *   the header's import declaration at link time, so the driver calls these instead of core imports; the
 *   component then imports the WIT interfaces themselves.
 * - exports: edgeagent:driver/i2c-driver's init, describe, read and write call the driver's own init(),
 *   describe(), read() and write(len), translating the exchange buffer to WIT lists and the negative
 *   EA_I2C_ERR_* codes to the error-code variant.
 * Handles: the driver keeps the i2c and delay handles as plain integers; here they are the component's own
 * resource handles, borrowed for each call. */
#include <stdlib.h>
#include <string.h>

#include "edgeagent_i2c.h"
#include "i2c_driver.h"

/* The driver's entry points (export_name'd in the driver: extra core exports, ignored by the component). */
int32_t init(uint32_t i2c, uint32_t delay, uint32_t address);
__attribute__((weak)) int32_t describe(void);
__attribute__((weak)) int32_t read(void);
__attribute__((weak)) int32_t write(uint32_t len);
uint8_t *ea_buffer(void);

/* ---- the C ABI on the WIT imports ---- */

static int32_t from_error(const wasi_i2c_i2c_error_code_t *e) {
    switch (e->tag) {
    case WASI_I2C_I2C_ERROR_CODE_BUS: return EA_I2C_ERR_BUS;
    case WASI_I2C_I2C_ERROR_CODE_ARBITRATION_LOSS: return EA_I2C_ERR_ARBITRATION_LOSS;
    case WASI_I2C_I2C_ERROR_CODE_NO_ACKNOWLEDGE:
        switch (e->val.no_acknowledge) {
        case WASI_I2C_I2C_NO_ACKNOWLEDGE_SOURCE_ADDRESS: return EA_I2C_ERR_NO_ACK_ADDRESS;
        case WASI_I2C_I2C_NO_ACKNOWLEDGE_SOURCE_DATA: return EA_I2C_ERR_NO_ACK_DATA;
        default: return EA_I2C_ERR_NO_ACK_UNKNOWN;
        }
    case WASI_I2C_I2C_ERROR_CODE_OVERRUN: return EA_I2C_ERR_OVERRUN;
    default: return EA_I2C_ERR_OTHER;
    }
}

static wasi_i2c_i2c_error_code_t to_error(int32_t rc) {
    wasi_i2c_i2c_error_code_t e = {0};
    switch (rc) {
    case EA_I2C_ERR_BUS: e.tag = WASI_I2C_I2C_ERROR_CODE_BUS; break;
    case EA_I2C_ERR_ARBITRATION_LOSS: e.tag = WASI_I2C_I2C_ERROR_CODE_ARBITRATION_LOSS; break;
    case EA_I2C_ERR_NO_ACK_ADDRESS:
    case EA_I2C_ERR_NO_ACK_DATA:
    case EA_I2C_ERR_NO_ACK_UNKNOWN:
        e.tag = WASI_I2C_I2C_ERROR_CODE_NO_ACKNOWLEDGE;
        e.val.no_acknowledge = rc == EA_I2C_ERR_NO_ACK_ADDRESS ? WASI_I2C_I2C_NO_ACKNOWLEDGE_SOURCE_ADDRESS
                               : rc == EA_I2C_ERR_NO_ACK_DATA  ? WASI_I2C_I2C_NO_ACKNOWLEDGE_SOURCE_DATA
                                                               : WASI_I2C_I2C_NO_ACKNOWLEDGE_SOURCE_UNKNOWN;
        break;
    case EA_I2C_ERR_OVERRUN: e.tag = WASI_I2C_I2C_ERROR_CODE_OVERRUN; break;
    default: e.tag = WASI_I2C_I2C_ERROR_CODE_OTHER; break; /* EA_I2C_ERR_ACCESS included: WIT has no case */
    }
    return e;
}

static wasi_i2c_i2c_borrow_i2c_t bus_of(ea_i2c_t bus) {
    return wasi_i2c_i2c_borrow_i2c((wasi_i2c_i2c_own_i2c_t){(int32_t)bus});
}

/* Copies a returned list into the caller's buffer (at most `cap` bytes) and frees it. */
static void take(i2c_driver_list_u8_t *got, uint8_t *out, uint32_t cap) {
    memcpy(out, got->ptr, got->len < cap ? got->len : cap);
    i2c_driver_list_u8_free(got);
}

int32_t ea_i2c_write_read(ea_i2c_t bus, uint32_t address, const uint8_t *wbuf, uint32_t wlen, uint8_t *rbuf,
                          uint32_t rlen) {
    i2c_driver_list_u8_t w = {(uint8_t *)wbuf, wlen}, got;
    wasi_i2c_i2c_error_code_t err;
    if (!wasi_i2c_i2c_method_i2c_write_read(bus_of(bus), (uint16_t)address, &w, rlen, &got, &err))
        return from_error(&err);
    take(&got, rbuf, rlen);
    return EA_OK;
}

int32_t ea_i2c_write(ea_i2c_t bus, uint32_t address, const uint8_t *buf, uint32_t len) {
    i2c_driver_list_u8_t w = {(uint8_t *)buf, len};
    wasi_i2c_i2c_error_code_t err;
    if (!wasi_i2c_i2c_method_i2c_write(bus_of(bus), (uint16_t)address, &w, &err)) return from_error(&err);
    return EA_OK;
}

int32_t ea_i2c_read(ea_i2c_t bus, uint32_t address, uint8_t *buf, uint32_t len) {
    i2c_driver_list_u8_t got;
    wasi_i2c_i2c_error_code_t err;
    if (!wasi_i2c_i2c_method_i2c_read(bus_of(bus), (uint16_t)address, len, &got, &err)) return from_error(&err);
    take(&got, buf, len);
    return EA_OK;
}

int32_t ea_i2c_transaction(ea_i2c_t bus, uint32_t address, const ea_i2c_op_t *ops, uint32_t n_ops) {
    if (n_ops > EA_I2C_MAX_OPS) return EA_I2C_ERR_OTHER;
    wasi_i2c_i2c_operation_t wops[EA_I2C_MAX_OPS];
    for (uint32_t i = 0; i < n_ops; i++) {
        if (ops[i].kind == EA_I2C_OP_READ) {
            wops[i].tag = WASI_I2C_I2C_OPERATION_READ;
            wops[i].val.read = ops[i].len;
        } else {
            wops[i].tag = WASI_I2C_I2C_OPERATION_WRITE;
            wops[i].val.write = (i2c_driver_list_u8_t){ops[i].buf, ops[i].len};
        }
    }
    wasi_i2c_i2c_list_operation_t list = {wops, n_ops};
    i2c_driver_list_list_u8_t got;
    wasi_i2c_i2c_error_code_t err;
    if (!wasi_i2c_i2c_method_i2c_transaction(bus_of(bus), (uint16_t)address, &list, &got, &err))
        return from_error(&err);
    size_t r = 0;
    for (uint32_t i = 0; i < n_ops; i++) {
        if (ops[i].kind != EA_I2C_OP_READ) continue;
        if (r < got.len) memcpy(ops[i].buf, got.ptr[r].ptr, got.ptr[r].len < ops[i].len ? got.ptr[r].len : ops[i].len);
        r++;
    }
    i2c_driver_list_list_u8_free(&got);
    return EA_OK;
}

void ea_delay_ns(ea_delay_t delay, uint32_t ns) {
    wasi_i2c_delay_method_delay_delay_ns(wasi_i2c_delay_borrow_delay((wasi_i2c_delay_own_delay_t){(int32_t)delay}),
                                         ns);
}

void ea_log(uint32_t level, const char *msg, uint32_t len) {
    i2c_driver_string_t s = {(uint8_t *)msg, len};
    edgeagent_driver_log_log(level > EA_LOG_ERROR ? EA_LOG_ERROR : (edgeagent_driver_log_level_t)level, &s);
}

/* ---- edgeagent:driver/i2c-driver on the driver's exports ---- */

bool exports_edgeagent_driver_i2c_driver_init(exports_edgeagent_driver_i2c_driver_own_i2c_t bus,
                                              exports_edgeagent_driver_i2c_driver_own_delay_t delay,
                                              exports_edgeagent_driver_i2c_driver_address_t address,
                                              exports_edgeagent_driver_i2c_driver_error_code_t *err) {
    /* The handles stay owned for the driver's lifetime (the driver keeps them in statics). */
    int32_t rc = init((uint32_t)bus.__handle, (uint32_t)delay.__handle, address);
    if (rc == EA_OK) return true;
    *err = to_error(rc);
    return false;
}

static void dup(i2c_driver_string_t *out, const char *s, size_t n) {
    out->ptr = malloc(n ? n : 1);
    if (!out->ptr) abort();
    memcpy(out->ptr, s, n);
    out->len = n;
}

void exports_edgeagent_driver_i2c_driver_describe(exports_edgeagent_driver_i2c_driver_list_channel_t *ret) {
    ret->ptr = NULL;
    ret->len = 0;
    if (!describe) return; /* an output device: no channels */
    int32_t n = describe();
    if (n <= 0 || n > EA_BUFFER_SIZE) return;
    const char *text = (const char *)ea_buffer();
    size_t count = 1;
    for (int32_t i = 0; i < n; i++) count += text[i] == ',';
    ret->ptr = calloc(count, sizeof *ret->ptr);
    if (!ret->ptr) abort();
    const char *p = text, *end = text + n;
    while (p < end) { /* "name:unit,name:unit" */
        const char *item_end = memchr(p, ',', (size_t)(end - p));
        if (!item_end) item_end = end;
        const char *colon = memchr(p, ':', (size_t)(item_end - p));
        const char *name_end = colon ? colon : item_end;
        exports_edgeagent_driver_i2c_driver_channel_t *c = &ret->ptr[ret->len++];
        dup(&c->name, p, (size_t)(name_end - p));
        dup(&c->unit, colon ? colon + 1 : item_end, colon ? (size_t)(item_end - colon - 1) : 0);
        p = item_end + 1;
    }
}

bool exports_edgeagent_driver_i2c_driver_read(i2c_driver_list_f64_t *ret,
                                              exports_edgeagent_driver_i2c_driver_error_code_t *err) {
    if (!read) {
        *err = to_error(EA_I2C_ERR_OTHER); /* an output device has no readings */
        return false;
    }
    int32_t n = read();
    if (n < 0) {
        *err = to_error(n);
        return false;
    }
    if ((size_t)n * sizeof(double) > EA_BUFFER_SIZE) n = EA_BUFFER_SIZE / sizeof(double);
    ret->ptr = malloc(n ? (size_t)n * sizeof(double) : 1);
    if (!ret->ptr) abort();
    memcpy(ret->ptr, ea_buffer(), (size_t)n * sizeof(double));
    ret->len = (size_t)n;
    return true;
}

bool exports_edgeagent_driver_i2c_driver_write(i2c_driver_string_t *text,
                                               exports_edgeagent_driver_i2c_driver_error_code_t *err) {
    int32_t rc = EA_I2C_ERR_OTHER; /* a sensor takes no output */
    if (write) {
        size_t n = text->len < EA_BUFFER_SIZE ? text->len : EA_BUFFER_SIZE;
        memcpy(ea_buffer(), text->ptr, n);
        rc = write((uint32_t)n);
    }
    i2c_driver_string_free(text);
    if (rc >= 0) return true;
    *err = to_error(rc);
    return false;
}
