// Merge two sources (C): fetch the CSV tables at "url_a" and "url_b" (same columns) and write one table:
// the header of the first, then the rows of both. Either source failing leaves the payload as it was.
#include "sync_guest.h"

static char url_a[2048], url_b[2048];

static unsigned char *fetch(const char *url, int32_t *len) {
    int32_t status = sg_get(url, sg_strlen(url), "Accept: text/csv\n");
    if (status != 200) sg_fail("a source did not answer 200: nothing committed");
    return sg_response_body(len);
}

SYNC_EXPORT void run(void) {
    if (sg_context_string("url_a", url_a, sizeof url_a) <= 0 || sg_context_string("url_b", url_b, sizeof url_b) <= 0)
        sg_fail("context.json needs \"url_a\" and \"url_b\"");
    int32_t la = 0, lb = 0;
    unsigned char *a = fetch(url_a, &la);
    unsigned char *b = fetch(url_b, &lb);
    if (!a || !b) sg_fail("out of memory");
    sg_writer out = {0};
    sg_put(&out, a, la);
    if (la > 0 && a[la - 1] != '\n') sg_puts(&out, "\n");
    int32_t skip = 0;
    while (skip < lb && b[skip] != '\n') skip++;  // the second table's header line
    if (skip < lb) sg_put(&out, b + skip + 1, lb - skip - 1);
}
