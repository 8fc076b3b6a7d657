/* TMP102 digital temperature sensor (TI SBOS397): 12-bit temperature, 0.0625 degC per LSB.
 * Registers: 0x00 temperature (read-only, 16-bit big-endian, 12 bits left-aligned), 0x01 configuration.
 * Continuous conversion (the power-on mode, 4 Hz); after power-on the temperature register reads 0 degC until
 * the first conversion is complete, so init waits one conversion time (35 ms max) before the first read. */
#include "edgeagent_i2c.h"

EA_DRIVER_BUFFER()

#define TMP102_REG_TEMP 0x00
#define TMP102_REG_CONFIG 0x01

static ea_i2c_t bus;
static uint32_t addr;

EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay, uint32_t address) {
    bus = i2c;
    addr = address;
    uint8_t cfg[2];
    /* Probe: the configuration register reads 0x60A0 after power-on (continuous conversion, 4 Hz). */
    int32_t rc = ea_i2c_read_regs(bus, addr, TMP102_REG_CONFIG, cfg, 2);
    if (rc != EA_OK) return rc;
    if ((cfg[0] & 0x60) != 0x60) {
        static const char msg[] = "tmp102: unexpected configuration register (not a TMP102?)";
        ea_log(EA_LOG_WARN, msg, sizeof msg - 1);
    }
    ea_delay_ms(delay, 35); /* the part may have just powered on: let its first conversion finish */
    return EA_OK;
}

EA_EXPORT("describe") int32_t describe(void) {
    static const char d[] = "temperature:C";
    __builtin_memcpy(ea_buffer(), d, sizeof d - 1);
    return sizeof d - 1;
}

EA_EXPORT("read") int32_t read(void) {
    uint8_t raw[2];
    int32_t rc = ea_i2c_read_regs(bus, addr, TMP102_REG_TEMP, raw, 2);
    if (rc != EA_OK) return rc;
    int16_t t = (int16_t)((raw[0] << 8) | raw[1]) >> 4; /* 12-bit two's complement */
    double *out = (double *)ea_buffer();
    out[0] = t * 0.0625;
    return 1;
}
