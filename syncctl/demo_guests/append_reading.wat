;; Demo guest (appended.csv of `syncctl demo`): appends one CSV row "<n>,roof,7.<n mod 10>" to the payload,
;; where n is the number of lines already there. It needs no network: it uses only the reference ABI's
;; payload_size, payload_read and payload_write.
(module
  (import "host" "payload_size"  (func $size  (result i32)))
  (import "host" "payload_read"  (func $read  (param i32 i32 i32) (result i32)))
  (import "host" "payload_write" (func $write (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; Writes the decimal digits of $n at $at; returns the address after the last digit.
  (func $digits (param $n i32) (param $at i32) (result i32)
    (local $div i32)
    (local.set $div (i32.const 1))
    (block $found (loop $grow
      (br_if $found (i32.lt_u (local.get $n) (i32.mul (local.get $div) (i32.const 10))))
      (local.set $div (i32.mul (local.get $div) (i32.const 10)))
      (br $grow)))
    (loop $emit
      (i32.store8 (local.get $at)
        (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $n) (local.get $div)) (i32.const 10))))
      (local.set $at (i32.add (local.get $at) (i32.const 1)))
      (local.set $div (i32.div_u (local.get $div) (i32.const 10)))
      (br_if $emit (i32.gt_u (local.get $div) (i32.const 0))))
    (local.get $at))

  (func (export "run") (local $n i32) (local $i i32) (local $lines i32) (local $end i32)
    (local.set $n (call $size))
    (if (i32.gt_u (local.get $n) (i32.const 65536)) (then (unreachable)))
    (drop (call $read (i32.const 0) (local.get $n) (i32.const 0)))
    (block $done (loop $count
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 10))
        (then (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $count)))
    (local.set $end (call $digits (local.get $lines) (local.get $n)))
    ;; ",roof,7."
    (i64.store (local.get $end) (i64.const 0x2e372c666f6f722c))
    (local.set $end (i32.add (local.get $end) (i32.const 8)))
    (i32.store8 (local.get $end) (i32.add (i32.const 48) (i32.rem_u (local.get $lines) (i32.const 10))))
    (i32.store8 (i32.add (local.get $end) (i32.const 1)) (i32.const 10))
    (local.set $end (i32.add (local.get $end) (i32.const 2)))
    (drop (call $write (i32.const 0) (local.get $end) (i32.const 0)))))
