//! The FTP control protocol, with no I/O at all: line framing, client commands, server
//! replies, and the address codecs of `PORT`/`EPRT`/`227`/`229`.

pub mod command;
pub mod hostport;
pub mod line;
pub mod reply;
