//! sync_guest.zig: the sync guest ABI (versions 1 and 2) for Zig, with slices and error unions.
//!
//! The same functions as sync_guest.h (Zig 0.16+ has no @cImport, so Zig gets its own file).
//! Build with `syncctl guest build guest.zig`; import with `const sg = @import("sync_guest");`.
//! Reference: docs/guest-abi.md.
//!
//! Example:
//!     const sg = @import("sync_guest");
//!     export fn run() void {
//!         const url = sg.contextString("url") orelse return sg.logStr("no url in context.json");
//!         const status = sg.get(url, "Accept: */*\n") catch return sg.fail("request failed");
//!         if (status != 200) sg.fail("unexpected status");
//!         sg.write(0, sg.responseBody() catch sg.fail("out of memory")) catch sg.fail("write failed");
//!     }

pub const raw = struct {
    pub extern "host" fn payload_size() i32;
    pub extern "host" fn payload_read(offset: i32, len: i32, out: [*]u8) i32;
    pub extern "host" fn payload_write(offset: i32, len: i32, data: [*]const u8) i32;
    pub extern "host" fn http_request(url: [*]const u8, url_len: i32, method: [*]const u8, method_len: i32) i32;
    pub extern "host" fn last_response_size() i32;
    pub extern "host" fn last_response_read(out: [*]u8, max_len: i32) i32;
    pub extern "host" fn context_size() i32;
    pub extern "host" fn context_read(offset: i32, len: i32, out: [*]u8) i32;
    pub extern "host" fn http_send(url: [*]const u8, url_len: i32, method: [*]const u8, method_len: i32, headers: [*]const u8, headers_len: i32, body: [*]const u8, body_len: i32) i32;
    pub extern "host" fn last_response_read_at(offset: i32, len: i32, out: [*]u8) i32;
    pub extern "host" fn last_response_header(name: [*]const u8, name_len: i32, out: [*]u8, max_len: i32) i32;
    pub extern "host" fn last_response_headers_size() i32;
    pub extern "host" fn last_response_headers_read(offset: i32, len: i32, out: [*]u8) i32;
    pub extern "host" fn unchanged() i32;
    pub extern "host" fn log(text: [*]const u8, len: i32) i32;
    pub extern "host" fn time_unix() i64;
};

/// Errors of the ABI's negative codes.
pub const Error = error{ BadMemory, Refused, BadRequest, TooLarge, RequestFailed, OutOfMemory };

fn check(code: i32) Error!i32 {
    return switch (code) {
        -1 => error.BadMemory,
        -2 => error.Refused,
        -3 => error.BadRequest,
        -4 => error.TooLarge,
        -5 => error.RequestFailed,
        else => if (code < 0) error.RequestFailed else code,
    };
}

extern var __heap_base: u8;
var heap_top: usize = 0;

/// Memory that lives until the run ends (guests are short-lived: nothing is freed).
pub fn alloc(size: usize) Error![]u8 {
    if (heap_top == 0) heap_top = @intFromPtr(&__heap_base);
    const start = (heap_top + 7) & ~@as(usize, 7);
    const end = start + size;
    const have = @wasmMemorySize(0) * 65536;
    if (end > have) {
        if (@wasmMemoryGrow(0, (end - have + 65535) / 65536) < 0) return error.OutOfMemory;
    }
    heap_top = end;
    return @as([*]u8, @ptrFromInt(start))[0..size];
}

pub fn logStr(text: []const u8) void {
    _ = raw.log(text.ptr, @intCast(text.len));
}

/// Log `why` and stop the run: nothing is committed.
pub fn fail(why: []const u8) noreturn {
    logStr(why);
    @trap();
}

/// Send a request; `headers` are "Name: value\n" lines ("${NAME}" = an operator secret). The HTTP status.
pub fn request(method: []const u8, url: []const u8, headers: []const u8, body: []const u8) Error!i32 {
    return check(raw.http_send(url.ptr, @intCast(url.len), method.ptr, @intCast(method.len), headers.ptr, @intCast(headers.len), body.ptr, @intCast(body.len)));
}

pub fn get(url: []const u8, headers: []const u8) Error!i32 {
    return request("GET", url, headers, "");
}

/// The last response body, in fresh memory.
pub fn responseBody() Error![]u8 {
    const buf = try alloc(@intCast(raw.last_response_size()));
    const n = try check(raw.last_response_read(buf.ptr, @intCast(buf.len)));
    return buf[0..@intCast(n)];
}

/// A header of the last response, or null when absent.
pub fn responseHeader(name: []const u8) ?[]u8 {
    var small: [1]u8 = undefined;
    const len = raw.last_response_header(name.ptr, @intCast(name.len), &small, 0);
    if (len < 0) return null;
    const buf = alloc(@intCast(len)) catch return null;
    _ = raw.last_response_header(name.ptr, @intCast(name.len), buf.ptr, len);
    return buf;
}

/// The current payload, in fresh memory.
pub fn payload() Error![]u8 {
    const buf = try alloc(@intCast(raw.payload_size()));
    const n = try check(raw.payload_read(0, @intCast(buf.len), buf.ptr));
    return buf[0..@intCast(n)];
}

/// context.json, in fresh memory (empty when absent).
pub fn context() Error![]u8 {
    const buf = try alloc(@intCast(raw.context_size()));
    const n = try check(raw.context_read(0, @intCast(buf.len), buf.ptr));
    return buf[0..@intCast(n)];
}

/// The string value of a top-level key of context.json (a flat object; escapes other than \" and \\ kept).
pub fn contextString(key: []const u8) ?[]u8 {
    const ctx = context() catch return null;
    var i: usize = 0;
    while (i + key.len + 2 < ctx.len) : (i += 1) {
        if (ctx[i] != '"' or !eql(ctx[i + 1 .. i + 1 + key.len], key) or ctx[i + 1 + key.len] != '"') continue;
        var j = i + key.len + 2;
        while (j < ctx.len and (ctx[j] == ' ' or ctx[j] == ':')) j += 1;
        if (j >= ctx.len or ctx[j] != '"') continue;
        const out = alloc(ctx.len) catch return null;
        var w: usize = 0;
        j += 1;
        while (j < ctx.len and ctx[j] != '"') : (j += 1) {
            if (ctx[j] == '\\' and j + 1 < ctx.len) j += 1;
            out[w] = ctx[j];
            w += 1;
        }
        return out[0..w];
    }
    return null;
}

fn eql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |x, y| if (x != y) return false;
    return true;
}

/// Write bytes into the new payload at `offset`.
pub fn write(offset: usize, data: []const u8) Error!void {
    _ = try check(raw.payload_write(@intCast(offset), @intCast(data.len), data.ptr));
}

/// Say "nothing changed": no new generation is committed.
pub fn unchanged() void {
    _ = raw.unchanged();
}

/// Wall-clock seconds since the Unix epoch.
pub fn now() i64 {
    return raw.time_unix();
}
