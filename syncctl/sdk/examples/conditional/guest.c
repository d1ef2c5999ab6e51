// Conditional fetch (C): mirror a document, re-downloading it only when it changed.
// The payload's first line keeps the validator: "# etag: <ETag>". The next refresh sends it back as
// If-None-Match; on 304 the guest says "unchanged" (no download, no new generation), on 200 it writes
// the new validator line and the body.
#include "sync_guest.h"

static char url[2048];
static char etag[512];
static char headers[600];

static int32_t old_etag(char *out, int32_t cap) {
    int32_t len = 0;
    const unsigned char *old = sg_payload(&len);
    const char *prefix = "# etag: ";
    int32_t p = sg_strlen(prefix), i = 0;
    if (!old || len < p) return 0;
    for (i = 0; i < p; i++) if (old[i] != (unsigned char)prefix[i]) return 0;
    int32_t w = 0;
    for (i = p; i < len && old[i] != '\n' && w + 1 < cap; i++) out[w++] = (char)old[i];
    out[w] = 0;
    return w;
}

SYNC_EXPORT void run(void) {
    int32_t n = sg_context_string("url", url, sizeof url);
    if (n <= 0) sg_fail("context.json has no \"url\"");
    headers[0] = 0;
    if (old_etag(etag, sizeof etag) > 0) {
        const char *name = "If-None-Match: ";
        int32_t w = 0, i;
        for (i = 0; name[i]; i++) headers[w++] = name[i];
        for (i = 0; etag[i]; i++) headers[w++] = etag[i];
        headers[w++] = '\n';
        headers[w] = 0;
    }
    int32_t status = sg_get(url, n, headers);
    if (status == 304) {
        sg_log_str("not modified: payload kept");
        sg_unchanged();
        return;
    }
    if (status != 200) sg_fail("unexpected status: nothing committed");
    int32_t elen = sg_response_header("etag", 4, etag, sizeof etag - 1);
    sg_writer out = {0};
    if (elen > 0 && elen < (int32_t)sizeof etag) {
        sg_puts(&out, "# etag: ");
        sg_put(&out, etag, elen);
        sg_puts(&out, "\n");
    }
    int32_t len = 0;
    unsigned char *body = sg_response_body(&len);
    if (!body) sg_fail("out of memory");
    sg_put(&out, body, len);
}
