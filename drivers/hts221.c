/* HTS221 capacitive humidity and temperature sensor (ST DocID026921), the Raspberry Pi Sense HAT's sensor.
 * One-shot conversions; outputs are linearly interpolated between two factory calibration points. */
#include "edgeagent_i2c.h"

EA_DRIVER_BUFFER()

#define HTS221_WHO_AM_I 0x0F
#define HTS221_WHO_AM_I_VALUE 0xBC
#define HTS221_CTRL_REG1 0x20
#define HTS221_CTRL_REG2 0x21
#define HTS221_STATUS_REG 0x27
#define HTS221_HUMIDITY_OUT_L 0x28
#define HTS221_CALIB_0 0x30
#define HTS221_AUTO_INCREMENT 0x80 /* sub-address MSB: increment the register address on multi-byte access */

#define CTRL_REG1_PD 0x80      /* power on */
#define CTRL_REG1_BDU 0x04     /* block data update: MSB and LSB from the same conversion */
#define CTRL_REG2_ONE_SHOT 0x01
#define STATUS_H_DA 0x02
#define STATUS_T_DA 0x01

static ea_i2c_t bus;
static ea_delay_t delay;
static uint32_t addr;

/* Calibration: two points for each quantity. */
static double h0_rh, h1_rh, t0_degc, t1_degc;
static int16_t h0_t0_out, h1_t0_out, t0_out, t1_out;

static int16_t s16_le(const uint8_t *p) { return (int16_t)(p[0] | (p[1] << 8)); }

EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay_handle, uint32_t address) {
    bus = i2c;
    delay = delay_handle;
    addr = address;
    uint8_t who = 0;
    int32_t rc = ea_i2c_read_regs(bus, addr, HTS221_WHO_AM_I, &who, 1);
    if (rc != EA_OK) return rc;
    if (who != HTS221_WHO_AM_I_VALUE) {
        static const char msg[] = "hts221: WHO_AM_I is not 0xBC";
        ea_log(EA_LOG_ERROR, msg, sizeof msg - 1);
        return EA_I2C_ERR_OTHER;
    }
    uint8_t c[16];
    rc = ea_i2c_read_regs(bus, addr, HTS221_CALIB_0 | HTS221_AUTO_INCREMENT, c, sizeof c);
    if (rc != EA_OK) return rc;
    h0_rh = c[0] / 2.0;
    h1_rh = c[1] / 2.0;
    t0_degc = (c[2] | ((c[5] & 0x03) << 8)) / 8.0;
    t1_degc = (c[3] | ((c[5] & 0x0C) << 6)) / 8.0;
    h0_t0_out = s16_le(&c[6]);
    h1_t0_out = s16_le(&c[10]);
    t0_out = s16_le(&c[12]);
    t1_out = s16_le(&c[14]);
    if (h1_t0_out == h0_t0_out || t1_out == t0_out) return EA_I2C_ERR_OTHER; /* blank calibration */
    /* Power on, block data update, one-shot mode (ODR = 00). */
    return ea_i2c_write_reg(bus, addr, HTS221_CTRL_REG1, CTRL_REG1_PD | CTRL_REG1_BDU);
}

EA_EXPORT("describe") int32_t describe(void) {
    static const char d[] = "temperature:C,humidity:%RH";
    __builtin_memcpy(ea_buffer(), d, sizeof d - 1);
    return sizeof d - 1;
}

EA_EXPORT("read") int32_t read(void) {
    int32_t rc = ea_i2c_write_reg(bus, addr, HTS221_CTRL_REG2, CTRL_REG2_ONE_SHOT);
    if (rc != EA_OK) return rc;
    uint8_t status = 0;
    for (int tries = 0;; tries++) { /* a conversion takes a few ms at most */
        rc = ea_i2c_read_regs(bus, addr, HTS221_STATUS_REG, &status, 1);
        if (rc != EA_OK) return rc;
        if ((status & (STATUS_H_DA | STATUS_T_DA)) == (STATUS_H_DA | STATUS_T_DA)) break;
        if (tries == 100) return EA_I2C_ERR_OTHER;
        ea_delay_ns(delay, 1000000);
    }
    uint8_t out[4];
    rc = ea_i2c_read_regs(bus, addr, HTS221_HUMIDITY_OUT_L | HTS221_AUTO_INCREMENT, out, sizeof out);
    if (rc != EA_OK) return rc;
    int16_t h_out = s16_le(&out[0]), t_out = s16_le(&out[2]);
    double t = t0_degc + (t_out - t0_out) * (t1_degc - t0_degc) / (t1_out - t0_out);
    double h = h0_rh + (h_out - h0_t0_out) * (h1_rh - h0_rh) / (h1_t0_out - h0_t0_out);
    if (h < 0) h = 0;
    if (h > 100) h = 100;
    double *v = (double *)ea_buffer();
    v[0] = t;
    v[1] = h;
    return 2;
}
