//! JSON API -> CSV (Rust): GET a JSON array of flat objects from "url" (with `Accept: application/json`
//! and, when the archive grants it, `Authorization: Bearer ${API_TOKEN}` from an operator secret) and
//! write the "columns" of every object as a CSV table.
use sync_guest as sg;

/// The objects of a top-level JSON array, as slices of the text (strings may contain braces).
fn objects(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut out, mut depth, mut start, mut in_string, mut escaped) = (Vec::new(), 0usize, 0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(&text[start..=i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// The value of `key` in a flat object: a string (unescaped) or the raw number/literal.
fn field(object: &str, key: &str) -> String {
    if let Some(s) = sg::json_string(object.as_bytes(), key) {
        return s;
    }
    let needle = format!("\"{}\"", key);
    match object.find(&needle) {
        Some(at) => object[at + needle.len()..]
            .trim_start_matches(|c: char| c == ':' || c.is_whitespace())
            .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

fn csv_cell(value: &str) -> String {
    if value.contains(|c| c == ',' || c == '"' || c == '\n') {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[no_mangle]
pub extern "C" fn run() {
    let url = sg::context_string("url").unwrap_or_else(|| sg::fail("context.json has no \"url\""));
    let columns = sg::context_string("columns").unwrap_or_else(|| sg::fail("context.json has no \"columns\""));
    let mut request = sg::Request::get(&url).header("Accept", "application/json");
    if sg::context_string("auth").as_deref() == Some("bearer") {
        request = request.header("Authorization", "Bearer ${API_TOKEN}");
    }
    let response = request.send().unwrap_or_else(|e| sg::fail(e.message()));
    if response.status != 200 {
        sg::fail("the API did not answer 200: nothing committed");
    }
    let text = core::str::from_utf8(&response.body).unwrap_or_else(|_| sg::fail("the API's answer is not UTF-8"));
    let names: Vec<&str> = columns.split(',').map(str::trim).collect();
    let mut csv = names.join(",");
    csv.push('\n');
    for object in objects(text) {
        let row: Vec<String> = names.iter().map(|name| csv_cell(&field(object, name))).collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    sg::log(&format!("{} rows", csv.lines().count() - 1));
    sg::write_payload(csv.as_bytes()).unwrap_or_else(|e| sg::fail(e.message()));
}
