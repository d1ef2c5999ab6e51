//! `sync_guest`: the sync guest ABI (versions 1 and 2) for Rust, `no_std` with `alloc`, no dependencies.
//!
//! A guest is a `cdylib` for `wasm32-unknown-unknown` exporting `run`. Build it with
//! `syncctl guest build CRATE_DIR` (rustc, opt-level z, LTO, panic=abort); the crate is linked for you
//! as `sync_guest`. Reference: docs/guest-abi.md.
//!
//! ```ignore
//! use sync_guest as sg;
//!
//! #[no_mangle]
//! pub extern "C" fn run() {
//!     let url = sg::context_string("url").unwrap_or_else(|| sg::fail("context.json has no url"));
//!     let response = sg::Request::get(&url).header("Accept", "text/csv").send().unwrap_or_else(|e| sg::fail(e.message()));
//!     if response.status != 200 { sg::fail("unexpected status"); }
//!     sg::write_payload(&response.body).unwrap();
//! }
//! ```
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The raw imports of module `host`.
pub mod raw {
    #[link(wasm_import_module = "host")]
    extern "C" {
        pub fn payload_size() -> i32;
        pub fn payload_read(offset: i32, len: i32, out: *mut u8) -> i32;
        pub fn payload_write(offset: i32, len: i32, data: *const u8) -> i32;
        pub fn http_request(url: *const u8, url_len: i32, method: *const u8, method_len: i32) -> i32;
        pub fn last_response_size() -> i32;
        pub fn last_response_read(out: *mut u8, max_len: i32) -> i32;
        pub fn context_size() -> i32;
        pub fn context_read(offset: i32, len: i32, out: *mut u8) -> i32;
        pub fn http_send(
            url: *const u8,
            url_len: i32,
            method: *const u8,
            method_len: i32,
            headers: *const u8,
            headers_len: i32,
            body: *const u8,
            body_len: i32,
        ) -> i32;
        pub fn last_response_read_at(offset: i32, len: i32, out: *mut u8) -> i32;
        pub fn last_response_header(name: *const u8, name_len: i32, out: *mut u8, max_len: i32) -> i32;
        pub fn last_response_headers_size() -> i32;
        pub fn last_response_headers_read(offset: i32, len: i32, out: *mut u8) -> i32;
        pub fn unchanged() -> i32;
        pub fn log(text: *const u8, len: i32) -> i32;
        pub fn time_unix() -> i64;
    }
}

/// A negative ABI code as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// -1: a bad pointer or length, or a URL/method that is not UTF-8.
    Memory,
    /// -2: the destination is refused (allow-list, private address, redirect).
    Refused,
    /// -3: request headers break the rules (forbidden header, secret not granted or not bound to the
    /// host by the operator, too many).
    BadRequest,
    /// -4: the response body is over the cap or broken.
    TooLarge,
    /// -5: the request failed (DNS, connect, timeout, request budget).
    Failed,
}

impl Error {
    fn check(code: i32) -> Result<i32, Error> {
        match code {
            c if c >= 0 => Ok(c),
            -1 => Err(Error::Memory),
            -2 => Err(Error::Refused),
            -3 => Err(Error::BadRequest),
            -4 => Err(Error::TooLarge),
            _ => Err(Error::Failed),
        }
    }

    /// A short description.
    pub fn message(&self) -> &'static str {
        match self {
            Error::Memory => "bad memory or non-UTF-8 string",
            Error::Refused => "destination refused",
            Error::BadRequest => "request headers refused",
            Error::TooLarge => "response too large or broken",
            Error::Failed => "request failed",
        }
    }
}

/// Write one line to the refresh's status record and the worker log.
pub fn log(text: &str) {
    unsafe { raw::log(text.as_ptr(), text.len() as i32) };
}

/// Log `why` and stop the run: nothing is committed.
pub fn fail(why: &str) -> ! {
    log(why);
    core::arch::wasm32::unreachable()
}

/// The archive's current payload.
pub fn payload() -> Vec<u8> {
    let mut buf = vec![0u8; unsafe { raw::payload_size() } as usize];
    let n = unsafe { raw::payload_read(0, buf.len() as i32, buf.as_mut_ptr()) };
    buf.truncate(n.max(0) as usize);
    buf
}

/// Write `data` into the new payload at `offset`.
pub fn write_at(offset: usize, data: &[u8]) -> Result<(), Error> {
    Error::check(unsafe { raw::payload_write(offset as i32, data.len() as i32, data.as_ptr()) }).map(|_| ())
}

/// Make `data` the new payload.
pub fn write_payload(data: &[u8]) -> Result<(), Error> {
    write_at(0, data)
}

/// Say "nothing changed": no new generation is committed (writes of this run are dropped).
pub fn unchanged() {
    unsafe { raw::unchanged() };
}

/// Wall-clock seconds since the Unix epoch.
pub fn now() -> i64 {
    unsafe { raw::time_unix() }
}

/// The bytes of `context.json` (empty when the archive has none).
pub fn context() -> Vec<u8> {
    let mut buf = vec![0u8; unsafe { raw::context_size() } as usize];
    let n = unsafe { raw::context_read(0, buf.len() as i32, buf.as_mut_ptr()) };
    buf.truncate(n.max(0) as usize);
    buf
}

/// The string value of a top-level key of `context.json` (a flat object; `\"` and `\\` unescaped).
pub fn context_string(key: &str) -> Option<String> {
    json_string(&context(), key)
}

/// The string value of the first `"key": "value"` pair in a JSON text (no nesting awareness).
pub fn json_string(text: &[u8], key: &str) -> Option<String> {
    let key = key.as_bytes();
    let mut i = 0;
    while i + key.len() + 2 < text.len() {
        if text[i] == b'"' && &text[i + 1..i + 1 + key.len()] == key && text[i + 1 + key.len()] == b'"' {
            let mut j = i + key.len() + 2;
            while j < text.len() && (text[j] == b' ' || text[j] == b':') {
                j += 1;
            }
            if j < text.len() && text[j] == b'"' {
                let mut out = Vec::new();
                j += 1;
                while j < text.len() && text[j] != b'"' {
                    if text[j] == b'\\' && j + 1 < text.len() {
                        j += 1;
                    }
                    out.push(text[j]);
                    j += 1;
                }
                return String::from_utf8(out).ok();
            }
        }
        i += 1;
    }
    None
}

/// An HTTP request under construction.
pub struct Request<'a> {
    method: &'a str,
    url: &'a str,
    headers: String,
    body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request with any method.
    pub fn new(method: &'a str, url: &'a str) -> Self {
        Request { method, url, headers: String::new(), body: &[] }
    }

    /// A GET request.
    pub fn get(url: &'a str) -> Self {
        Self::new("GET", url)
    }

    /// A POST request with a body.
    pub fn post(url: &'a str, body: &'a [u8]) -> Self {
        Request { body, ..Self::new("POST", url) }
    }

    /// Add a header; `${NAME}` in the value is an operator secret the manifest asks for in `allow_env`
    /// (sent only to hosts the operator bound it to).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push_str(name);
        self.headers.push_str(": ");
        self.headers.push_str(value);
        self.headers.push('\n');
        self
    }

    /// Perform it: the response, whatever its status, or the ABI error.
    pub fn send(self) -> Result<Response, Error> {
        let status = Error::check(unsafe {
            raw::http_send(
                self.url.as_ptr(),
                self.url.len() as i32,
                self.method.as_ptr(),
                self.method.len() as i32,
                self.headers.as_ptr(),
                self.headers.len() as i32,
                self.body.as_ptr(),
                self.body.len() as i32,
            )
        })?;
        let mut body = vec![0u8; unsafe { raw::last_response_size() } as usize];
        let n = Error::check(unsafe { raw::last_response_read(body.as_mut_ptr(), body.len() as i32) })?;
        body.truncate(n as usize);
        Ok(Response { status: status as u16, body })
    }
}

/// A completed response.
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header of this (the last) response, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        let len = unsafe { raw::last_response_header(name.as_ptr(), name.len() as i32, core::ptr::null_mut(), 0) };
        if len < 0 {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        unsafe { raw::last_response_header(name.as_ptr(), name.len() as i32, buf.as_mut_ptr(), len) };
        String::from_utf8(buf).ok()
    }
}
