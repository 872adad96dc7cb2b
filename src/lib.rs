//! ftpgate: an FTP application-layer gateway for NAT edge routers.
//!
//! It terminates the FTP control connection, rewrites the addresses that `PORT`/`EPRT`
//! and `227`/`229` carry, and opens and relays the data connections they negotiate, so
//! that active and passive FTP survive NAT and a default-deny firewall.
//!
//! The map, from the protocol core (no I/O) to the shell:
//! - [`ftp`]: the control protocol: line framing, commands, replies (read and written)
//!   and the address codecs;
//! - [`session`]: the per-session state machine (events and the time in, actions out)
//!   where the protocol and security rules live, in parts (`session/`);
//! - [`plan`]: the words the core and the shell share: data plans, channel events and
//!   reports;
//! - [`gateway`]: the async shell: listeners, admission, upstreams, one connection driver
//!   per session, shutdown;
//! - [`data`]: data channels: the port pool, one-shot listeners, dialling and relaying,
//!   or the kernel data path;
//! - [`firewall`]: the nftables rules a configuration needs (`ftpgate nft`);
//! - [`rules`]: the security rules, named for logs and metrics;
//! - [`admin`]: the live view of sessions (`ftpgate sessions`);
//! - [`config`]: the YAML schema and its validation;
//! - [`sys`]: what Linux provides: socket options, policy routing, netfilter netlink;
//! - [`telemetry`]: metric names and log setup;
//! - [`fuzzing`]: fuzz harnesses shared by `fuzz/` and the tests.

pub mod admin;
pub mod config;
pub mod data;
pub mod firewall;
pub mod ftp;
pub mod fuzzing;
pub mod gateway;
pub mod plan;
pub mod rules;
pub mod session;
pub mod sys;
pub mod telemetry;
pub mod tls;
