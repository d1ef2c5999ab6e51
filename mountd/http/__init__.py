"""HTTP around wsgidav: guards, limits, fast GET/PROPFIND, ranges, payload and freshness headers, browser."""
