//! BME280 (Bosch BST-BME280-DS002) as an `edgeagent:driver/i2c-driver` component. The chip code only knows
//! embedded-hal's `I2c` and `DelayNs`; `hal` implements them on the host's `wasi:i2c` resources, so the same
//! code runs on a microcontroller HAL.

wit_bindgen::generate!({
    path: "../../wit",
    world: "edgeagent:components/i2c-driver",
    generate_all,
});

use std::cell::RefCell;

use edgeagent::driver::log::{log, Level};
use exports::edgeagent::driver::i2c_driver::{Channel, Guest};
use wasi::i2c::delay::Delay;
use wasi::i2c::i2c::{ErrorCode, I2c};

mod hal {
    //! embedded-hal 1.0 on wasi:i2c: what the proposal's authors call the wasi-embedded-hal binding.
    use super::{Delay, ErrorCode, I2c};
    use embedded_hal::i2c::{self, ErrorKind, NoAcknowledgeSource, Operation, SevenBitAddress};

    pub struct Bus(pub I2c);
    pub struct Wait(pub Delay);

    #[derive(Debug)]
    pub struct Error(pub ErrorCode);

    impl i2c::Error for Error {
        fn kind(&self) -> ErrorKind {
            use crate::wasi::i2c::i2c::NoAcknowledgeSource as S;
            match self.0 {
                ErrorCode::Bus => ErrorKind::Bus,
                ErrorCode::ArbitrationLoss => ErrorKind::ArbitrationLoss,
                ErrorCode::NoAcknowledge(S::Address) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
                ErrorCode::NoAcknowledge(S::Data) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data),
                ErrorCode::NoAcknowledge(S::Unknown) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown),
                ErrorCode::Overrun => ErrorKind::Overrun,
                ErrorCode::Other => ErrorKind::Other,
            }
        }
    }

    impl i2c::ErrorType for Bus {
        type Error = Error;
    }

    impl i2c::I2c<SevenBitAddress> for Bus {
        fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), Error> {
            use crate::wasi::i2c::i2c::Operation as Op;
            let ops: Vec<Op> = operations
                .iter()
                .map(|op| match op {
                    Operation::Read(buf) => Op::Read(buf.len() as u64),
                    Operation::Write(buf) => Op::Write(buf.to_vec()),
                })
                .collect();
            let mut results = self.0.transaction(address.into(), &ops).map_err(Error)?.into_iter();
            for op in operations.iter_mut() {
                if let Operation::Read(buf) = op {
                    let data = results.next().ok_or(Error(ErrorCode::Other))?;
                    buf.copy_from_slice(data.get(..buf.len()).ok_or(Error(ErrorCode::Other))?);
                }
            }
            Ok(())
        }

        fn write_read(&mut self, address: u8, write: &[u8], read: &mut [u8]) -> Result<(), Error> {
            let data = self.0.write_read(address.into(), write, read.len() as u64).map_err(Error)?;
            read.copy_from_slice(data.get(..read.len()).ok_or(Error(ErrorCode::Other))?);
            Ok(())
        }

        fn write(&mut self, address: u8, write: &[u8]) -> Result<(), Error> {
            self.0.write(address.into(), write).map_err(Error)
        }
    }

    impl embedded_hal::delay::DelayNs for Wait {
        fn delay_ns(&mut self, ns: u32) {
            self.0.delay_ns(ns);
        }
    }
}

mod bme280 {
    //! The chip: forced mode, x1 oversampling, the datasheet's integer compensation (section 4.2.3).
    use embedded_hal::delay::DelayNs;
    use embedded_hal::i2c::I2c;

    const CHIP_ID: u8 = 0xD0;
    const RESET: u8 = 0xE0;
    const CALIB_00: u8 = 0x88;
    const CALIB_26: u8 = 0xE1;
    const CTRL_HUM: u8 = 0xF2;
    const STATUS: u8 = 0xF3;
    const CTRL_MEAS: u8 = 0xF4;
    const PRESS_MSB: u8 = 0xF7;
    const MEASURING: u8 = 0x08;
    const IM_UPDATE: u8 = 0x01;

    pub enum Error<E> {
        Bus(E),
        NotBme280(u8),
        Timeout,
    }

    impl<E> From<E> for Error<E> {
        fn from(e: E) -> Self {
            Error::Bus(e)
        }
    }

    #[derive(Default)]
    struct Calib {
        t1: u16, t2: i16, t3: i16,
        p1: u16, p2: i16, p3: i16, p4: i16, p5: i16, p6: i16, p7: i16, p8: i16, p9: i16,
        h1: u8, h2: i16, h3: u8, h4: i16, h5: i16, h6: i8,
    }

    pub struct Bme280<I, D> {
        i2c: I,
        delay: D,
        address: u8,
        c: Calib,
    }

    fn u16_le(b: &[u8]) -> u16 {
        u16::from_le_bytes([b[0], b[1]])
    }

    impl<I: I2c, D: DelayNs> Bme280<I, D> {
        pub fn new(mut i2c: I, mut delay: D, address: u8) -> Result<Self, Error<I::Error>> {
            let mut id = [0u8];
            i2c.write_read(address, &[CHIP_ID], &mut id)?;
            if id[0] != 0x60 {
                return Err(Error::NotBme280(id[0]));
            }
            i2c.write(address, &[RESET, 0xB6])?;
            delay.delay_ms(2);
            let mut status = [IM_UPDATE];
            let mut tries = 0;
            while status[0] & IM_UPDATE != 0 {
                if tries == 10 {
                    return Err(Error::Timeout);
                }
                i2c.write_read(address, &[STATUS], &mut status)?;
                if status[0] & IM_UPDATE != 0 {
                    delay.delay_ms(1);
                }
                tries += 1;
            }
            let (mut c, mut h) = ([0u8; 26], [0u8; 7]);
            i2c.write_read(address, &[CALIB_00], &mut c)?;
            i2c.write_read(address, &[CALIB_26], &mut h)?;
            let calib = Calib {
                t1: u16_le(&c[0..]), t2: u16_le(&c[2..]) as i16, t3: u16_le(&c[4..]) as i16,
                p1: u16_le(&c[6..]), p2: u16_le(&c[8..]) as i16, p3: u16_le(&c[10..]) as i16,
                p4: u16_le(&c[12..]) as i16, p5: u16_le(&c[14..]) as i16, p6: u16_le(&c[16..]) as i16,
                p7: u16_le(&c[18..]) as i16, p8: u16_le(&c[20..]) as i16, p9: u16_le(&c[22..]) as i16,
                h1: c[25],
                h2: u16_le(&h[0..]) as i16,
                h3: h[2],
                h4: (((h[3] as i8 as i16) * 16) | (h[4] & 0x0F) as i16),
                h5: (((h[5] as i8 as i16) * 16) | (h[4] >> 4) as i16),
                h6: h[6] as i8,
            };
            // ctrl_hum takes effect only after a write to ctrl_meas.
            i2c.write(address, &[CTRL_HUM, 1])?;
            Ok(Bme280 { i2c, delay, address, c: calib })
        }

        /// (temperature degC, pressure hPa, humidity %RH)
        pub fn measure(&mut self) -> Result<[f64; 3], Error<I::Error>> {
            let a = self.address;
            self.i2c.write(a, &[CTRL_MEAS, (1 << 5) | (1 << 2) | 1])?;
            // x1/x1/x1: t_measure,max = 9.3 ms (datasheet 9.1); then the measuring bit says whether it is done.
            self.delay.delay_us(9300);
            let mut status = [MEASURING];
            let mut tries = 0;
            loop {
                self.i2c.write_read(a, &[STATUS], &mut status)?;
                if status[0] & MEASURING == 0 {
                    break;
                }
                if tries == 50 {
                    return Err(Error::Timeout);
                }
                self.delay.delay_ms(1);
                tries += 1;
            }
            let mut d = [0u8; 8];
            self.i2c.write_read(a, &[PRESS_MSB], &mut d)?;
            let adc_p = ((d[0] as i32) << 12) | ((d[1] as i32) << 4) | ((d[2] as i32) >> 4);
            let adc_t = ((d[3] as i32) << 12) | ((d[4] as i32) << 4) | ((d[5] as i32) >> 4);
            let adc_h = ((d[6] as i32) << 8) | d[7] as i32;
            let (t, t_fine) = self.temperature(adc_t);
            Ok([
                t as f64 / 100.0,
                self.pressure(adc_p, t_fine) as f64 / 256.0 / 100.0,
                self.humidity(adc_h, t_fine) as f64 / 1024.0,
            ])
        }

        fn temperature(&self, adc_t: i32) -> (i32, i32) {
            let c = &self.c;
            let var1 = (((adc_t >> 3) - ((c.t1 as i32) << 1)) * (c.t2 as i32)) >> 11;
            let var2 = (((((adc_t >> 4) - (c.t1 as i32)) * ((adc_t >> 4) - (c.t1 as i32))) >> 12) * (c.t3 as i32)) >> 14;
            let t_fine = var1 + var2;
            ((t_fine * 5 + 128) >> 8, t_fine)
        }

        fn pressure(&self, adc_p: i32, t_fine: i32) -> u32 {
            let c = &self.c;
            let mut var1 = (t_fine as i64) - 128000;
            let mut var2 = var1 * var1 * (c.p6 as i64);
            var2 += (var1 * (c.p5 as i64)) << 17;
            var2 += (c.p4 as i64) << 35;
            var1 = ((var1 * var1 * (c.p3 as i64)) >> 8) + ((var1 * (c.p2 as i64)) << 12);
            var1 = (((1i64 << 47) + var1) * (c.p1 as i64)) >> 33;
            if var1 == 0 {
                return 0;
            }
            let mut p: i64 = 1048576 - adc_p as i64;
            p = (((p << 31) - var2) * 3125) / var1;
            var1 = ((c.p9 as i64) * (p >> 13) * (p >> 13)) >> 25;
            var2 = ((c.p8 as i64) * p) >> 19;
            p = ((p + var1 + var2) >> 8) + ((c.p7 as i64) << 4);
            p as u32
        }

        fn humidity(&self, adc_h: i32, t_fine: i32) -> u32 {
            let c = &self.c;
            let mut v = t_fine - 76800;
            v = ((((adc_h << 14) - ((c.h4 as i32) << 20) - ((c.h5 as i32) * v)) + 16384) >> 15)
                * (((((((v * (c.h6 as i32)) >> 10) * (((v * (c.h3 as i32)) >> 11) + 32768)) >> 10) + 2097152)
                    * (c.h2 as i32)
                    + 8192)
                    >> 14);
            v -= ((((v >> 15) * (v >> 15)) >> 7) * (c.h1 as i32)) >> 4;
            v = v.clamp(0, 419430400);
            (v >> 12) as u32
        }
    }
}

thread_local! {
    static SENSOR: RefCell<Option<bme280::Bme280<hal::Bus, hal::Wait>>> = const { RefCell::new(None) };
}

fn code<E>(e: bme280::Error<E>, to_code: impl Fn(E) -> ErrorCode) -> ErrorCode {
    match e {
        bme280::Error::Bus(e) => to_code(e),
        bme280::Error::NotBme280(id) => {
            log(Level::Error, &format!("bme280: chip id is {id:#04x}, not 0x60 (a BMP280?)"));
            ErrorCode::Other
        }
        bme280::Error::Timeout => ErrorCode::Other,
    }
}

struct Driver;

impl Guest for Driver {
    fn init(bus: I2c, delay: Delay, address: u16) -> Result<(), ErrorCode> {
        let address = u8::try_from(address).map_err(|_| ErrorCode::Other)?;
        let sensor = bme280::Bme280::new(hal::Bus(bus), hal::Wait(delay), address).map_err(|e| code(e, |e| e.0))?;
        SENSOR.with(|s| *s.borrow_mut() = Some(sensor));
        Ok(())
    }

    fn describe() -> Vec<Channel> {
        [("temperature", "C"), ("pressure", "hPa"), ("humidity", "%RH")]
            .iter()
            .map(|(n, u)| Channel { name: n.to_string(), unit: u.to_string() })
            .collect()
    }

    fn read() -> Result<Vec<f64>, ErrorCode> {
        SENSOR.with(|s| match s.borrow_mut().as_mut() {
            Some(sensor) => sensor.measure().map(|v| v.to_vec()).map_err(|e| code(e, |e| e.0)),
            None => Err(ErrorCode::Other),
        })
    }

    fn write(_text: String) -> Result<(), ErrorCode> {
        Err(ErrorCode::Other) // a sensor takes no output
    }
}

export!(Driver);
