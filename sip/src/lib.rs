//! Sans-IO SIP message layer for Trunkline: parsing and serialization (RFC 3261,
//! checked against the RFC 4475 torture tests) and server-side digest authentication.
//!
//! No I/O, no async, no `unsafe`; every parser returns an error instead of panicking,
//! because all input comes from the network.

#![forbid(unsafe_code)]

pub mod digest;
pub mod message;
pub mod parse;
mod scan;

pub use message::{
    CSeq, Contact, HeaderError, Headers, Host, Message, Method, NameAddr, Request, Response, Scheme, SyntaxError, Uri, Via,
};
pub use parse::{Frame, Framer, ParseError, Partial, error_response, frame_len, parse};
