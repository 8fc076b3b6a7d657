/* Sensirion SHT31 humidity and temperature sensor (datasheet "SHT3x-DIS", version 7):
 *   0xF32D  read status: 2 bytes + CRC
 *   0x2400  single shot, high repeatability, no clock stretching: wait >= 15.5 ms, then read
 *           T msb, T lsb, CRC, RH msb, RH lsb, CRC
 *   T = -45 + 175 * raw / 65535 (degC), RH = 100 * raw / 65535 (%RH); CRC-8 poly 0x31, init 0xFF.
 * A CRC mismatch is the data's fault, not the bus's: ea_fail() says so, and the next reading is tried as usual.
 * Build with -DSHT31_FORGET_THE_WAIT to see what a simulated part with a conversion time does to a driver
 * that skips the datasheet's wait. */
#include "edgeagent_i2c.h"

EA_DRIVER_BUFFER()

static ea_i2c_t bus;
static ea_delay_t delay;
static uint32_t addr;

static uint8_t crc8(const uint8_t *data, int n) {
    uint8_t crc = 0xFF;
    for (int i = 0; i < n; i++) {
        crc ^= data[i];
        for (int b = 0; b < 8; b++) crc = (crc & 0x80) ? (uint8_t)((crc << 1) ^ 0x31) : (uint8_t)(crc << 1);
    }
    return crc;
}

EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t dly, uint32_t address) {
    bus = i2c;
    delay = dly;
    addr = address;
    static const uint8_t status_cmd[2] = {0xF3, 0x2D};
    uint8_t status[3];
    int32_t rc = ea_i2c_write_read(bus, addr, status_cmd, 2, status, 3);
    if (rc != EA_OK) return rc;
    if (crc8(status, 2) != status[2]) return ea_fail("status register CRC mismatch (not an SHT3x?)");
    return EA_OK;
}

EA_EXPORT("describe") int32_t describe(void) {
    static const char d[] = "temperature:C,humidity:%RH";
    __builtin_memcpy(ea_buffer(), d, sizeof d - 1);
    return sizeof d - 1;
}

EA_EXPORT("read") int32_t read(void) {
    static const uint8_t measure[2] = {0x24, 0x00};
    uint8_t raw[6];
    int32_t rc = ea_i2c_write(bus, addr, measure, 2);
    if (rc != EA_OK) return rc;
#ifndef SHT31_FORGET_THE_WAIT
    ea_delay_ms(delay, 16); /* tMEAS,h: 15.5 ms */
#endif
    rc = ea_i2c_read(bus, addr, raw, 6);
    if (rc != EA_OK) return rc;
    if (crc8(raw, 2) != raw[2] || crc8(raw + 3, 2) != raw[5]) return ea_fail("measurement CRC mismatch");
    double *out = (double *)ea_buffer();
    out[0] = -45.0 + 175.0 * (double)((raw[0] << 8) | raw[1]) / 65535.0;
    out[1] = 100.0 * (double)((raw[3] << 8) | raw[4]) / 65535.0;
    return 2;
}
