// The demo's fetch guest, built with the C SDK: fetch the URL named "url" in context.json (the demo writes
// its source's URL there) and make the body the payload. One module serves every port and document.
// fetch_source.wasm beside it is `syncctl guest build fetch_source.c` (a test rebuilds it byte for byte).
#include "sync_guest.h"

static char url[2048];

SYNC_EXPORT void run(void) {
    if (sg_context_string("url", url, sizeof url) <= 0) sg_fail("context.json has no \"url\"");
    int32_t status = sg_get(url, sg_strlen(url), "Accept: */*\n");
    if (status != 200) sg_fail("the source did not answer 200: nothing committed");
    if (sg_write_response() < 0) sg_fail("could not write the payload");
}
