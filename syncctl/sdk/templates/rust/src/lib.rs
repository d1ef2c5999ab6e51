//! A sync guest in Rust: fetch the URL named "url" in context.json and make its body the payload.
//! Build: syncctl guest build . -o guest.wasm    (docs/guest-authors.md; the sync_guest crate is linked for you)
use sync_guest as sg;

#[no_mangle]
pub extern "C" fn run() {
    let url = sg::context_string("url").unwrap_or_else(|| sg::fail("context.json has no \"url\""));
    let response = sg::Request::get(&url)
        .header("Accept", "*/*")
        .send()
        .unwrap_or_else(|e| sg::fail(e.message()));
    if response.status != 200 {
        sg::fail("the source did not answer 200: nothing committed");
    }
    sg::write_payload(&response.body).unwrap_or_else(|e| sg::fail(e.message()));
}
