//! The virtual-CDNA interpreter: op semantics against hand-computed values, a hand-written kernel with an LDS
//! exchange, race and bounds checks, the MFMA lane layouts, and a real nibble kernel end to end.

use melior::ir::Module;
use nibble_compiler::interp::{self, ElemType, InterpError, KernelArg, Scalar};

fn parse(src: &str) -> Module<'static> {
    Module::parse(nibble_compiler::ir::context(), src)
        .unwrap_or_else(|| panic!("module parses:\n{src}"))
}

fn call(m: &Module, f: &str, args: &[Scalar]) -> Vec<Scalar> {
    interp::call(m, f, args).unwrap_or_else(|e| panic!("@{f}: {e}"))
}

fn one(m: &Module, f: &str, args: &[Scalar]) -> Scalar {
    let mut r = call(m, f, args);
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn f32_bits(v: &[f32]) -> Vec<u64> {
    v.iter().map(|x| u64::from(x.to_bits())).collect()
}

const OPS: &str = r#"
module {
  func.func @ext_fp8(%w: i32) -> (vector<2xf32>, vector<2xf32>) {
    %v1 = vector.broadcast %w : i32 to vector<1xi32>
    %b = vector.bitcast %v1 : vector<1xi32> to vector<4xf8E5M2FNUZ>
    %lo = amdgpu.ext_packed_fp8 %b[0] : vector<4xf8E5M2FNUZ> to vector<2xf32>
    %hi = amdgpu.ext_packed_fp8 %b[1] : vector<4xf8E5M2FNUZ> to vector<2xf32>
    return %lo, %hi : vector<2xf32>, vector<2xf32>
  }
  func.func @bytes(%w: vector<1xi32>) -> vector<4xf8E5M2FNUZ> {
    %b = vector.bitcast %w : vector<1xi32> to vector<4xf8E5M2FNUZ>
    return %b : vector<4xf8E5M2FNUZ>
  }
  func.func @bitrev(%x: i32) -> i32 {
    %r = llvm.intr.bitreverse(%x) : (i32) -> i32
    return %r : i32
  }
  func.func @fshl(%a: i32, %b: i32, %n: i32) -> i32 {
    %r = llvm.intr.fshl(%a, %b, %n) : (i32, i32, i32) -> i32
    return %r : i32
  }
  func.func @shuffle(%a: vector<4xf32>, %b: vector<4xf32>) -> vector<4xf32> {
    %r = vector.shuffle %a, %b [1, 5, 3, 7] : vector<4xf32>, vector<4xf32>
    return %r : vector<4xf32>
  }
  func.func @halves(%v: vector<2xf32>) -> vector<4xbf16> {
    %r = vector.bitcast %v : vector<2xf32> to vector<4xbf16>
    return %r : vector<4xbf16>
  }
  func.func @f4(%c: vector<16xi4>) -> vector<16xf32> {
    %f = arith.bitcast %c : vector<16xi4> to vector<16xf4E2M1FN>
    %r = arith.extf %f : vector<16xf4E2M1FN> to vector<16xf32>
    return %r : vector<16xf32>
  }
  func.func @trunc(%v: vector<4xf32>) -> vector<4xbf16> {
    %r = arith.truncf %v : vector<4xf32> to vector<4xbf16>
    return %r : vector<4xbf16>
  }
  func.func @trunc16(%v: vector<2xf32>) -> vector<2xf16> {
    %r = arith.truncf %v : vector<2xf32> to vector<2xf16>
    return %r : vector<2xf16>
  }
  func.func @ext(%v: vector<2xbf16>) -> vector<2xf32> {
    %r = arith.extf %v : vector<2xbf16> to vector<2xf32>
    return %r : vector<2xf32>
  }
  func.func @fmath(%a: f32, %b: f32) -> (f32, f32) {
    %p = arith.mulf %a, %b : f32
    %s = arith.addf %a, %b : f32
    return %p, %s : f32, f32
  }
  func.func @index_ops(%a: index, %b: index) -> (index, index, index, index, index, i64, i1, i1) {
    %0 = arith.addi %a, %b : index
    %1 = arith.subi %a, %b : index
    %2 = arith.muli %a, %b : index
    %3 = arith.divui %a, %b : index
    %4 = arith.remui %a, %b : index
    %5 = arith.index_cast %a : index to i64
    %6 = arith.cmpi ult, %a, %b : index
    %7 = arith.cmpi slt, %a, %b : index
    return %0, %1, %2, %3, %4, %5, %6, %7 : index, index, index, index, index, i64, i1, i1
  }
  func.func @bits(%a: i32, %b: i32) -> (i32, i32, i32, i32, i64, i8, i32) {
    %0 = arith.andi %a, %b : i32
    %1 = arith.ori %a, %b : i32
    %c4 = arith.constant 4 : i32
    %2 = arith.shli %a, %c4 : i32
    %3 = arith.shrui %a, %c4 : i32
    %4 = arith.extui %a : i32 to i64
    %5 = arith.trunci %a : i32 to i8
    %c = arith.cmpi eq, %a, %b : i32
    %6 = arith.select %c, %a, %b : i32
    return %0, %1, %2, %3, %4, %5, %6 : i32, i32, i32, i32, i64, i8, i32
  }
  func.func @div(%a: i32, %b: i32) -> i32 {
    %0 = arith.divui %a, %b : i32
    return %0 : i32
  }
  func.func @table(%i: i32) -> (f32, bf16, vector<2xbf16>) {
    %t = arith.constant dense<[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]> : vector<16xf32>
    %ix = arith.index_cast %i : i32 to index
    %e = vector.extract %t[%ix] : f32 from vector<16xf32>
    %h = arith.constant 1.5 : bf16
    %d = arith.constant dense<[-2.0, 0.25]> : vector<2xbf16>
    return %e, %h, %d : f32, bf16, vector<2xbf16>
  }
  func.func @elements(%a: i32, %b: i32) -> vector<4xi4> {
    %x = arith.trunci %a : i32 to i4
    %y = arith.trunci %b : i32 to i4
    %v = vector.from_elements %x, %y, %x, %y : vector<4xi4>
    return %v : vector<4xi4>
  }
  func.func @loops(%n: index, %x: i32) -> (i32, i32) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %z = arith.constant 0 : i32
    %one = arith.constant 1 : i32
    %r:2 = scf.for %i = %c0 to %n step %c1 iter_args(%s = %z, %t = %one) -> (i32, i32) {
      %ii = arith.index_cast %i : index to i32
      %s2 = arith.addi %s, %ii : i32
      scf.yield %t, %s2 : i32, i32
    }
    %c = arith.cmpi ugt, %x, %z : i32
    %q = scf.if %c -> (i32) {
      %m = arith.muli %x, %x : i32
      scf.yield %m : i32
    } else {
      scf.yield %one : i32
    }
    return %r#0, %q : i32, i32
  }
  gpu.module @inner {
    func.func @twice(%x: i32) -> i32 {
      %r = arith.addi %x, %x : i32
      return %r : i32
    }
    func.func @caller(%x: i32) -> i32 {
      %r = func.call @twice(%x) : (i32) -> i32
      %s = func.call @twice(%r) : (i32) -> i32
      return %s : i32
    }
  }
}
"#;

#[test]
fn ext_packed_fp8_decodes_fnuz_bf8() {
    let m = parse(OPS);
    // Bytes 0x01 (smallest subnormal 2^-17), 0x3C (0.5), 0x04 (smallest normal 2^-15), 0x80 (the NaN).
    let r = call(&m, "ext_fp8", &[Scalar::I32(0x8004_3C01)]);
    assert_eq!(
        r[0],
        Scalar::Vec(ElemType::F32, f32_bits(&[2f32.powi(-17), 0.5]))
    );
    let hi = r[1].f32_values();
    assert_eq!(hi[0], 2f32.powi(-15));
    assert!(hi[1].is_nan());
    // 0x00 zero, 0x40 one, 0xC2 -1.5, 0x7F the largest finite value 1.75 * 2^15 (no infinities in FNUZ).
    let r = call(&m, "ext_fp8", &[Scalar::I32(0x7FC2_4000)]);
    assert_eq!(r[0], Scalar::Vec(ElemType::F32, f32_bits(&[0.0, 1.0])));
    assert_eq!(r[1], Scalar::Vec(ElemType::F32, f32_bits(&[-1.5, 57344.0])));
}

#[test]
fn bitcast_puts_the_low_byte_in_element_zero() {
    let m = parse(OPS);
    let r = one(&m, "bytes", &[Scalar::i32s(&[0x4433_2211])]);
    assert_eq!(
        r,
        Scalar::Vec(ElemType::F8E5M2FNUZ, vec![0x11, 0x22, 0x33, 0x44])
    );
    // f32 -> bf16 halves: element 0 is the low half of f32 0.
    let r = one(
        &m,
        "halves",
        &[Scalar::Vec(ElemType::F32, vec![0x3F80_ABCD, 0xC020_0000])],
    );
    assert_eq!(
        r,
        Scalar::Vec(ElemType::Bf16, vec![0xABCD, 0x3F80, 0x0000, 0xC020])
    );
}

#[test]
fn bitreverse_and_funnel_shift() {
    let m = parse(OPS);
    assert_eq!(
        one(&m, "bitrev", &[Scalar::I32(1)]),
        Scalar::I32(0x8000_0000)
    );
    assert_eq!(
        one(&m, "bitrev", &[Scalar::I32(0x1234_5678)]),
        Scalar::I32(0x1E6A_2C48)
    );
    let fshl = |a, b, n| {
        one(
            &m,
            "fshl",
            &[Scalar::I32(a), Scalar::I32(b), Scalar::I32(n)],
        )
    };
    // fshl(a, b, n) = (a << n) | (b >> (32 - n)), n taken mod 32.
    assert_eq!(fshl(0x1234_5678, 0x9ABC_DEF0, 4), Scalar::I32(0x2345_6789));
    assert_eq!(fshl(0x1234_5678, 0x1234_5678, 4), Scalar::I32(0x2345_6781));
    assert_eq!(fshl(0x1234_5678, 0x9ABC_DEF0, 0), Scalar::I32(0x1234_5678));
    assert_eq!(fshl(0x1234_5678, 0x9ABC_DEF0, 36), Scalar::I32(0x2345_6789));
}

#[test]
fn shuffle_picks_from_both_operands() {
    let m = parse(OPS);
    let r = one(
        &m,
        "shuffle",
        &[
            Scalar::f32s(&[1.0, 2.0, 3.0, 4.0]),
            Scalar::f32s(&[5.0, 6.0, 7.0, 8.0]),
        ],
    );
    assert_eq!(r, Scalar::f32s(&[2.0, 6.0, 4.0, 8.0]));
}

#[test]
fn extf_of_e2m1_codes() {
    let m = parse(OPS);
    let r = one(
        &m,
        "f4",
        &[Scalar::Vec(ElemType::Int(4), (0..16).collect())],
    );
    let want = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    assert_eq!(r, Scalar::Vec(ElemType::F32, f32_bits(&want)));
}

#[test]
fn truncf_rounds_to_nearest_even_and_extf_is_exact() {
    let m = parse(OPS);
    // 1 + 2^-8 ties to 1.0 (even); 1 + 3 * 2^-8 ties up to 1 + 2^-6; 1 + 2^-8 + 2^-20 rounds up; 2^-133 is the
    // smallest bf16 subnormal.
    let r = one(
        &m,
        "trunc",
        &[Scalar::f32s(&[
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-8) + 2f32.powi(-20),
            f32::from_bits(1 << 16),
        ])],
    );
    assert_eq!(
        r,
        Scalar::Vec(ElemType::Bf16, vec![0x3F80, 0x3F82, 0x3F81, 0x0001])
    );
    // f16: 65520 is the overflow midpoint (rounds to infinity), 2^-24 the smallest subnormal.
    let r = one(&m, "trunc16", &[Scalar::f32s(&[65520.0, 2f32.powi(-24)])]);
    assert_eq!(r, Scalar::Vec(ElemType::F16, vec![0x7C00, 0x0001]));
    let r = one(
        &m,
        "ext",
        &[Scalar::Vec(ElemType::Bf16, vec![0x0001, 0xC0A0])],
    );
    assert_eq!(r, Scalar::f32s(&[f32::from_bits(1 << 16), -5.0]));
}

#[test]
fn f32_arithmetic_keeps_subnormals() {
    let m = parse(OPS);
    let r = call(
        &m,
        "fmath",
        &[
            Scalar::F32(f32::from_bits(0x0D80_0000)),
            Scalar::F32(2f32.powi(-40)),
        ],
    );
    assert_eq!(r[0], Scalar::F32(f32::from_bits(1 << 9)));
    let r = call(
        &m,
        "fmath",
        &[Scalar::F32(1.0), Scalar::F32(2f32.powi(-24))],
    );
    assert_eq!(r[1], Scalar::F32(1.0), "1 + 2^-24 ties to even");
}

#[test]
fn index_is_32_bit() {
    let m = parse(OPS);
    let r = call(
        &m,
        "index_ops",
        &[Scalar::Index(0xFFFF_FFFF), Scalar::Index(2)],
    );
    assert_eq!(
        r,
        vec![
            Scalar::Index(1),
            Scalar::Index(0xFFFF_FFFD),
            Scalar::Index(0xFFFF_FFFE),
            Scalar::Index(0x7FFF_FFFF),
            Scalar::Index(1),
            Scalar::I64(u64::MAX),
            Scalar::I1(false),
            Scalar::I1(true),
        ]
    );
}

#[test]
fn integer_bit_ops() {
    let m = parse(OPS);
    let r = call(
        &m,
        "bits",
        &[Scalar::I32(0xF000_00FF), Scalar::I32(0x0F0F_0F0F)],
    );
    assert_eq!(
        r,
        vec![
            Scalar::I32(0x0000_000F),
            Scalar::I32(0xFF0F_0FFF),
            Scalar::I32(0x0000_0FF0),
            Scalar::I32(0x0F00_000F),
            Scalar::I64(0xF000_00FF),
            Scalar::I8(0xFF),
            Scalar::I32(0x0F0F_0F0F),
        ]
    );
    let err = interp::call(&m, "div", &[Scalar::I32(1), Scalar::I32(0)]).unwrap_err();
    assert!(
        matches!(err, InterpError::Runtime { ref reason, .. } if reason.contains("division by zero")),
        "{err}"
    );
}

#[test]
fn constants_and_dynamic_extract() {
    let m = parse(OPS);
    let r = call(&m, "table", &[Scalar::I32(13)]);
    assert_eq!(r[0], Scalar::F32(13.0));
    assert_eq!(r[1], Scalar::Bf16(0x3FC0));
    assert_eq!(r[2], Scalar::Vec(ElemType::Bf16, vec![0xC000, 0x3E80]));
    let err = interp::call(&m, "table", &[Scalar::I32(16)]).unwrap_err();
    assert!(matches!(err, InterpError::Runtime { .. }), "{err}");
    let r = one(&m, "elements", &[Scalar::I32(0x1F), Scalar::I32(0x3)]);
    assert_eq!(r, Scalar::Vec(ElemType::Int(4), vec![0xF, 0x3, 0xF, 0x3]));
}

#[test]
fn structured_control_flow_and_calls() {
    let m = parse(OPS);
    // Iteration i: (s, t) <- (t, s + i).
    let (mut s, mut t) = (0u32, 1u32);
    for i in 0..5 {
        (s, t) = (t, s + i);
    }
    let r = call(&m, "loops", &[Scalar::Index(5), Scalar::I32(7)]);
    assert_eq!(r, vec![Scalar::I32(s), Scalar::I32(49)]);
    let r = call(&m, "loops", &[Scalar::Index(0), Scalar::I32(0)]);
    assert_eq!(r, vec![Scalar::I32(0), Scalar::I32(1)]);
    assert_eq!(one(&m, "caller", &[Scalar::I32(5)]), Scalar::I32(20));
}

#[test]
fn call_errors_are_typed() {
    let m = parse(OPS);
    assert!(matches!(
        interp::call(&m, "nope", &[]),
        Err(InterpError::UnknownFunction(_))
    ));
    assert!(matches!(
        interp::call(&m, "bitrev", &[Scalar::F32(1.0)]),
        Err(InterpError::Argument { .. })
    ));
    let m = parse(
        "module { func.func @f(%a: f32) -> f32 { %r = math.sqrt %a : f32\n return %r : f32 } }",
    );
    let err = interp::call(&m, "f", &[Scalar::F32(4.0)]).unwrap_err();
    assert!(
        matches!(err, InterpError::Unsupported { ref op, .. } if op == "math.sqrt"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn buffer(args: &[KernelArg], i: usize) -> &[u8] {
    match &args[i] {
        KernelArg::Buffer(b) => b,
        other => panic!("argument {i} is {other:?}"),
    }
}

/// Per-lane arithmetic, an LDS exchange across the wave (thread t reads what thread 63 - t wrote) and a divergent
/// `scf.if`; `BARRIER` is replaced by `gpu.barrier` or nothing.
const EXCHANGE: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @exchange(%in: memref<128xi32>, %out: memref<128xi32>, %scale: i32)
        workgroup(%lds : memref<64xi32, #gpu.address_space<workgroup>>) kernel {
      %t = gpu.thread_id x
      %b = gpu.block_id x
      %c64 = arith.constant 64 : index
      %base = arith.muli %b, %c64 : index
      %g = arith.addi %base, %t : index
      %v = memref.load %in[%g] : memref<128xi32>
      %ti = arith.index_cast %t : index to i32
      %sc = arith.muli %v, %scale : i32
      %w = arith.addi %sc, %ti : i32
      memref.store %w, %lds[%t] : memref<64xi32, #gpu.address_space<workgroup>>
      BARRIER
      %c63 = arith.constant 63 : index
      %r = arith.subi %c63, %t : index
      %x = memref.load %lds[%r] : memref<64xi32, #gpu.address_space<workgroup>>
      %c2 = arith.constant 2 : index
      %odd = arith.remui %t, %c2 : index
      %c0 = arith.constant 0 : index
      %even = arith.cmpi eq, %odd, %c0 : index
      %y = scf.if %even -> (i32) {
        %k = arith.constant 1000 : i32
        %z = arith.addi %x, %k : i32
        scf.yield %z : i32
      } else {
        scf.yield %x : i32
      }
      memref.store %y, %out[%g] : memref<128xi32>
      gpu.return
    }
  }
}
"#;

#[test]
fn kernel_with_lds_exchange() {
    let m = parse(&EXCHANGE.replace("BARRIER", "gpu.barrier"));
    let input: Vec<i32> = (0..128).map(|i| i * 3 - 50).collect();
    let mut args = vec![
        KernelArg::Buffer(i32_bytes(&input)),
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::I32(-7),
    ];
    let stats = interp::launch(&m, "exchange", [2, 1, 1], [64, 1, 1], &mut args).expect("runs");
    let out = bytes_i32(buffer(&args, 1));
    for b in 0..2 {
        for t in 0..64 {
            let r = 63 - t;
            let want = input[b * 64 + r] * -7 + r as i32 + if t % 2 == 0 { 1000 } else { 0 };
            assert_eq!(out[b * 64 + t], want, "block {b} thread {t}");
        }
    }
    assert_eq!(stats.workgroups, 2);
    assert_eq!(stats.barriers, 2);
    assert_eq!(stats.lds_bytes_written, 2 * 64 * 4);
    assert_eq!(stats.lds_bytes_read, 2 * 64 * 4);
    assert_eq!(stats.ops["gpu.barrier"], 2, "one wave per workgroup");
    assert!(
        !stats.ops.contains_key("scf.yield"),
        "yields are not instructions"
    );
}

#[test]
fn amdgpu_lds_barrier_orders_lds_like_gpu_barrier() {
    let m = parse(&EXCHANGE.replace("BARRIER", "amdgpu.lds_barrier"));
    let input: Vec<i32> = (0..128).collect();
    let mut args = vec![
        KernelArg::Buffer(i32_bytes(&input)),
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::I32(2),
    ];
    let stats = interp::launch(&m, "exchange", [2, 1, 1], [64, 1, 1], &mut args)
        .expect("no race across the barrier");
    assert_eq!(stats.barriers, 2);
    let out = bytes_i32(buffer(&args, 1));
    assert_eq!(out[0], input[63] * 2 + 63 + 1000);
}

#[test]
fn lds_read_without_barrier_is_a_race() {
    let m = parse(&EXCHANGE.replace("BARRIER", ""));
    let mut args = vec![
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::I32(1),
    ];
    let err = interp::launch(&m, "exchange", [2, 1, 1], [64, 1, 1], &mut args).unwrap_err();
    match err {
        InterpError::Race {
            wg,
            thread,
            other,
            kind,
            ..
        } => {
            assert_eq!((wg, thread, other), ([0, 0, 0], 0, 63));
            assert_eq!(kind, interp::RaceKind::ReadAfterWrite);
        }
        e => panic!("expected a race, got {e}"),
    }
}

const STORES: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @shifted(%out: memref<SIZExi32>) kernel {
      %t = gpu.thread_id x
      %c1 = arith.constant 1 : index
      %i = arith.addi %t, %c1 : index
      %v = arith.index_cast %t : index to i32
      memref.store %v, %out[%i] : memref<SIZExi32>
      gpu.return
    }
    gpu.func @window(%in: memref<4096xi32>, %out: memref<4096xi32>, %valid: i32, %out_valid: i32) kernel {
      %t = gpu.thread_id x
      %vb = arith.extui %valid : i32 to i64
      %ob = arith.extui %out_valid : i32 to i64
      %src = amdgpu.fat_raw_buffer_cast %in validBytes(%vb) resetOffset
        : memref<4096xi32> to memref<4096xi32, #amdgpu.address_space<fat_raw_buffer>>
      %dst = amdgpu.fat_raw_buffer_cast %out validBytes(%ob) resetOffset
        : memref<4096xi32> to memref<4096xi32, #amdgpu.address_space<fat_raw_buffer>>
      %c4 = arith.constant 4 : index
      %i = arith.muli %t, %c4 : index
      %v = vector.load %src[%i] : memref<4096xi32, #amdgpu.address_space<fat_raw_buffer>>, vector<4xi32>
      vector.store %v, %dst[%i] : memref<4096xi32, #amdgpu.address_space<fat_raw_buffer>>, vector<4xi32>
      gpu.return
    }
  }
}
"#;

#[test]
fn plain_store_past_the_end_is_an_error() {
    // Past the memref's static size.
    let m = parse(&STORES.replace("SIZE", "64"));
    let mut args = vec![KernelArg::Buffer(vec![0; 256])];
    let err = interp::launch(&m, "shifted", [1, 1, 1], [64, 1, 1], &mut args).unwrap_err();
    match err {
        InterpError::OutOfBounds {
            ref op,
            thread,
            byte,
            size,
            ..
        } => {
            assert!(op.starts_with("memref.store"), "{err}");
            assert_eq!((thread, byte, size), (63, 256, 256), "{err}");
        }
        e => panic!("expected out of bounds, got {e}"),
    }
    // Inside the static size but past the host buffer.
    let m = parse(&STORES.replace("SIZE", "1024"));
    let mut args = vec![KernelArg::Buffer(vec![0; 256])];
    let err = interp::launch(&m, "shifted", [1, 1, 1], [64, 1, 1], &mut args).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::OutOfBounds {
                thread: 63,
                byte: 256,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn fat_buffer_bounds_are_checked_per_dword() {
    let m = parse(&STORES.replace("SIZE", "64"));
    let input: Vec<i32> = (1..=64).collect();
    // validBytes 98: dwords 0..23 are in range, dword 24 (bytes 96..100) is not, so it reads 0. Threads 16.. read
    // past the 256-byte host buffer too, but the range check suppresses those reads. The output view accepts
    // 40 bytes: stores of later dwords are dropped.
    let mut args = vec![
        KernelArg::Buffer(i32_bytes(&input)),
        KernelArg::Buffer(vec![0xAA; 256]),
        KernelArg::I32(98),
        KernelArg::I32(256),
    ];
    interp::launch(&m, "window", [1, 1, 1], [64, 1, 1], &mut args).expect("runs");
    let out = bytes_i32(buffer(&args, 1));
    let want: Vec<i32> = (0..64).map(|i| if i < 24 { i + 1 } else { 0 }).collect();
    assert_eq!(out, want);

    args[1] = KernelArg::Buffer(vec![0xAA; 256]);
    args[3] = KernelArg::I32(40);
    interp::launch(&m, "window", [1, 1, 1], [64, 1, 1], &mut args).expect("runs");
    let out = bytes_i32(buffer(&args, 1));
    let want: Vec<i32> = (0..64)
        .map(|i| if i < 10 { i + 1 } else { 0xAAAA_AAAAu32 as i32 })
        .collect();
    assert_eq!(out, want);

    // validBytes larger than the host buffer: an in-range read of foreign memory is an error.
    args[2] = KernelArg::I32(1024);
    let err = interp::launch(&m, "window", [1, 1, 1], [64, 1, 1], &mut args).unwrap_err();
    assert!(
        matches!(err, InterpError::OutOfBounds { thread: 16, byte: 256, ref op, .. } if op.starts_with("vector.load")),
        "{err}"
    );
}

/// One wave loads A (M x K, row-major bf16) and B (K x N) into MFMA operands by the documented lane layouts, C
/// (M x N f32) into the accumulator layout, runs one `amdgpu.mfma` and stores D by the accumulator layout.
/// `transpose_a` deliberately reads A's element (i, k) from row k, column i of the buffer instead.
fn mfma_kernel(m: u32, n: u32, k: u32, transpose_a: bool) -> String {
    let acc = m * n / 64;
    let mut s = format!(
        r#"module attributes {{gpu.container_module}} {{
  gpu.module @k {{
    gpu.func @mm(%a: memref<{mk}xbf16>, %b: memref<{kn}xbf16>, %c: memref<{mn}xf32>, %d: memref<{mn}xf32>) kernel {{
      %l = gpu.thread_id x
      %cm = arith.constant {m} : index
      %cn = arith.constant {n} : index
      %ck = arith.constant {k} : index
      %c4 = arith.constant 4 : index
      %li = arith.remui %l, %cm : index
      %lq = arith.divui %l, %cm : index
      %lj = arith.remui %l, %cn : index
      %lqn = arith.divui %l, %cn : index
      %ka = arith.muli %lq, %c4 : index
      %kb = arith.muli %lqn, %c4 : index
      %rowbase = arith.muli %lqn, %c4 : index
"#,
        mk = m * k,
        kn = k * n,
        mn = m * n,
    );
    for e in 0..4 {
        s += &format!(
            r#"      %e{e} = arith.constant {e} : index
      %kae{e} = arith.addi %ka, %e{e} : index
      %kbe{e} = arith.addi %kb, %e{e} : index
"#
        );
        if transpose_a {
            s += &format!("      %ar{e} = arith.muli %kae{e}, %cm : index\n      %ai{e} = arith.addi %ar{e}, %li : index\n");
        } else {
            s += &format!("      %ar{e} = arith.muli %li, %ck : index\n      %ai{e} = arith.addi %ar{e}, %kae{e} : index\n");
        }
        s += &format!(
            r#"      %av{e} = memref.load %a[%ai{e}] : memref<{mk}xbf16>
      %br{e} = arith.muli %kbe{e}, %cn : index
      %bi{e} = arith.addi %br{e}, %lj : index
      %bv{e} = memref.load %b[%bi{e}] : memref<{kn}xbf16>
"#,
            mk = m * k,
            kn = k * n
        );
    }
    s += "      %A = vector.from_elements %av0, %av1, %av2, %av3 : vector<4xbf16>\n";
    s += "      %B = vector.from_elements %bv0, %bv1, %bv2, %bv3 : vector<4xbf16>\n";
    let mut cs = vec![];
    for r in 0..acc {
        // Row of accumulator register r relative to 4 * (l / n): r for 16x16, 8 * (r / 4) + r % 4 for 32x32.
        let off = if m == 32 { 8 * (r / 4) + r % 4 } else { r };
        s += &format!(
            r#"      %ro{r} = arith.constant {off} : index
      %row{r} = arith.addi %rowbase, %ro{r} : index
      %rn{r} = arith.muli %row{r}, %cn : index
      %ci{r} = arith.addi %rn{r}, %lj : index
      %cv{r} = memref.load %c[%ci{r}] : memref<{mn}xf32>
"#,
            mn = m * n
        );
        cs.push(format!("%cv{r}"));
    }
    s += &format!(
        "      %C = vector.from_elements {} : vector<{acc}xf32>\n",
        cs.join(", ")
    );
    s += &format!(
        "      %D = amdgpu.mfma {m}x{n}x{k} %A * %B + %C blgp = none : vector<4xbf16>, vector<4xbf16>, vector<{acc}xf32>\n"
    );
    for r in 0..acc {
        s += &format!(
            "      %dv{r} = vector.extract %D[{r}] : f32 from vector<{acc}xf32>\n      memref.store %dv{r}, %d[%ci{r}] : memref<{mn}xf32>\n",
            mn = m * n
        );
    }
    s += "      gpu.return\n    }\n  }\n}\n";
    s
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs the MFMA kernel; returns (D, reference A * B + C). Values are small multiples of 1/4, so every product
/// and partial sum is exact in f32 and the comparison can be exact.
fn run_mfma(m: u32, n: u32, k: u32, transpose_a: bool) -> (Vec<f32>, Vec<f32>) {
    let (mu, nu, ku) = (m as usize, n as usize, k as usize);
    let a: Vec<f32> = (0..mu * ku)
        .map(|i| ((i * 7 + 3) % 17) as f32 * 0.25 - 2.0)
        .collect();
    let b: Vec<f32> = (0..ku * nu)
        .map(|i| ((i * 5 + 1) % 13) as f32 * 0.5 - 3.0)
        .collect();
    let c: Vec<f32> = (0..mu * nu).map(|i| (i % 11) as f32 - 5.0).collect();
    let mut want = c.clone();
    for i in 0..mu {
        for j in 0..nu {
            let mut acc = f64::from(c[i * nu + j]);
            for kk in 0..ku {
                acc += f64::from(a[i * ku + kk]) * f64::from(b[kk * nu + j]);
            }
            want[i * nu + j] = acc as f32;
        }
    }
    let module = parse(&mfma_kernel(m, n, k, transpose_a));
    let mut args = vec![
        KernelArg::Buffer(bf16_bytes(&a)),
        KernelArg::Buffer(bf16_bytes(&b)),
        KernelArg::Buffer(f32_bytes(&c)),
        KernelArg::Buffer(vec![0; mu * nu * 4]),
    ];
    let stats = interp::launch(&module, "mm", [1, 1, 1], [64, 1, 1], &mut args).expect("runs");
    assert_eq!(stats.mfma, 1);
    (bytes_f32(buffer(&args, 3)), want)
}

#[test]
fn mfma_16x16x16_layout_matches_a_matrix_product() {
    let (got, want) = run_mfma(16, 16, 16, false);
    assert_eq!(got, want);
    let (got, want) = run_mfma(16, 16, 16, true);
    assert_ne!(got, want, "a transposed A lane mapping must not pass");
}

#[test]
fn mfma_32x32x8_layout_matches_a_matrix_product() {
    let (got, want) = run_mfma(32, 32, 8, false);
    assert_eq!(got, want);
    let (got, want) = run_mfma(32, 32, 8, true);
    assert_ne!(got, want, "a transposed A lane mapping must not pass");
}

#[test]
fn mfma_needs_the_whole_wave() {
    // 32 threads: half a wave.
    let src = mfma_kernel(16, 16, 16, false);
    let module = parse(&src);
    let mut args = vec![
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::Buffer(vec![0; 512]),
        KernelArg::Buffer(vec![0; 1024]),
        KernelArg::Buffer(vec![0; 1024]),
    ];
    let err = interp::launch(&module, "mm", [1, 1, 1], [32, 1, 1], &mut args).unwrap_err();
    assert!(
        matches!(err, InterpError::Divergence { ref reason, .. } if reason.contains("32 of 64")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// A real nibble kernel.

mod real {
    use super::*;
    use nibble_compiler::arch::Arch;
    use nibble_compiler::plan::Plan;
    use nibble_compiler::spec::{
        DType, FormatSpec, KernelSpec, MiniFloat, MmaAtom, ScaleType, Schedule, Tiling,
    };

    pub fn plan(arch: Arch, atom: MmaAtom, n: u32, k: u32) -> Plan {
        plan_staged(arch, atom, n, k, 2)
    }

    pub fn plan_staged(arch: Arch, atom: MmaAtom, n: u32, k: u32, stages: u32) -> Plan {
        let spec = KernelSpec {
            name: "interp_gemm".into(),
            targets: vec![Arch::Gfx942, Arch::Gfx90a],
            x: DType::Bf16,
            y: DType::Bf16,
            n,
            k,
            format: FormatSpec {
                name: "mxfp4".into(),
                element: MiniFloat {
                    name: "e2m1".into(),
                    exp_bits: 2,
                    man_bits: 1,
                    bias: 1,
                },
                scale: ScaleType::E8m0,
                group: 32,
                tensor_scale: false,
            },
            bias: Some(DType::Bf16),
            schedule: Schedule::Manual(Tiling {
                tile_m: atom.m(),
                tile_n: 128,
                tile_k: 256,
                waves_m: 1,
                waves_n: 4,
                waves_k: 1,
                mma: atom,
                stages,
                split_k: None,
            }),
            staging: None,
            unroll: None,
            scales: None,
            source_hash: "0".into(),
        };
        nibble_compiler::plan::plan(&spec, arch).expect("plans")
    }

    /// Deterministic pseudo-random words.
    pub fn words(n: usize, seed: u64) -> Vec<u32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 16) as u32
            })
            .collect()
    }

    pub struct Run {
        pub y: Vec<u8>,
        pub stats: interp::LaunchStats,
        pub seconds: f64,
    }

    /// Launches the plan's kernel over M rows with the given weight words and scales; x and bias are fixed
    /// pseudo-random finite bf16 values.
    pub fn launch(module: &Module, p: &Plan, m: u32, w: &[u32], scales: &[f32]) -> Run {
        let (n, k) = (p.n as usize, p.k as usize);
        let x: Vec<f32> = words(m as usize * k, 1)
            .iter()
            .map(|r| (r % 33) as f32 / 8.0 - 2.0)
            .collect();
        let bias: Vec<f32> = words(n, 2)
            .iter()
            .map(|r| (r % 101) as f32 / 4.0 - 12.0)
            .collect();
        let mut args = vec![
            KernelArg::Buffer(bf16_bytes(&x)),
            KernelArg::Buffer(w.iter().flat_map(|v| v.to_le_bytes()).collect()),
            KernelArg::Buffer(f32_bytes(scales)),
            KernelArg::Buffer(bf16_bytes(&bias)),
            KernelArg::Buffer(vec![0xEE; m as usize * n * 2]),
        ];
        if p.split_k > 1 {
            // Split-K workspace (any contents) and zeroed arrival counters.
            let rows = (m.div_ceil(p.tiling.tile_m) * p.tiling.tile_m) as usize;
            let tiles = (p.n / p.tiling.tile_n * m.div_ceil(p.tiling.tile_m)) as usize;
            args.push(KernelArg::Buffer(vec![
                0xEE;
                p.split_k as usize * rows * n * 4
            ]));
            args.push(KernelArg::Buffer(vec![0; tiles * 4]));
        }
        args.push(KernelArg::I32(m as i32));
        let grid = [
            p.n / p.tiling.tile_n,
            m.div_ceil(p.tiling.tile_m),
            p.split_k,
        ];
        let t = std::time::Instant::now();
        let stats = interp::launch(module, &p.symbol, grid, [p.threads, 1, 1], &mut args)
            .unwrap_or_else(|e| panic!("{} launch: {e}", p.symbol));
        let seconds = t.elapsed().as_secs_f64();
        Run {
            y: buffer(&args, 4).to_vec(),
            stats,
            seconds,
        }
    }

    pub fn bias_rows(p: &Plan, m: u32) -> Vec<u8> {
        let bias: Vec<f32> = words(p.n as usize, 2)
            .iter()
            .map(|r| (r % 101) as f32 / 4.0 - 12.0)
            .collect();
        let row = bf16_bytes(&bias);
        (0..m).flat_map(|_| row.clone()).collect()
    }
}

#[test]
fn real_kernel_with_zero_weights_yields_the_bias() {
    use nibble_compiler::arch::Arch;
    use nibble_compiler::spec::MmaAtom;
    for (arch, atom) in [
        (Arch::Gfx942, MmaAtom::M16N16K16),
        (Arch::Gfx90a, MmaAtom::M16N16K16),
        (Arch::Gfx942, MmaAtom::M32N32K8),
    ] {
        let p = real::plan(arch, atom, 128, 512);
        let module = nibble_compiler::driver::gpu_module(&p).expect("builds");
        let (n, k) = (p.n as usize, p.k as usize);
        let scales = vec![1.0f32; n * k / 32];
        // M = 5: rows 5.. of the tile read zeros through the fat buffer and their stores are dropped.
        let run = real::launch(&module, &p, 5, &vec![0; n * k / 8], &scales);
        assert_eq!(run.y, real::bias_rows(&p, 5), "{arch:?} {atom:?}");
        // Per workgroup: the prologue's, one per K iteration of its split, and two in the split-K epilogue.
        let workgroups =
            u64::from(p.n / p.tiling.tile_n * 5u32.div_ceil(p.tiling.tile_m) * p.split_k);
        let per_wg = 1 + u64::from(p.iters_per_split) + if p.split_k > 1 { 2 } else { 0 };
        assert_eq!(run.stats.barriers, workgroups * per_wg);
        assert!(run.stats.ops.contains_key("amdgpu.mfma"));
    }
}

#[test]
fn dequant_pass_matches_the_reference_function_in_a_real_kernel() {
    // The kernel before the dequant pass calls @nibble_dequant (the reference semantics); after it, the packed bit
    // tricks. On the same random weights and power-of-two scales both must produce the same bits.
    use nibble_compiler::arch::Arch;
    use nibble_compiler::spec::MmaAtom;
    for arch in [Arch::Gfx942, Arch::Gfx90a] {
        let p = real::plan(arch, MmaAtom::M16N16K16, 128, 256);
        let reference = nibble_compiler::kernel::build(&p).expect("builds");
        let lowered = nibble_compiler::driver::gpu_module(&p).expect("builds");
        let (n, k) = (p.n as usize, p.k as usize);
        // Codes 8 (-0) are stored as +0 by the repacking (FNUZ byte 0x80 is NaN): clear such sign bits, in the
        // bytes of `word & mask` (bit 7 of each byte) and of `bitreverse(word) & mask` (bit 0 of each byte).
        let mask = p.dequant.mask;
        let w: Vec<u32> = real::words(n * k / 8, 3)
            .into_iter()
            .map(|mut w| {
                for b in 0..4 {
                    if (w & mask) >> (8 * b) & 0xFF == 0x80 {
                        w &= !(0x80 << (8 * b));
                    }
                    if (w.reverse_bits() & mask) >> (8 * b) & 0xFF == 0x80 {
                        w &= !(1 << (24 - 8 * b));
                    }
                }
                w
            })
            .collect();
        // Repacked scales carry 2^exp_offset; keep the true scales near 1.
        let scales: Vec<f32> = real::words(n * k / 32, 4)
            .iter()
            .map(|r| 2f32.powi(p.dequant.exp_offset + (r % 5) as i32 - 2))
            .collect();
        let a = real::launch(&reference, &p, 16, &w, &scales);
        let b = real::launch(&lowered, &p, 16, &w, &scales);
        let diff = a.y.iter().zip(&b.y).position(|(x, y)| x != y);
        assert_eq!(diff, None, "{arch:?}: first differing byte");
        assert!(a.stats.ops.contains_key("func.call"));
        assert!(!b.stats.ops.contains_key("func.call"));
        // Not all zero: the weights matter.
        assert!(b.y != real::bias_rows(&p, 16), "weights had no effect");
        let nan =
            b.y.chunks_exact(2)
                .any(|h| half::bf16::from_le_bytes([h[0], h[1]]).is_nan());
        assert!(!nan, "{arch:?}: NaN in the output");
    }
}

#[test]
fn real_kernel_runs_fast_enough() {
    use nibble_compiler::arch::Arch;
    use nibble_compiler::spec::MmaAtom;
    let p = real::plan(Arch::Gfx942, MmaAtom::M16N16K16, 128, 1024);
    let module = nibble_compiler::driver::gpu_module(&p).expect("builds");
    let (n, k) = (p.n as usize, p.k as usize);
    let run = real::launch(
        &module,
        &p,
        16,
        &real::words(n * k / 8, 5),
        &vec![1.0; n * k / 32],
    );
    eprintln!(
        "N=128 K=1024 M=16: {:.3} s, {} lane ops, {} MFMAs",
        run.seconds, run.stats.lane_ops, run.stats.mfma
    );
    let waves = u64::from(p.threads / 64);
    // Two bf16 MFMAs per weight word, or four xf32 ones (K = 8 each).
    let per_word = if p.dequant.xf32 { 4 } else { 2 };
    let per_wave_iter = u64::from(p.m_tiles * p.n_tiles * per_word * p.pairs_per_iter);
    assert_eq!(run.stats.mfma, waves * per_wave_iter * u64::from(p.k_iters));
    assert!(run.seconds < 5.0, "{} s", run.seconds);
}

#[test]
fn single_stage_real_kernel_has_no_lds_race() {
    // One LDS buffer: the kernel must separate the reads of a tile from the next tile's stores with barriers.
    use nibble_compiler::arch::Arch;
    use nibble_compiler::spec::MmaAtom;
    let p = real::plan_staged(Arch::Gfx942, MmaAtom::M16N16K16, 128, 512, 1);
    let module = nibble_compiler::driver::gpu_module(&p).expect("builds");
    let (n, k) = (p.n as usize, p.k as usize);
    let run = real::launch(&module, &p, 16, &vec![0; n * k / 8], &vec![1.0; n * k / 32]);
    assert_eq!(run.y, real::bias_rows(&p, 16));
    // Two barriers per K iteration of each workgroup's split, plus two in the split-K epilogue.
    let workgroups = u64::from(p.n / p.tiling.tile_n * p.split_k);
    let per_wg = 2 * u64::from(p.iters_per_split) + if p.split_k > 1 { 2 } else { 0 };
    assert_eq!(run.stats.barriers, workgroups * per_wg);
}

#[test]
fn reference_dequant_function_runs_on_one_lane() {
    use nibble_compiler::arch::Arch;
    use nibble_compiler::spec::MmaAtom;
    let p = real::plan(Arch::Gfx942, MmaAtom::M16N16K16, 128, 256);
    let module = nibble_compiler::kernel::build(&p).expect("builds");
    // Byte 0 of the word holds magnitude 1 at bits 1..3 (e2m1 code 1 = 0.5); bitreverse(word) has none. The
    // repacked scale carries 2^exp_offset, so this scale means 1.0.
    let s = 2f32.powi(p.dequant.exp_offset);
    let r = interp::call(
        &module,
        "nibble_dequant",
        &[Scalar::I32(0x2), Scalar::f32s(&[s, s])],
    )
    .expect("runs");
    // 0.5 as the MFMA operand: bf16, or f32 on the xf32 route (which this gfx942 decode tile takes).
    assert!(p.dequant.xf32);
    assert_eq!(
        r,
        vec![Scalar::Vec(
            ElemType::F32,
            vec![0x3F00_0000, 0, 0, 0, 0, 0, 0, 0]
        )]
    );
    let mut p16 = p.clone();
    p16.dequant.xf32 = false;
    let module = nibble_compiler::kernel::build(&p16).expect("builds");
    let r = interp::call(
        &module,
        "nibble_dequant",
        &[Scalar::I32(0x2), Scalar::f32s(&[s, s])],
    )
    .expect("runs");
    assert_eq!(
        r,
        vec![Scalar::Vec(
            ElemType::Bf16,
            vec![0x3F00, 0, 0, 0, 0, 0, 0, 0]
        )]
    );
}

#[test]
fn divergent_barrier_and_loop_bounds_are_errors() {
    let src = r#"
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @bar(%out: memref<64xi32>) kernel {
      %t = gpu.thread_id x
      %c32 = arith.constant 32 : index
      %lo = arith.cmpi ult, %t, %c32 : index
      scf.if %lo {
        gpu.barrier
      }
      gpu.return
    }
    gpu.func @loop(%out: memref<64xi32>) kernel {
      %t = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      scf.for %i = %c0 to %t step %c1 {
        %v = arith.index_cast %i : index to i32
        memref.store %v, %out[%t] : memref<64xi32>
      }
      gpu.return
    }
  }
}
"#;
    let m = parse(src);
    for (kernel, what) in [
        ("bar", "barrier reached by 32 of 64"),
        ("loop", "loop bounds differ"),
    ] {
        let mut args = vec![KernelArg::Buffer(vec![0; 256])];
        let err = interp::launch(&m, kernel, [1, 1, 1], [64, 1, 1], &mut args).unwrap_err();
        assert!(
            matches!(err, InterpError::Divergence { ref reason, .. } if reason.contains(what)),
            "{err}"
        );
    }
}

#[test]
fn lds_overwrite_before_a_barrier_is_a_race() {
    // Thread t reads lds[63 - t] and then overwrites lds[t] with no barrier in between: thread 0's store hits a
    // byte thread 63 read.
    let src = r#"
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @war(%out: memref<64xi32>) workgroup(%lds : memref<64xi32, #gpu.address_space<workgroup>>) kernel {
      %t = gpu.thread_id x
      %v = arith.index_cast %t : index to i32
      memref.store %v, %lds[%t] : memref<64xi32, #gpu.address_space<workgroup>>
      gpu.barrier
      %c63 = arith.constant 63 : index
      %r = arith.subi %c63, %t : index
      %x = memref.load %lds[%r] : memref<64xi32, #gpu.address_space<workgroup>>
      memref.store %x, %lds[%t] : memref<64xi32, #gpu.address_space<workgroup>>
      gpu.return
    }
  }
}
"#;
    let m = parse(src);
    let mut args = vec![KernelArg::Buffer(vec![0; 256])];
    let err = interp::launch(&m, "war", [1, 1, 1], [64, 1, 1], &mut args).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::Race {
                thread: 0,
                other: 63,
                kind: interp::RaceKind::WriteAfterRead,
                ..
            }
        ),
        "{err}"
    );
}

// ---- LDS bank conflicts (the model of interp::lds_conflict_cycles) ----

#[test]
fn lds_conflict_model_matches_hand_counts() {
    use nibble_compiler::interp::lds_conflict_cycles;
    // 64 lanes reading consecutive dwords: each group of 32 covers all banks once.
    let seq: Vec<_> = (0..64u32).map(|l| (l, u64::from(l) * 4, 4)).collect();
    assert_eq!(lds_conflict_cycles(&seq), 0);
    // Stride of 32 dwords: all 32 lanes of a group hit bank 0 (31 extra cycles per group, 2 groups).
    let strided: Vec<_> = (0..64u32).map(|l| (l, u64::from(l) * 128, 4)).collect();
    assert_eq!(lds_conflict_cycles(&strided), 62);
    // Everyone reading the same dword is a broadcast.
    let same: Vec<_> = (0..64u32).map(|l| (l, 64, 4)).collect();
    assert_eq!(lds_conflict_cycles(&same), 0);
    // 16-byte reads, 8 lanes per group: rows 528 bytes apart (the kernels' padded rows) are conflict-free...
    let padded: Vec<_> = (0..64u32)
        .map(|l| (l, u64::from(l % 16) * 528 + u64::from(l / 16) * 16, 16))
        .collect();
    assert_eq!(lds_conflict_cycles(&padded), 0);
    // ...while unpadded 512-byte rows put every lane of a group on the same four banks.
    let unpadded: Vec<_> = (0..64u32)
        .map(|l| (l, u64::from(l % 16) * 512 + u64::from(l / 16) * 16, 16))
        .collect();
    assert_eq!(lds_conflict_cycles(&unpadded), 8 * 7);
}

#[test]
fn no_example_kernel_has_lds_bank_conflicts() {
    use nibble_compiler::run::{random_inputs, run_interpreted, Bundle};
    let mut checked = 0;
    for (_, mut spec) in crate::pipeline::examples() {
        for arch in spec.targets.clone() {
            // Same tiling, smaller problem: one workgroup column, few K iterations.
            let t = nibble_compiler::plan::plan(&spec, arch)
                .expect("plans")
                .tiling;
            crate::numerics::reduce(&mut spec, t, 1);
            let out = nibble_compiler::driver::compile_kernel(&spec, arch, &Default::default())
                .expect("compiles");
            let b = Bundle {
                manifest_path: "mem".into(),
                manifest: out.manifest,
                kernel_ir: Some(out.kernel_ir),
            };
            let inp = random_inputs(&b.manifest, t.tile_m, 1).expect("inputs");
            let r = run_interpreted(&b, &inp, &Default::default()).expect("runs");
            assert!(
                !r.stats.lds_ops.is_empty(),
                "{}: LDS ops were counted",
                spec.name
            );
            for (op, s) in &r.stats.lds_ops {
                assert!(s.executions > 0);
                assert_eq!(
                    s.conflict_cycles,
                    0,
                    "{} on {}: {op} has bank conflicts",
                    spec.name,
                    arch.name()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} kernels checked");
}

#[test]
fn xf32_mfma_multiplies_exact_operands_and_rejects_inexact_ones() {
    // One wave: every lane passes A = (a, a), B = (b, b); D[i][j] = sum over K = 8 of a * b = 8ab.
    let src = r#"
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @x(%out: memref<256xf32>, %a: f32, %b: f32) kernel {
      %t = gpu.thread_id x
      %av = vector.broadcast %a : f32 to vector<2xf32>
      %bv = vector.broadcast %b : f32 to vector<2xf32>
      %z = arith.constant dense<0.0> : vector<4xf32>
      %d = amdgpu.mfma 16x16x8 %av * %bv + %z {reducePrecision} blgp = none : vector<2xf32>, vector<2xf32>, vector<4xf32>
      %c4 = arith.constant 4 : index
      %i = arith.muli %t, %c4 : index
      vector.store %d, %out[%i] : memref<256xf32>, vector<4xf32>
      gpu.return
    }
  }
}
"#;
    let m = parse(src);
    let run = |a: f32, b: f32| {
        let mut args = vec![
            KernelArg::Buffer(vec![0; 1024]),
            KernelArg::F32(a),
            KernelArg::F32(b),
        ];
        interp::launch(&m, "x", [1, 1, 1], [64, 1, 1], &mut args).map(|_| match &args[0] {
            KernelArg::Buffer(b) => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>(),
            _ => unreachable!("argument 0 is the buffer"),
        })
    };
    // bf16 activation 1.5 * 2^-3 and unscaled element 6 (bf8 route): exact in xf32.
    let y = run(0.1875, 6.0).expect("exact operands run");
    assert!(y.iter().all(|v| *v == 8.0 * 0.1875 * 6.0), "{:?}", &y[..4]);
    // 1 + 2^-12 needs 12 significand bits: xf32 keeps 10 after the point, so the unit would round it.
    let err = run(1.0 + 2f32.powi(-12), 1.0).unwrap_err();
    assert!(
        matches!(err, InterpError::Divergence { ref reason, .. } if reason.contains("not exactly representable in xf32")),
        "{err}"
    );
}
