// A sync guest in Zig: fetch the URL named "url" in context.json and make its body the payload.
// Build: syncctl guest build guest.zig -o guest.wasm    (docs/guest-authors.md)
const sg = @import("sync_guest");

export fn run() void {
    const url = sg.contextString("url") orelse sg.fail("context.json has no \"url\"");
    const status = sg.get(url, "Accept: */*\n") catch sg.fail("request failed");
    if (status != 200) sg.fail("the source did not answer 200: nothing committed");
    const body = sg.responseBody() catch sg.fail("out of memory");
    sg.write(0, body) catch sg.fail("could not write the payload");
}
