// sync_guest: the sync guest ABI (versions 1 and 2) for AssemblyScript, with strings, arrays and errors.
//
// Import it as `import * as sg from "sync_guest";` and export `run`. Build with
// `syncctl guest build guest.ts` (asc, --runtime stub, -Oz). Reference: docs/guest-abi.md.
//
// Example:
//   import * as sg from "sync_guest";
//   export function run(): void {
//     const url = sg.contextString("url");
//     if (url == null) { sg.log("context.json has no url"); return; }
//     const response = sg.get(url!, "Accept: text/csv\n");
//     if (response.status != 200) sg.fail("unexpected status " + response.status.toString());
//     sg.writePayload(response.body);
//   }

@external("host", "payload_size") declare function payload_size(): i32;
@external("host", "payload_read") declare function payload_read(offset: i32, len: i32, out: usize): i32;
@external("host", "payload_write") declare function payload_write(offset: i32, len: i32, data: usize): i32;
@external("host", "last_response_size") declare function last_response_size(): i32;
@external("host", "last_response_read") declare function last_response_read(out: usize, max_len: i32): i32;
@external("host", "context_size") declare function context_size(): i32;
@external("host", "context_read") declare function context_read(offset: i32, len: i32, out: usize): i32;
@external("host", "http_send")
declare function http_send(url: usize, url_len: i32, method: usize, method_len: i32, headers: usize, headers_len: i32, body: usize, body_len: i32): i32;
@external("host", "last_response_header")
declare function last_response_header(name: usize, name_len: i32, out: usize, max_len: i32): i32;
@external("host", "unchanged") declare function host_unchanged(): i32;
@external("host", "log") declare function host_log(text: usize, len: i32): i32;
@external("host", "time_unix") declare function time_unix(): i64;

/** A completed HTTP response (any status), or an ABI error when `status` is negative. */
export class Response {
  constructor(public status: i32, public body: Uint8Array) {}
  /** The body as UTF-8 text. */
  text(): string {
    return String.UTF8.decode(this.body.buffer);
  }
  /** A header of this (the last) response, case-insensitive; null when absent. */
  header(name: string): string | null {
    const n = String.UTF8.encode(name);
    const len = last_response_header(changetype<usize>(n), n.byteLength, 0, 0);
    if (len < 0) return null;
    const out = new ArrayBuffer(len);
    last_response_header(changetype<usize>(n), n.byteLength, changetype<usize>(out), len);
    return String.UTF8.decode(out);
  }
}

/** Log one line into the refresh's status record and the worker log. */
export function log(text: string): void {
  const b = String.UTF8.encode(text);
  host_log(changetype<usize>(b), b.byteLength);
}

/** Log `why` and stop the run: nothing is committed. */
export function fail(why: string): void {
  log(why);
  unreachable();
}

/** Send a request. `headers` are "Name: value\n" lines; "${NAME}" in a value is an operator secret. */
export function request(method: string, url: string, headers: string = "", body: Uint8Array | null = null): Response {
  const u = String.UTF8.encode(url);
  const m = String.UTF8.encode(method);
  const h = String.UTF8.encode(headers);
  const bodyPtr: usize = body == null ? 0 : body.dataStart;
  const bodyLen: i32 = body == null ? 0 : body.length;
  const status = http_send(changetype<usize>(u), u.byteLength, changetype<usize>(m), m.byteLength,
    changetype<usize>(h), h.byteLength, bodyPtr, bodyLen);
  if (status < 0) return new Response(status, new Uint8Array(0));
  const out = new Uint8Array(last_response_size());
  const n = last_response_read(out.dataStart, out.length);
  return new Response(status, out.subarray(0, n < 0 ? 0 : n));
}

export function get(url: string, headers: string = ""): Response {
  return request("GET", url, headers);
}

export function postJson(url: string, json: string, headers: string = ""): Response {
  return request("POST", url, "Content-Type: application/json\n" + headers, Uint8Array.wrap(String.UTF8.encode(json)));
}

/** The archive's current payload. */
export function payload(): Uint8Array {
  const out = new Uint8Array(payload_size());
  const n = payload_read(0, out.length, out.dataStart);
  return out.subarray(0, n < 0 ? 0 : n);
}

export function payloadText(): string {
  return String.UTF8.decode(payload().slice().buffer);
}

/** Write bytes into the new payload at `offset`; false on error. */
export function writeAt(offset: i32, data: Uint8Array): bool {
  return payload_write(offset, data.length, data.dataStart) >= 0;
}

export function writePayload(data: Uint8Array): bool {
  return writeAt(0, data);
}

export function writeText(text: string): bool {
  return writePayload(Uint8Array.wrap(String.UTF8.encode(text)));
}

/** Say "nothing changed": no new generation is committed. */
export function unchanged(): void {
  host_unchanged();
}

/** Wall-clock seconds since the Unix epoch. */
export function now(): i64 {
  return time_unix();
}

/** context.json as text ("" when absent). */
export function context(): string {
  const out = new Uint8Array(context_size());
  const n = context_read(0, out.length, out.dataStart);
  return String.UTF8.decode(out.subarray(0, n < 0 ? 0 : n).slice().buffer);
}

/** The string value of the first `"key": "value"` pair of a JSON text (flat; \" and \\ unescaped). */
export function jsonString(text: string, key: string): string | null {
  const needle = "\"" + key + "\"";
  let i = text.indexOf(needle);
  while (i >= 0) {
    let j = i + needle.length;
    while (j < text.length && (text.charAt(j) == " " || text.charAt(j) == ":")) j++;
    if (j < text.length && text.charAt(j) == "\"") {
      let out = "";
      j++;
      while (j < text.length && text.charAt(j) != "\"") {
        if (text.charAt(j) == "\\" && j + 1 < text.length) j++;
        out += text.charAt(j);
        j++;
      }
      return out;
    }
    i = text.indexOf(needle, i + 1);
  }
  return null;
}

export function contextString(key: string): string | null {
  return jsonString(context(), key);
}
