/* sync_guest.h: the sync guest ABI (versions 1 and 2) for C and Zig, with small helpers.
 *
 * A guest is a wasm32 module that imports functions of module "host" and exports `memory` and
 * `void run(void)`. Build with `syncctl guest build guest.c` (zig cc, wasm32-freestanding, -Oz).
 * Full reference: docs/guest-abi.md. Every function returns a negative code on error:
 *   -1 bad pointer/length (or non-UTF-8 URL/method), -2 destination refused, -3 bad request headers
 *   (or header absent), -4 response body too large/broken, -5 request failed.
 *
 * Example (fetch the URL named "url" in context.json and make its body the payload):
 *
 *   #include "sync_guest.h"
 *   static char url[2048];
 *   SYNC_EXPORT void run(void) {
 *       int n = sg_context_string("url", url, sizeof url);
 *       if (n <= 0) { sg_log_str("context.json has no \"url\""); return; }
 *       int status = sg_get(url, n, "Accept: text/csv\n");
 *       if (status != 200) { sg_fail("fetch failed"); }
 *       sg_write_response();
 *   }
 */
#ifndef SYNC_GUEST_H
#define SYNC_GUEST_H

#include <stdint.h>
#include <stddef.h>

#define SYNC_IMPORT(name) __attribute__((import_module("host"), import_name(#name)))
#define SYNC_EXPORT __attribute__((export_name("run"), visibility("default")))

/* ---- ABI version 1 (the reference's six functions) ---- */
SYNC_IMPORT(payload_size) int32_t sg_payload_size(void);
SYNC_IMPORT(payload_read) int32_t sg_payload_read(int32_t offset, int32_t len, void *out);
SYNC_IMPORT(payload_write) int32_t sg_payload_write(int32_t offset, int32_t len, const void *data);
SYNC_IMPORT(http_request) int32_t sg_http_request(const char *url, int32_t url_len, const char *method, int32_t method_len);
SYNC_IMPORT(last_response_size) int32_t sg_response_size(void);
SYNC_IMPORT(last_response_read) int32_t sg_response_read(void *out, int32_t max_len);

/* ---- ABI version 2 (importing any of these opts in) ---- */
SYNC_IMPORT(context_size) int32_t sg_context_size(void);
SYNC_IMPORT(context_read) int32_t sg_context_read(int32_t offset, int32_t len, void *out);
/* headers: "Name: value\n" lines; "${NAME}" in a value is an operator secret named by allow_env, sent
 * only to hosts the operator bound it to (SYNC_GUEST_SECRET_NAME_HOSTS). */
SYNC_IMPORT(http_send) int32_t sg_http_send(const char *url, int32_t url_len, const char *method, int32_t method_len,
                                             const char *headers, int32_t headers_len, const void *body, int32_t body_len);
SYNC_IMPORT(last_response_read_at) int32_t sg_response_read_at(int32_t offset, int32_t len, void *out);
/* Value of a response header (case-insensitive): its full length (copies at most max_len), -3 absent. */
SYNC_IMPORT(last_response_header) int32_t sg_response_header(const char *name, int32_t name_len, char *out, int32_t max_len);
SYNC_IMPORT(last_response_headers_size) int32_t sg_response_headers_size(void);
SYNC_IMPORT(last_response_headers_read) int32_t sg_response_headers_read(int32_t offset, int32_t len, void *out);
/* "Nothing changed": this run's writes are dropped and no new generation is committed. */
SYNC_IMPORT(unchanged) int32_t sg_unchanged(void);
SYNC_IMPORT(log) int32_t sg_log(const char *text, int32_t len);
SYNC_IMPORT(time_unix) int64_t sg_time_unix(void);

/* ---- helpers (static inline: nothing is linked that a guest does not use) ---- */

static inline int32_t sg_strlen(const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Log a NUL-terminated string. */
static inline void sg_log_str(const char *text) { sg_log(text, sg_strlen(text)); }

/* Stop the run with a message in the status record; nothing is committed. */
static inline __attribute__((noreturn)) void sg_fail(const char *why) {
    sg_log_str(why);
    __builtin_trap();
}

/* GET (or any method) with a header block ("" for none); the HTTP status or a negative code. */
static inline int32_t sg_request(const char *method, const char *url, int32_t url_len, const char *headers,
                                 const void *body, int32_t body_len) {
    return sg_http_send(url, url_len, method, sg_strlen(method), headers, sg_strlen(headers), body, body_len);
}
static inline int32_t sg_get(const char *url, int32_t url_len, const char *headers) {
    return sg_request("GET", url, url_len, headers, 0, 0);
}

/* Scratch memory that grows with the wasm memory (guests are short-lived: nothing is freed). */
extern unsigned char __heap_base;
static unsigned char *sg__heap_top;
static inline void *sg_alloc(size_t size) {
    if (!sg__heap_top) sg__heap_top = &__heap_base;
    uintptr_t start = ((uintptr_t)sg__heap_top + 7u) & ~(uintptr_t)7u;
    uintptr_t end = start + size;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        if (__builtin_wasm_memory_grow(0, (end - have + 65535u) / 65536u) == (size_t)-1) return 0;
    }
    sg__heap_top = (unsigned char *)end;
    return (void *)start;
}

/* The last response body in fresh memory; *len receives its length (NULL when out of memory). */
static inline unsigned char *sg_response_body(int32_t *len) {
    int32_t n = sg_response_size();
    unsigned char *buf = sg_alloc((size_t)n + 1);
    if (!buf) return 0;
    *len = sg_response_read(buf, n);
    buf[*len < 0 ? 0 : *len] = 0;
    return buf;
}

/* The current payload in fresh memory (NUL-terminated); *len receives its length. */
static inline unsigned char *sg_payload(int32_t *len) {
    int32_t n = sg_payload_size();
    unsigned char *buf = sg_alloc((size_t)n + 1);
    if (!buf) return 0;
    *len = sg_payload_read(0, n, buf);
    buf[*len < 0 ? 0 : *len] = 0;
    return buf;
}

/* Make the last response body the new payload; its length or a negative code. */
static inline int32_t sg_write_response(void) {
    int32_t len = 0;
    unsigned char *body = sg_response_body(&len);
    return body ? sg_payload_write(0, len, body) : -1;
}

/* context.json in fresh memory (NUL-terminated); *len receives its length (0 when absent). */
static inline char *sg_context(int32_t *len) {
    int32_t n = sg_context_size();
    char *buf = sg_alloc((size_t)n + 1);
    if (!buf) return 0;
    *len = sg_context_read(0, n, buf);
    buf[*len < 0 ? 0 : *len] = 0;
    return buf;
}

/* The string value of top-level key `key` in context.json (a flat JSON object; \" and \\ unescaped).
 * Copies it NUL-terminated into out; returns its length, or -1 when absent or too long. */
static inline int32_t sg_context_string(const char *key, char *out, int32_t cap) {
    int32_t n = 0, klen = sg_strlen(key);
    const char *ctx = sg_context(&n);
    if (!ctx) return -1;
    for (int32_t i = 0; i + klen + 2 < n; i++) {
        if (ctx[i] != '"') continue;
        int32_t k = 0;
        while (k < klen && ctx[i + 1 + k] == key[k]) k++;
        if (k != klen || ctx[i + 1 + klen] != '"') continue;
        int32_t j = i + klen + 2;
        while (j < n && (ctx[j] == ' ' || ctx[j] == ':')) j++;
        if (j >= n || ctx[j] != '"') continue;
        int32_t w = 0;
        for (j++; j < n && ctx[j] != '"'; j++) {
            if (ctx[j] == '\\' && j + 1 < n) j++;
            if (w + 1 >= cap) return -1;
            out[w++] = ctx[j];
        }
        out[w] = 0;
        return w;
    }
    return -1;
}

/* Append-style writer over the new payload. */
typedef struct { int32_t at; } sg_writer;
static inline int32_t sg_put(sg_writer *w, const void *data, int32_t len) {
    int32_t r = sg_payload_write(w->at, len, data);
    if (r > 0) w->at += r;
    return r;
}
static inline int32_t sg_puts(sg_writer *w, const char *s) { return sg_put(w, s, sg_strlen(s)); }
static inline int32_t sg_put_i64(sg_writer *w, int64_t v) {
    char buf[24];
    int i = 23, neg = v < 0;
    uint64_t u = neg ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    buf[i] = 0;
    do { buf[--i] = (char)('0' + u % 10); u /= 10; } while (u);
    if (neg) buf[--i] = '-';
    return sg_put(w, buf + i, 23 - i);
}

#endif
