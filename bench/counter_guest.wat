;; Benchmark guest (bench_freshness.py): the payload is an 8-digit decimal counter and a newline; each run
;; adds one and writes it back at once. No network, no clock: a refresh costs only the runtime's own work.
(module
  (import "host" "payload_read"  (func $read  (param i32 i32 i32) (result i32)))
  (import "host" "payload_write" (func $write (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (local $i i32)
    (drop (call $read (i32.const 0) (i32.const 8) (i32.const 0)))
    (local.set $i (i32.const 7))
    (block $done (loop $carry
      (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 57))
        (then
          (i32.store8 (local.get $i) (i32.const 48))
          (br_if $done (i32.eqz (local.get $i)))
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br $carry))
        (else
          (i32.store8 (local.get $i) (i32.add (i32.load8_u (local.get $i)) (i32.const 1)))))))
    (i32.store8 (i32.const 8) (i32.const 10))
    (drop (call $write (i32.const 0) (i32.const 9) (i32.const 0)))))
