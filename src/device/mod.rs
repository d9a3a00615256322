//! The device side: the `DeviceClient` an application on the device uses, the `Twin` model
//! and the `Dialect` trait each backend implements.

pub mod twin;
