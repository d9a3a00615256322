//! The AWS IoT Jobs service (MQTT API), hub side.
