;; Demo guest template: fetches one URL and makes the response body the new payload.
;; `syncctl demo` replaces @SOURCE_URL@ with the URL of its local source (hex-escaped, so any byte is safe)
;; before compiling; the URL is NUL-terminated in memory at 1024 and at most 1024 bytes long. A status
;; other than 200 or a body larger than the buffer traps, so a failed fetch is reported as `guest_trap`
;; and leaves the payload as it was. Only reference ABI functions are imported.
(module
  (import "host" "http_request"       (func $http_request (param i32 i32 i32 i32) (result i32)))
  (import "host" "last_response_size" (func $response_size (result i32)))
  (import "host" "last_response_read" (func $response_read (param i32 i32) (result i32)))
  (import "host" "payload_write"      (func $write (param i32 i32 i32) (result i32)))
  ;; Page 0 holds the URL; pages 1-16 hold the body (up to 1 MiB).
  (memory (export "memory") 17)
  (data (i32.const 1024) "@SOURCE_URL@\00")

  ;; Length of the NUL-terminated string at $at.
  (func $strlen (param $at i32) (result i32) (local $end i32)
    (local.set $end (local.get $at))
    (block $done (loop $scan
      (br_if $done (i32.eqz (i32.load8_u (local.get $end))))
      (local.set $end (i32.add (local.get $end) (i32.const 1)))
      (br $scan)))
    (i32.sub (local.get $end) (local.get $at)))

  (func (export "run") (local $size i32)
    ;; An empty method (pointer 0, length 0) means GET.
    (if (i32.ne (call $http_request (i32.const 1024) (call $strlen (i32.const 1024)) (i32.const 0) (i32.const 0))
                (i32.const 200))
      (then (unreachable)))
    (local.set $size (call $response_size))
    (if (i32.gt_u (local.get $size) (i32.const 1048576)) (then (unreachable)))
    (drop (call $response_read (i32.const 65536) (local.get $size)))
    (drop (call $write (i32.const 0) (local.get $size) (i32.const 65536)))))
