//! Transports: the only code that touches sockets and pipes. They move bytes
//! between the network and `server::Session`, framing messages as NDJSON.

pub mod admin;
pub mod conn;
pub mod http;
pub mod stdio;
pub mod tcp;
