//! The FTP control protocol, with no I/O at all: line framing, client commands, server
//! replies, the replies ftpgate writes itself, and the address codecs of
//! `PORT`/`EPRT`/`227`/`229`.

pub mod command;
pub mod hostport;
pub mod line;
pub mod replies;
pub mod reply;
