// Append-a-row logger (Zig): read one number from a JSON endpoint and append "<unix time>,<value>" to the
// payload, which starts as the header "time,<field>". Every refresh adds a row; the old rows are kept.
const sg = @import("sync_guest");

/// The raw JSON value after `"key":` (a number, true/false or null), without surrounding spaces.
fn jsonNumber(text: []const u8, key: []const u8) ?[]const u8 {
    var i: usize = 0;
    while (i + key.len + 2 <= text.len) : (i += 1) {
        if (text[i] != '"' or !eql(text[i + 1 .. i + 1 + key.len], key) or text[i + 1 + key.len] != '"') continue;
        var j = i + key.len + 2;
        while (j < text.len and (text[j] == ' ' or text[j] == ':')) j += 1;
        const start = j;
        while (j < text.len and text[j] != ',' and text[j] != '}' and text[j] != ' ' and text[j] != '\n') j += 1;
        if (j > start) return text[start..j];
    }
    return null;
}

fn eql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |x, y| if (x != y) return false;
    return true;
}

fn decimal(buf: []u8, value: i64) []const u8 {
    var v: u64 = if (value < 0) 0 else @intCast(value);
    var i = buf.len;
    while (true) {
        i -= 1;
        buf[i] = @intCast('0' + v % 10);
        v /= 10;
        if (v == 0) break;
    }
    return buf[i..];
}

export fn run() void {
    const url = sg.contextString("url") orelse sg.fail("context.json has no \"url\"");
    const field = sg.contextString("field") orelse "value";
    const status = sg.get(url, "Accept: application/json\n") catch sg.fail("request failed");
    if (status != 200) sg.fail("the source did not answer 200: no row added");
    const body = sg.responseBody() catch sg.fail("out of memory");
    const value = jsonNumber(body, field) orelse sg.fail("the response has no such field");
    const old = sg.payload() catch sg.fail("out of memory");
    var at: usize = 0;
    if (old.len == 0) {
        sg.write(0, "time,") catch sg.fail("write failed");
        sg.write(5, field) catch sg.fail("write failed");
        sg.write(5 + field.len, "\n") catch sg.fail("write failed");
        at = 6 + field.len;
    } else {
        sg.write(0, old) catch sg.fail("write failed");
        at = old.len;
    }
    var digits: [24]u8 = undefined;
    const stamp = decimal(&digits, sg.now());
    sg.write(at, stamp) catch sg.fail("write failed");
    at += stamp.len;
    sg.write(at, ",") catch sg.fail("write failed");
    sg.write(at + 1, value) catch sg.fail("write failed");
    sg.write(at + 1 + value.len, "\n") catch sg.fail("write failed");
}
