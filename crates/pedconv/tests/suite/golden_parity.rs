//! Parity with the paper's reference implementation, on every case listed in the golden
//! directory's `pedconv_layer_cases.json`, for every compute path: evaluation output, training
//! output with the recorded noise, the information-maximisation loss, and the gradients of
//! `sum(y_train · r) + 0.001 · im_loss` with respect to the input and every parameter.

use crate::common;

use burn::module::{AutodiffModule, Param};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use common::{assert_close, golden_dir, precision, tensor, TestAutodiff};
use pedconv::{AttentionNoise, ComputePath, PedConv2d, PedConv2dConfig};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Cases {
    cases: Vec<Case>,
    noise_std: f64,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

/// The float64 tensors of one case, by key without the case prefix.
struct Golden<'a> {
    file: &'a SafeTensors<'a>,
    case: &'a str,
}

impl Golden<'_> {
    fn get<B: Backend, const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let name = format!("{}.{key}", self.case);
        let view = self
            .file
            .tensor(&name)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
        assert_eq!(
            view.dtype(),
            Dtype::F64,
            "golden tensor {name} is not float64"
        );
        let values = view
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let shape: [usize; D] = view.shape().try_into().unwrap_or_else(|_| {
            panic!(
                "golden tensor {name} has shape {:?}, not rank {D}",
                view.shape()
            )
        });
        tensor(values, shape)
    }

    /// A PyTorch `Linear` (`weight: [out, in]`) as burn's (`weight: [in, out]`).
    fn linear<B: Backend>(&self, prefix: &str) -> Linear<B> {
        let weight: Tensor<B, 2> = self.get(&format!("{prefix}.weight"));
        Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: Some(Param::from_tensor(self.get(&format!("{prefix}.bias")))),
        }
    }
}

fn layer<B: Backend>(case: &Case, golden: &Golden, noise_std: f64) -> PedConv2d<B> {
    let p = case.padding;
    let mut layer = PedConv2dConfig::new([case.cin, case.cout], [case.k, case.k])
        .with_stride([case.stride; 2])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_dilation([case.dilation; 2])
        .with_groups(case.groups)
        .with_noise_std(noise_std)
        .init::<B>(&Default::default());
    layer.weight = Param::from_tensor(golden.get("param.weight"));
    let attn = &mut layer.attn;
    attn.fc_share = golden.linear("param.attn.fc_share");
    attn.fc_inp = golden.linear("param.attn.fc_inp");
    attn.fc_oup = golden.linear("param.attn.fc_oup");
    attn.fc_k = golden.linear("param.attn.fc_k");
    let decoder = attn.decoder.as_mut().expect("the decoder is on by default");
    decoder.hidden = golden.linear("param.attn.decoder.0");
    decoder.output = golden.linear("param.attn.decoder.2");
    layer
}

fn check_linear_grads(
    label: &str,
    name: &str,
    linear: &Linear<TestAutodiff>,
    grads: &<TestAutodiff as burn::tensor::backend::AutodiffBackend>::Gradients,
    golden: &Golden,
    tolerance: f64,
) {
    let weight = linear.weight.grad(grads).expect("weight gradient");
    let expected: Tensor<_, 2> = golden.get(&format!("grad.attn.{name}.weight"));
    assert_close(
        &format!("{label}: grad {name}.weight"),
        &weight.transpose(),
        &expected,
        tolerance,
    );
    let bias = linear
        .bias
        .as_ref()
        .unwrap()
        .grad(grads)
        .expect("bias gradient");
    assert_close(
        &format!("{label}: grad {name}.bias"),
        &bias,
        &golden.get(&format!("grad.attn.{name}.bias")),
        tolerance,
    );
}

fn check_case(case: &Case, golden: &Golden, noise_std: f64, path: ComputePath) {
    let tolerance = precision().tolerance;
    let label = |what: &str| format!("{} ({path:?}): {what}", case.name);
    let layer = layer::<TestAutodiff>(case, golden, noise_std).with_compute_path(path);

    // Evaluation: the inference backend, no noise.
    let y_eval = layer.valid().forward(golden.get("x"));
    assert_close(&label("y_eval"), &y_eval, &golden.get("y_eval"), tolerance);

    // Training with the recorded noise, and the gradients of the reference's loss.
    let x: Tensor<TestAutodiff, 4> = golden.get::<TestAutodiff, 4>("x").require_grad();
    let noise = AttentionNoise {
        input: golden.get("eps_in"),
        output: golden.get("eps_out"),
        kernel: golden.get("eps_k"),
    };
    let out = layer.forward_train_with_noise(x.clone(), noise);
    let im_loss = out.info_max_loss.expect("info-max loss in training");
    assert_close(
        &label("y_train"),
        &out.output,
        &golden.get("y_train"),
        tolerance,
    );
    assert_close(
        &label("im_loss"),
        &im_loss,
        &golden.get("im_loss"),
        tolerance,
    );
    let r: Tensor<TestAutodiff, 4> = golden.get("r");
    let loss = (out.output * r).sum() + im_loss.mul_scalar(0.001);
    assert_close(&label("loss"), &loss, &golden.get("loss"), tolerance);

    let grads = loss.backward();
    assert_close(
        &label("grad x"),
        &x.grad(&grads).unwrap(),
        &golden.get("grad.x"),
        tolerance,
    );
    assert_close(
        &label("grad weight"),
        &layer.weight.grad(&grads).unwrap(),
        &golden.get("grad.weight"),
        tolerance,
    );
    let attn = &layer.attn;
    let decoder = attn.decoder.as_ref().unwrap();
    for (name, linear) in [
        ("fc_share", &attn.fc_share),
        ("fc_inp", &attn.fc_inp),
        ("fc_oup", &attn.fc_oup),
        ("fc_k", &attn.fc_k),
        ("decoder.0", &decoder.hidden),
        ("decoder.2", &decoder.output),
    ] {
        check_linear_grads(&label("attention"), name, linear, &grads, golden, tolerance);
    }
}

#[test]
fn every_golden_case_matches_the_reference_on_every_path() {
    let dir = golden_dir();
    let list = dir.join("pedconv_layer_cases.json");
    let cases: Cases = serde_json::from_slice(
        &std::fs::read(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let data_path = dir.join("pedconv_layer_cases.safetensors");
    let bytes =
        std::fs::read(&data_path).unwrap_or_else(|e| panic!("{}: {e}", data_path.display()));
    let file =
        SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", data_path.display()));
    assert!(!cases.cases.is_empty(), "{} lists no case", list.display());

    for case in &cases.cases {
        let golden = Golden {
            file: &file,
            case: &case.name,
        };
        for path in [
            ComputePath::PerSampleKernel,
            ComputePath::Factorized,
            ComputePath::Auto,
        ] {
            check_case(case, &golden, cases.noise_std, path);
        }
        println!("{}: parity on every path", case.name);
    }
}
