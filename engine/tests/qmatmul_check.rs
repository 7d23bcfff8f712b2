//! Sanity check of candle's quantized matmul against the dequantized f32 product, per dtype and m.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

#[test]
fn qmatmul_matches_dequantized() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (64, 576), &dev).expect("w");
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ] {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let wd = q.dequantize(&dev).expect("deq");
        let mm = QMatMul::from_qtensor(q).expect("mm");
        for m in [1usize, 2, 5, 17] {
            let x = Tensor::randn(0f32, 1.0, (m, 576), &dev).expect("x");
            let a = mm.forward(&x).expect("q");
            let b = x.matmul(&wd.t().expect("t")).expect("f");
            let err = (a - &b)
                .expect("d")
                .abs()
                .expect("a")
                .max_all()
                .expect("m")
                .to_scalar::<f32>()
                .expect("s");
            let scale = b
                .abs()
                .expect("a")
                .max_all()
                .expect("m")
                .to_scalar::<f32>()
                .expect("s");
            println!("{dtype:?} m={m}: max err {err} (scale {scale})");
            assert!(err < 0.05 * scale, "{dtype:?} m={m}: {err} vs {scale}");
        }
    }
}
