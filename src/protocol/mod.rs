//! How bytes move between a device and its hub (being written).
