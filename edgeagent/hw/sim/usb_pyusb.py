"""pyusb's backend interface over the in-process simulated bus.

Passing ``backend=SimPyusbBackend(bus)`` to ``usb.core.find`` lets unmodified pyusb code (the native driver
twins, `PyUsbBackend`) drive the simulated devices without libusb or a kernel: the in-process benchmark runs
native and Wasm drivers through the same pyusb layers, so their difference is the Wasm crossing alone.
Errors are raised as pyusb's libusb1 backend raises them (libusb code + errno).
"""

from __future__ import annotations

import array
import errno
import types
from typing import Any

import usb.backend
import usb.core

from edgeagent.hw import usb as hw
from edgeagent.hw.sim.usb_bus import SimUsbBus, SimUsbDevice

_ERRNO = {
    hw.UsbErrorCode.IO: errno.EIO,
    hw.UsbErrorCode.INVALID_PARAM: errno.EINVAL,
    hw.UsbErrorCode.ACCESS: errno.EACCES,
    hw.UsbErrorCode.NO_DEVICE: errno.ENODEV,
    hw.UsbErrorCode.NOT_FOUND: errno.ENOENT,
    hw.UsbErrorCode.BUSY: errno.EBUSY,
    hw.UsbErrorCode.TIMEOUT: errno.ETIMEDOUT,
    hw.UsbErrorCode.OVERFLOW: errno.EOVERFLOW,
    hw.UsbErrorCode.PIPE: errno.EPIPE,
    hw.UsbErrorCode.INTERRUPTED: errno.EINTR,
    hw.UsbErrorCode.NO_MEM: errno.ENOMEM,
    hw.UsbErrorCode.NOT_SUPPORTED: errno.ENOSYS,
}


def _raise(e: hw.UsbError) -> None:
    cls = usb.core.USBTimeoutError if e.code == hw.UsbErrorCode.TIMEOUT else usb.core.USBError
    raise cls(e.detail, int(e.code), _ERRNO.get(e.code)) from None


def _ns(**fields: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(extra_descriptors=[], **fields)


class SimPyusbBackend(usb.backend.IBackend):
    """An `usb.backend.IBackend` whose devices are the `SimUsbBus`'s."""

    def __init__(self, bus: SimUsbBus) -> None:
        self.bus = bus

    def enumerate_devices(self) -> Any:
        yield from self.bus.devices()

    def get_device_descriptor(self, dev: hw.UsbDeviceInfo) -> Any:
        d = dev.descriptor
        return _ns(
            bLength=18,
            bDescriptorType=hw.DT_DEVICE,
            bcdUSB=d.bcdUSB,
            bDeviceClass=d.bDeviceClass,
            bDeviceSubClass=d.bDeviceSubClass,
            bDeviceProtocol=d.bDeviceProtocol,
            bMaxPacketSize0=d.bMaxPacketSize0,
            idVendor=d.idVendor,
            idProduct=d.idProduct,
            bcdDevice=d.bcdDevice,
            iManufacturer=d.iManufacturer,
            iProduct=d.iProduct,
            iSerialNumber=d.iSerialNumber,
            bNumConfigurations=len(dev.configurations),
            bus=dev.bus,
            address=dev.address,
            port_number=dev.port_numbers[-1] if dev.port_numbers else None,
            port_numbers=dev.port_numbers,
            speed=dev.speed,
        )

    def get_configuration_descriptor(self, dev: hw.UsbDeviceInfo, config: int) -> Any:
        c = dev.configurations[config]
        return _ns(
            bLength=9,
            bDescriptorType=hw.DT_CONFIG,
            wTotalLength=len(c.pack()),
            bNumInterfaces=c.bNumInterfaces,
            bConfigurationValue=c.bConfigurationValue,
            iConfiguration=c.iConfiguration,
            bmAttributes=c.bmAttributes,
            bMaxPower=c.bMaxPower,
        )

    def _interface(self, dev: hw.UsbDeviceInfo, intf: int, alt: int, config: int) -> hw.InterfaceDescriptor:
        numbers = sorted({i.bInterfaceNumber for i in dev.configurations[config].interfaces})
        found = dev.configurations[config].interface(numbers[intf], alt)
        if found is None:
            raise IndexError(f"no alternate setting {alt}")
        return found

    def get_interface_descriptor(self, dev: hw.UsbDeviceInfo, intf: int, alt: int, config: int) -> Any:
        i = self._interface(dev, intf, alt, config)
        return _ns(
            bLength=9,
            bDescriptorType=hw.DT_INTERFACE,
            bInterfaceNumber=i.bInterfaceNumber,
            bAlternateSetting=i.bAlternateSetting,
            bNumEndpoints=len(i.endpoints),
            bInterfaceClass=i.bInterfaceClass,
            bInterfaceSubClass=i.bInterfaceSubClass,
            bInterfaceProtocol=i.bInterfaceProtocol,
            iInterface=i.iInterface,
        )

    def get_endpoint_descriptor(
        self, dev: hw.UsbDeviceInfo, ep: int, intf: int, alt: int, config: int
    ) -> Any:
        e = self._interface(dev, intf, alt, config).endpoints[ep]
        return _ns(
            bLength=7,
            bDescriptorType=hw.DT_ENDPOINT,
            bEndpointAddress=e.bEndpointAddress,
            bmAttributes=e.bmAttributes,
            wMaxPacketSize=e.wMaxPacketSize,
            bInterval=e.bInterval,
            bRefresh=0,
            bSynchAddress=0,
        )

    def open_device(self, dev: hw.UsbDeviceInfo) -> SimUsbDevice:
        try:
            return self.bus.open(dev)
        except hw.UsbError as e:
            _raise(e)
            raise

    def close_device(self, dev_handle: SimUsbDevice) -> None:
        dev_handle.close()

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except hw.UsbError as e:
            _raise(e)

    def set_configuration(self, dev_handle: SimUsbDevice, config_value: int) -> None:
        self._call(dev_handle.set_configuration, config_value)

    def get_configuration(self, dev_handle: SimUsbDevice) -> int:
        return int(self._call(dev_handle.get_configuration))

    def set_interface_altsetting(self, dev_handle: SimUsbDevice, intf: int, altsetting: int) -> None:
        self._call(dev_handle.set_interface_alt_setting, intf, altsetting)

    def claim_interface(self, dev_handle: SimUsbDevice, intf: int) -> None:
        self._call(dev_handle.claim_interface, intf)

    def release_interface(self, dev_handle: SimUsbDevice, intf: int) -> None:
        self._call(dev_handle.release_interface, intf)

    def _read(self, fn: Any, ep: int, buff: array.array, timeout: int) -> int:
        data = self._call(fn, ep, len(buff), timeout)
        buff[: len(data)] = array.array("B", data)
        return len(data)

    def bulk_write(
        self, dev_handle: SimUsbDevice, ep: int, intf: int, data: array.array, timeout: int
    ) -> int:
        return int(self._call(dev_handle.bulk_out, ep, data.tobytes(), timeout))

    def bulk_read(self, dev_handle: SimUsbDevice, ep: int, intf: int, buff: array.array, timeout: int) -> int:
        return self._read(dev_handle.bulk_in, ep, buff, timeout)

    def intr_write(
        self, dev_handle: SimUsbDevice, ep: int, intf: int, data: array.array, timeout: int
    ) -> int:
        return int(self._call(dev_handle.interrupt_out, ep, data.tobytes(), timeout))

    def intr_read(self, dev_handle: SimUsbDevice, ep: int, intf: int, buff: array.array, timeout: int) -> int:
        return self._read(dev_handle.interrupt_in, ep, buff, timeout)

    def ctrl_transfer(
        self,
        dev_handle: SimUsbDevice,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array,
        timeout: int,
    ) -> int:
        if bmRequestType & 0x80:
            return self._read(
                lambda _e, n, t: dev_handle.control_in(bmRequestType, bRequest, wValue, wIndex, n, t),
                0,
                data,
                timeout,
            )
        return int(
            self._call(
                dev_handle.control_out, bmRequestType, bRequest, wValue, wIndex, data.tobytes(), timeout
            )
        )

    def clear_halt(self, dev_handle: SimUsbDevice, ep: int) -> None:
        self._call(dev_handle.clear_halt, ep)

    def reset_device(self, dev_handle: SimUsbDevice) -> None:
        self._call(dev_handle.reset)

    def is_kernel_driver_active(self, dev_handle: SimUsbDevice, intf: int) -> bool:
        return bool(self._call(dev_handle.kernel_driver_active, intf))

    def detach_kernel_driver(self, dev_handle: SimUsbDevice, intf: int) -> None:
        self._call(dev_handle.detach_kernel_driver, intf)
