//! The device side: the `DeviceClient` an application on the device uses, the [`Twin`
//! model](twin), and the [`Dialect`] trait each backend implements.

mod client;
pub mod dialect;
pub mod native;
pub mod twin;

pub use client::{
    ConnectionState, DeviceClient, DeviceClientBuilder, Receipt, Telemetry, TwinClient, tls_config,
};
pub use dialect::{
    Capabilities, Command, DeviceLimits, Dialect, Endpoint, Feature, Inbound, IssuedCertificate,
    MethodRequest, MethodResponse, Outbound, Password, valid_property_name,
};
pub use native::NativeDialect;
