//! SIP message model: URIs, addresses, Via, CSeq, headers, requests and responses.

mod addr;
mod headers;
mod method;
mod msg;
mod uri;
mod via;

pub use crate::scan::SyntaxError;
pub use addr::{Contact, NameAddr};
pub use headers::{HeaderError, Headers, canonical_name};
pub use method::{CSeq, Method};
pub use msg::{Message, Request, Response};
pub use uri::{Host, Scheme, Uri};
pub use via::Via;

pub(crate) use headers::is_split_list;
