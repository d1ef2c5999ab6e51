// A sync guest in AssemblyScript: fetch the URL named "url" in context.json and make its body the payload.
// Build: syncctl guest build guest.ts -o guest.wasm    (docs/guest-authors.md)
import * as sg from "sync_guest";

export function run(): void {
  const url = sg.contextString("url");
  if (url === null) {
    sg.fail("context.json has no \"url\"");
    return;
  }
  const response = sg.get(url, "Accept: */*\n");
  if (response.status != 200) {
    sg.fail("the source did not answer 200 (" + response.status.toString() + "): nothing committed");
    return;
  }
  sg.writePayload(response.body);
}
