//! Data connections: the port pool, one-shot listeners that admit only their expected
//! peer, dialling the other end, and relaying bytes with half-close and byte counts.

pub mod channel;
pub mod kernel;
pub mod ports;
#[cfg(target_os = "linux")]
pub mod splice;
