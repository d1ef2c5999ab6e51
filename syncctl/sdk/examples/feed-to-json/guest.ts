// RSS/Atom -> JSON (AssemblyScript): fetch the feed at "url" and write its items as a JSON array of
// {"title", "link", "date"} objects, newest first as the feed lists them, at most "limit" (default 50).
import * as sg from "sync_guest";

/** The text between <tag ...> and </tag> in `block`, or "" (CDATA unwrapped, entities of XML decoded). */
function element(block: string, tag: string): string {
  let open = block.indexOf("<" + tag + ">");
  let start = open + tag.length + 2;
  if (open < 0) {
    open = block.indexOf("<" + tag + " ");
    if (open < 0) return "";
    start = block.indexOf(">", open) + 1;
    if (block.charAt(start - 2) == "/") return "";
  }
  const end = block.indexOf("</" + tag + ">", start);
  if (end < 0) return "";
  let text = block.substring(start, end).trim();
  if (text.startsWith("<![CDATA[") && text.endsWith("]]>")) return text.substring(9, text.length - 3);
  return text.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&quot;", "\"")
    .replaceAll("&apos;", "'").replaceAll("&amp;", "&");
}

/** An Atom <link href="..."/> (the first one), or "". */
function atomLink(block: string): string {
  const at = block.indexOf("<link");
  if (at < 0) return "";
  const href = block.indexOf("href=\"", at);
  if (href < 0) return "";
  return block.substring(href + 6, block.indexOf("\"", href + 6));
}

function jsonString(text: string): string {
  let out = "\"";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c == 34) out += "\\\"";
    else if (c == 92) out += "\\\\";
    else if (c == 10) out += "\\n";
    else if (c < 32) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else out += text.charAt(i);
  }
  return out + "\"";
}

export function run(): void {
  const url = sg.contextString("url");
  if (url === null) {
    sg.fail("context.json has no \"url\"");
    return;
  }
  const limitText = sg.jsonString(sg.context(), "limit");
  const limit = limitText === null ? 50 : I32.parseInt(limitText);
  const response = sg.get(url, "Accept: application/rss+xml, application/atom+xml, application/xml\n");
  if (response.status != 200) {
    sg.fail("the feed did not answer 200 (" + response.status.toString() + "): nothing committed");
    return;
  }
  const feed = response.text();
  const atom = feed.indexOf("<entry") >= 0;
  const tag = atom ? "entry" : "item";
  let out = "[";
  let count = 0;
  let at = feed.indexOf("<" + tag);
  while (at >= 0 && count < limit) {
    const end = feed.indexOf("</" + tag + ">", at);
    if (end < 0) break;
    const block = feed.substring(at, end);
    const link = atom ? atomLink(block) : element(block, "link");
    const date = atom ? element(block, "updated") : element(block, "pubDate");
    if (count > 0) out += ",";
    out += "\n  {\"title\": " + jsonString(element(block, "title")) + ", \"link\": " + jsonString(link) +
      ", \"date\": " + jsonString(date) + "}";
    count++;
    at = feed.indexOf("<" + tag, end);
  }
  out += count > 0 ? "\n]\n" : "]\n";
  sg.log(count.toString() + " items");
  sg.writeText(out);
}
